"""Credential shapes beyond the vendor basics: command lines, Authorization headers, URLs, cloud tokens.

A corpus of one realistic example per shape and family (token bodies drawn from a seeded generator in
each vendor's alphabet and length, set in shell, Python, YAML, .env, Dockerfile and Markdown text):
``scrub_text`` removes every secret; ordinary code that looks similar stays byte-identical; a 20,000+
character minified line is still scrubbed; and a real repository holding the corpus (one secret in a
folder name) yields dataset files that hold none of it.
"""

from __future__ import annotations

import base64
import json
import random
import string
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mining_repos import Repo, snapshot

from forge_assets.mining.dataset import build_dataset, dataset_card, write_dataset
from forge_assets.scrub import REDACTED, placeholder, scrub_path, scrub_text
from forge_assets_tests.test_mining.conftest import mining_config

HEX = "0123456789abcdef"
B62 = string.ascii_letters + string.digits
URLSAFE = B62 + "-_"
_RNG = random.Random(20250611)


def draw(alphabet: str, n: int) -> str:
    """n characters of an alphabet from the module's seeded generator (same tokens every run)."""
    return "".join(_RNG.choice(alphabet) for _ in range(n))


def b64(n_bytes: int) -> str:
    return base64.b64encode(bytes(_RNG.randrange(256) for _ in range(n_bytes))).decode()


def password(n: int = 14, extra: str = "") -> str:
    """A typed password: letters and digits (a digit guaranteed), plus some punctuation."""
    return draw(string.ascii_letters, 3) + draw(B62 + extra, n - 4) + draw(string.digits, 1)


_BASIC = base64.b64encode(f"deploy:{password(16)}".encode()).decode()
_BASIC_CODE = base64.b64encode(f"svc-reports:{password(18)}".encode()).decode()
_AT_PASSWORD = password(8) + "@" + password(7)  # a URL password holding "@"
_RESERVED_PASSWORD = password(6) + "!*" + password(6) + ":" + password(4)
_SAS_SIG = quote(b64(32), safe="")  # URL-encoded base64 (%2B, %2F, %3D)
_GLC_CLAIMS = {"o": str(_RNG.randrange(10**6)), "n": f"stack-{_RNG.randrange(10**6)}-deploy", "k": draw(B62, 24), "m": {"r": "prod-eu-west-2"}}
_GLC = "glc_" + base64.b64encode(json.dumps(_GLC_CLAIMS, separators=(",", ":")).encode()).decode()
_PEM = base64.b64encode(("-----BEGIN EC PRIVATE KEY-----\n" + b64(96) + "\n-----END EC PRIVATE KEY-----\n").encode()).decode()

# (id, kind of placeholder expected, context, secret): the context's "{}" is the secret.
SHAPES: list[tuple[str, str, str, str]] = [
    # Authorization headers
    ("bearer-curl", "bearer_token", 'curl -sS -H "Authorization: Bearer {}" https://api.example.com/v2/items\n', draw(URLSAFE, 40)),
    ("bearer-python", "bearer_token", 'HEADERS = {{"Authorization": "Bearer {}", "Accept": "application/json"}}\n', draw(B62, 32) + "." + draw(URLSAFE, 20)),
    ("bearer-markdown", "bearer_token", "```http\nGET /v1/me HTTP/1.1\nHost: api.example.com\nAuthorization: Bearer {}\n```\n", draw(B62, 48)),
    ("token-scheme", "bearer_token", "curl -H 'Authorization: token {}' https://git.example.com/api/v1/repos\n", draw(HEX, 40)),
    ("basic-markdown", "basic_auth", "Send the header:\n\n    Authorization: Basic {}\n", _BASIC),
    ("basic-python", "basic_auth", 'resp = requests.get(url, headers={{"Authorization": "Basic {}"}})\n', _BASIC_CODE),
    ("api-key-header", "http_header_secret", 'curl -H "X-Api-Key: {}" https://api.example.com/v1/usage\n', draw(B62, 32)),
    # Passwords on command lines
    ("mysql-glued", "cli_password", "mysql -h db.internal -u app -p{} app_db < schema.sql\n", password(14)),
    ("mysql-glued-quoted", "cli_password", "mysqldump -uroot -p'{}' --all-databases > /backup/all.sql\n", password(12, "#%^")),
    ("mysql-password-eq", "cli_password", "mysql --user=app --password={} -e 'SHOW DATABASES'\n", password(14)),
    ("docker-login", "cli_password", "before_script:\n  - docker login -u ci-bot -p {} registry.example.com\n", password(20)),
    ("podman-login", "cli_password", "RUN podman login -u robot -p {} quay.example.com\n", draw(B62, 32)),
    ("sshpass-p", "cli_password", "sshpass -p '{}' ssh -o StrictHostKeyChecking=no deploy@10.0.0.7 uptime\n", password(12)),
    ("curl-u", "cli_password", "curl -fsS -u admin:{} https://jenkins.example.com/api/json\n", password(15)),
    ("curl-user-continued", "cli_password", "curl -fsS \\\n  --user ci:{} \\\n  https://nexus.example.com/service/rest/v1/status\n", password(16)),
    # *PASS= / *PASSWD= environment style
    ("sshpass-env-inline", "password", "SSHPASS={} sshpass -e ssh deploy@bastion.example.com\n", password(13)),
    ("sshpass-export", "password", "export SSHPASS={}\n", password(13)),
    ("smtp-pass-dotenv", "password", "SMTP_HOST=smtp.example.com\nSMTP_PASS={}\n", password(16)),
    ("ldap-passwd-dockerfile", "password", "FROM python:3.11-slim\nENV LDAP_BIND_PASSWD={}\n", password(18)),
    ("pgpassword-inline", "password", "PGPASSWORD={} psql -h db.internal -U app -c 'select 1'\n", password(15)),
    # URLs
    ("redis-at-in-password", "url_credentials", 'REDIS_URL = "redis://:{}@cache.internal:6379/0"\n', _AT_PASSWORD),
    ("amqp-reserved-chars", "url_credentials", "broker_url: amqp://worker:{}@mq.internal:5672/prod\n", _RESERVED_PASSWORD),
    ("sentry-dsn", "sentry_dsn", 'sentry_sdk.init(dsn="https://{}@o482913.ingest.sentry.io/5561234", traces_sample_rate=0.1)\n', draw(HEX, 32)),
    # Cloud and vendor tokens
    ("gcp-ya29", "gcp_oauth_token", 'creds = Credentials(token="ya29.{}")\n', draw(URLSAFE, 160)),
    ("azure-sas-sig", "azure_sas_signature",
     "backup_url: https://acct01.blob.core.windows.net/backups/db.bak?sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01T00:00:00Z&sig={}\n", _SAS_SIG),
    ("azure-account-key", "azure_key",
     "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=acct01;AccountKey={};EndpointSuffix=core.windows.net\n", b64(64)),
    ("azure-servicebus-key", "azure_key",
     'conn = "Endpoint=sb://ns1.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={}"\n', b64(32)),
    ("shopify-shpat", "shopify_token", 'SHOPIFY_ACCESS_TOKEN = "shpat_{}"\n', draw(HEX, 32)),
    ("shopify-shpss", "shopify_token", "SHOPIFY_SHARED_SECRET=shpss_{}\n", draw(HEX, 32)),
    ("shopify-shpca", "shopify_token", "  shopify_custom_app: shpca_{}\n", draw(HEX, 32)),
    ("shopify-shppa", "shopify_token", "export SHOPIFY_PRIVATE_APP=shppa_{}\n", draw(HEX, 32)),
    ("digitalocean-pat", "digitalocean_token", "doctl auth init --access-token dop_v1_{}\n", draw(HEX, 64)),
    ("digitalocean-oauth", "digitalocean_token", "  token: doo_v1_{}\n", draw(HEX, 64)),
    ("digitalocean-refresh", "digitalocean_token", 'DO_REFRESH = "dor_v1_{}"\n', draw(HEX, 64)),
    ("grafana-glsa", "grafana_token", "GRAFANA_SA_TOKEN=glsa_{}\n", draw(B62, 32) + "_" + draw(HEX, 8)),
    ("grafana-glc", "grafana_token", "grafana_cloud:\n  api_token: {}\n", _GLC),
    ("vault-hvs", "vault_token", "export VAULT_TOKEN=hvs.{}\n", draw(URLSAFE, 91)),
    ("vault-hvb", "vault_token", 'client.token = "hvb.{}"\n', draw(URLSAFE, 140)),
    ("vault-legacy", "vault_token", "vault login s.{}\n", draw(B62, 24)),
    ("databricks", "databricks_token", "DATABRICKS_TOKEN: dapi{}\n", draw(HEX, 32)),
    ("databricks-suffix", "databricks_token", 'w = WorkspaceClient(host=HOST, token="dapi{}-2")\n', draw(HEX, 32)),
    ("stripe-sk-live", "stripe_key", 'stripe.api_key = "sk_live_{}"\n', draw(B62, 24)),
    ("stripe-rk-live", "stripe_key", "STRIPE_RESTRICTED=rk_live_{}\n", draw(B62, 99)),
    ("stripe-sk-test", "stripe_key", "  stripe_secret: sk_test_{}\n", draw(B62, 24)),
    ("stripe-whsec", "stripe_key", "STRIPE_WEBHOOK_SECRET=whsec_{}\n", draw(B62, 32)),
    # A base64 value padded with "=" (a Kubernetes Secret's data): the value goes, the next key stays
    ("k8s-secret-data", "password", "apiVersion: v1\nkind: Secret\ndata:\n  password: {}\n  username: YWRtaW4=\n",
     base64.b64encode(password(13).encode()).decode()),
    # YAML !!binary
    ("yaml-binary-secret-key", "yaml_binary_secret", "tls:\n  private_key: !!binary |\n    {}\n  port: 8443\n", b64(48)),
    ("yaml-binary-pem", "yaml_binary_secret", "fixtures:\n  blob: !!binary {}\n", _PEM),
]
SHAPE_IDS = [s[0] for s in SHAPES]


def _text(context: str, secret: str) -> str:
    return context.replace("{}", secret).replace("{{", "{").replace("}}", "}")


@pytest.mark.parametrize("name,kind,context,secret", SHAPES, ids=SHAPE_IDS)
def test_each_shape_is_redacted(name, kind, context, secret):
    text = _text(context, secret)
    assert secret in text
    out, counts = scrub_text(text)
    assert secret not in out, out
    for part in secret.split("@"):  # a password holding "@" goes whole, not just its tail
        assert part not in out, out
    assert placeholder(kind) in out, (out, counts)
    assert counts[kind] >= 1
    again, more = scrub_text(out)
    assert again == out and not more  # idempotent: placeholders are not secrets


FALSE_POSITIVES = [
    "docker run -d -p 8080:80 nginx:1.25\n",
    "python -m http.server -p 8080\n",
    "ssh -p 22 deploy@bastion.example.com\n",
    "scp -P 2222 build.tar.gz deploy@host:/srv/\n",
    "psql -h db.internal -p 5432 -U app app_db\n",
    "mysql -u root -p\n",
    "mysql -h db.internal -P 3306 -u app -p app_db < schema.sql\n",
    "mysql --password app_db\n",
    "gcc $(mysql_config --cflags) -pthread -o client client.c\n",
    'curl -u "$USER:$PASS" https://api.example.com/v1/me\n',
    'curl -fsS -u "${API_USER}:${API_TOKEN}" https://api.example.com/\n',
    "curl -u deploy https://api.example.com/  # prompts for the password\n",
    'echo "$REGISTRY_PASSWORD" | docker login -u ci-bot --password-stdin registry.example.com\n',
    'docker login -u ci-bot -p "$CI_REGISTRY_PASSWORD" $CI_REGISTRY\n',
    'export SSHPASS="$(cat ~/.ssh/deploy.pw)"\n',
    "SSHPASS=$DEPLOY_PW sshpass -e ssh deploy@host\n",
    'parser.add_argument("--password", help="the database password")\n',
    "  --password PASSWORD  the database password (prompted when missing)\n",
    'password = os.environ["DB_PASSWORD"]\n',
    "conn = connect(PASSWORD=db_password, HOST=host)\n",
    "PASSWORD=get_password()\n",
    'headers = {"Authorization": f"Bearer {token}"}\n',
    'headers = {"Authorization": "Bearer " + self.access_token}\n',
    "Authorization: Bearer {token}\n",
    'curl -H "Authorization: Bearer ${TOKEN}" https://api.example.com\n',
    "Authorization: Bearer <token>\n",
    "Authorization: Bearer YOUR_ACCESS_TOKEN_HERE\n",
    "Basic authentication and the Bearer authentication scheme are both supported.\n",
    "auth = HTTPBasicAuth(user, password)  # Basic Configuration\n",
    'REDIS_URL = "redis://localhost:6379/0"\n',
    'url = "https://example.com:8443/users/@alice/posts"\n',
    'dsn = "https://<key>@o0.ingest.sentry.io/<project>"\n',
    'DATABASE_URL = "postgres://{user}:{password}@{host}:5432/{db}"\n',
    "def verify(payload, sig=None, msg_sig=b''):\n    hmac_sig=compute_sig(payload)\n",
    "url = f'{base}?sv={version}&sig={signature}'\n",
    "commit 3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a\n",
    'request_id = "123e4567-e89b-12d3-a456-426614174000"\n',
    "vault kv get -field=password secret/db  # s.Configuration stays\n",
    "shpat_ tokens are Shopify Admin API tokens; dop_v1_ marks DigitalOcean's.\n",
    "dapiClient = new DapiClient(options)\n",
    "BYPASS_CACHE=1 make test\n",
    "data:\n  username: YWRtaW4=\n  tls.crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n",
    "icon: !!binary R0lGODlhDAAMAIQAAP//9/X17unp5WZmZgAAAOfn515eXvPz7Y6OjuDg4J+fn5OTk6enp56enmleECcgggoBADs=\n",
]


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_ordinary_text_that_looks_similar_stays_byte_identical(text):
    out, counts = scrub_text(text)
    assert out == text, counts
    assert not counts


def test_shapes_are_caught_on_a_minified_line_longer_than_detect_secrets_reads():
    picked = [s for s in SHAPES if s[0] in ("bearer-curl", "gcp-ya29", "sentry-dsn", "shopify-shpat", "digitalocean-pat",
                                            "grafana-glsa", "vault-hvs", "databricks", "azure-sas-sig", "redis-at-in-password", "stripe-whsec")]
    filler = "var a=function(b,c){return b+c},d=[1,2,3].map(function(e){return e*2});"
    parts = [filler * 40]
    for name, _, _, secret in picked:
        value = {"redis-at-in-password": f"redis://:{secret}@cache.internal:6379/0",
                 "sentry-dsn": f"https://{secret}@o1.ingest.sentry.io/2",
                 "azure-sas-sig": f"https://a.blob.core.windows.net/c/b?sv=2022-11-02&sig={secret}",
                 "bearer-curl": f"Bearer {secret}"}.get(name, _text(next(c for n, _, c, _ in SHAPES if n == name), secret).split()[-1].strip("\"')"))
        parts.append(f'cfg["{name}"]="{value}";' + filler * 30)
    line = "".join(parts)
    assert len(line) > 20_000 and "\n" not in line
    assert all(s[3] in line for s in picked)
    out, _ = scrub_text(line)
    for name, _kind, _, secret in picked:
        assert secret not in out, name
    assert out.count(REDACTED) >= len(picked)


_PATH_TOKENS = {"gh": draw(B62, 36), "do": draw(HEX, 64), "pw": password(20), "hex": draw(HEX, 40)}


@pytest.mark.parametrize("path,secret,kept", [
    (f"deploy/ghp_{_PATH_TOKENS['gh']}/run.sh", _PATH_TOKENS["gh"], ("deploy/", "/run.sh")),
    (f"secrets/ghp_{_PATH_TOKENS['gh']}.txt", _PATH_TOKENS["gh"], ("secrets/", ".txt")),
    (f"keys/dop_v1_{_PATH_TOKENS['do']}.json", _PATH_TOKENS["do"], ("keys/", ".json")),
    (f"https://ci:{_PATH_TOKENS['pw']}@git.example.com/org/repo.git", _PATH_TOKENS["pw"], ("https://ci:", "@git.example.com/org/repo.git")),
    (f"https://{_PATH_TOKENS['hex']}@github.com/org/repo.git", _PATH_TOKENS["hex"], ("https://", "@github.com/org/repo.git")),
])
def test_scrub_path_redacts_tokens_in_paths_and_repository_urls(path, secret, kept):
    out = scrub_path(path)
    assert secret not in out and REDACTED in out
    assert out.startswith(kept[0]) and out.endswith(kept[1])


@pytest.mark.parametrize("path", [
    "src/app/main.py", "forge_assets/mining/dataset.py", "https://github.com/org/repo.git",
    "https://deploy-bot@github.com/org/repo.git", "git@github.com:org/repo.git", "alpha",
    "cache/3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c/obj.bin", "tests/fixtures/123e4567-e89b-12d3-a456-426614174000.json",
    "src/auth/token_store.py", "docs/secrets/rotating-passwords.md",
])
def test_scrub_path_leaves_ordinary_paths(path):
    assert scrub_path(path) == path


# --- end to end: the corpus in a real repository leaves nothing in any artifact

def _corpus_files(path_token: str) -> dict[str, str]:
    """The whole corpus as a repository's files: shell and Python are mined; YAML, .env, Dockerfile and
    Markdown texts ride along as Python fixtures (and as files of their own)."""
    sh = "#!/usr/bin/env bash\nset -euo pipefail\n# Deploy helpers.\n\n"
    py = '"""Deployment settings and fixtures."""\n\nimport os\n\n'
    fixtures = []
    for i, (name, _, context, secret) in enumerate(SHAPES):
        text = _text(context, secret)
        if any(w in name for w in ("curl", "mysql", "login", "sshpass", "pgpassword", "export", "digitalocean-pat", "legacy", "shppa")):
            sh += f"step_{i}() {{\n" + "".join(f"  {line}\n" for line in text.splitlines()) + "}\n\n"
        elif text.count("\n") == 1 and " = " in text and not text.startswith(" "):
            py += text + "\n"
        else:
            fixtures.append(f"FIXTURE_{i} = '''\\\n{text}'''\n")
    py += "\n".join(fixtures)
    py += '\n\ndef settings(env: dict) -> dict:\n    """The settings, overridden by the environment."""\n    return {**globals(), **env}\n'
    return {
        f"deploy/ghp_{path_token}/run.sh": sh,
        "app/settings.py": py,
        "config/app.yaml": "".join(_text(c, s) for n, _, c, s in SHAPES if "yaml" in n or "azure-sas" in n),
        ".env.example": "".join(_text(c, s) for n, _, c, s in SHAPES if "dotenv" in n or "account-key" in n),
        "README.md": "# svc\n\n" + "".join(_text(c, s) for n, _, c, s in SHAPES if "markdown" in n),
    }


def test_the_corpus_leaves_nothing_in_any_artifact(tmp_path):
    started = time.monotonic()
    path_token = draw(B62, 36)
    secrets = [s[3] for s in SHAPES] + [f"ghp_{path_token}", path_token, _AT_PASSWORD.split("@")[0], _AT_PASSWORD.split("@")[1]]
    files = _corpus_files(path_token)
    r = Repo(tmp_path / "svc")
    r.commit({"app/__init__.py": '"""The service."""\n', "README.md": "# svc\n"}, "Initial commit")
    r.commit(files, "Add deploy script and settings")
    run_sh = f"deploy/ghp_{path_token}/run.sh"
    r.commit({run_sh: files[run_sh] + 'main() {\n  step_0\n  echo "deployed"\n}\n'}, "Call the first step from main")
    py = files["app/settings.py"]
    r.commit({"app/settings.py": py.replace("Deployment settings", "Deployment settings (staging)")}, "Name the staging settings")

    snap = snapshot([r.path], tmp_path, max_file_bytes=200_000)
    assert {"python", "shell"} <= set(snap.languages())
    out = tmp_path / "datasets"
    for language in ("python", "shell"):
        ds = build_dataset(language, snap.files[language], [], mining_config())
        write_dataset(ds, out / language)
        (out / language / "card.md").write_text(dataset_card(ds), encoding="utf-8")
        assert ds.stats["secrets_redacted"], language

    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 8
    blob = b"\n".join(p.read_bytes() for p in written)
    assert b"deploy/[REDACTED_GITHUB_TOKEN]/run.sh" in blob  # the path is shown, its token is not
    for secret in secrets:
        assert secret.encode() not in blob, secret[:12]
    assert time.monotonic() - started < 20


def test_the_snapshot_asset_stores_a_path_that_holds_a_token_scrubbed(tmp_path):
    """repo_snapshot's snapshot.json names files by path: a credential in a path is stored redacted, the file kept."""
    import yaml
    from forge_assets_tests.conftest import forge_instance, materialize_assets

    path_token = draw(B62, 36)
    r = Repo(tmp_path / "svc")
    r.commit({f"deploy/ghp_{path_token}/run.py": '"""Run the deploy."""\n\nprint("deploying")\n', "app.py": "X = 1\n"}, "Initial")
    cfg = tmp_path / "forge.yaml"
    cfg.write_text(yaml.safe_dump({"artifact_root": str(tmp_path / "artifacts"), "repos": [{"path": str(r.path)}]}))
    with forge_instance() as instance:
        result = materialize_assets(cfg, ["repo_snapshot"], instance=instance)
        logs = "\n".join(repr(rec) for rec in instance.all_logs(result.run_id))
    assert result.success and path_token not in logs
    blob = b"\n".join(p.read_bytes() for p in (tmp_path / "artifacts").rglob("*") if p.is_file())
    assert path_token.encode() not in blob
    assert b"deploy/[REDACTED_GITHUB_TOKEN]/run.py" in blob and b"app.py" in blob
