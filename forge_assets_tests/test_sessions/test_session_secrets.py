"""Secrets planted in every text field of a real opencode session never reach the session_logs records.

One session, written to a real opencode SQLite database by the builders, holds a GitHub token
(ghp_ + 34 characters, shorter than GitHub's 36), an OpenAI project key, an AWS key id and a
password assignment in a user message, assistant text, tool inputs (a bash command, an edit, a
write, a tool argument whose key names the secret) and tool outputs (a command's output, a file read).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import AssetKey
from session_builders import Spec, bash, edit, read, text, tool, write, write_db

from forge_assets.assets.sessions import session_logs
from forge_assets.config import SessionSource
from forge_assets.sessions import collect
from forge_assets_tests.conftest import PY_FILES, forge_instance, make_repo, materialize_assets, write_config

P = "/home/dev/project"
GHP = "ghp_" + "Vq8Lm2Nx7Rt4Kw9Zp3Hs6Dc1Fb5Gj0Ya2Ue"  # 34 after the prefix: the old 36+ rule let it through
SK = "sk-proj-" + "Qm4Zr8Tx2Wv6Nk1Lp9Hc3Js7Bd5Fg0Ye-Ra6Ku2Ot"
AWS = "AKIAQ4RT7WX2ZP9LMN3K"
PASSWORD = "Tr0ub4dor&3xyzzy-plugh"
SECRETS = {"github": GHP, "openai": SK, "aws": AWS, "password": PASSWORD}
SETTINGS = f'AWS_ACCESS_KEY_ID = "{AWS}"\npassword = "{PASSWORD}"\nGITHUB_TOKEN = "{GHP}"\n'


def planted_session() -> Spec:
    s = Spec(title="deploy settings")
    # user message
    s.user(f'The deploy fails. Our key is {SK} and settings.py has password = "{PASSWORD}"; fix app/deploy.py')
    # assistant text
    s.assistant(text(f"I will check the token {GHP} against the API first."))
    # tool inputs: a command, an edit, a file written, and an argument whose key names the secret
    s.assistant(bash(f"export OPENAI_API_KEY={SK} GITHUB_TOKEN={GHP} && pytest -q tests/test_deploy.py", "1 passed in 0.02s"))
    s.assistant(edit(f"{P}/app/deploy.py", "KEY_ID = None", f'KEY_ID = "{AWS}"  # access key\nTOKEN = "{GHP}"'))
    s.assistant(write(f"{P}/app/settings.py", SETTINGS))
    s.assistant(tool("db_connect", {"host": "db.internal", "user": "app", "password": PASSWORD, "options": {"apiKey": SK}}, "connected"))
    # tool outputs: a command's output and a file's contents
    s.assistant(bash("python -m app.deploy --dry-run", f"using AWS_ACCESS_KEY_ID={AWS}\nauth with {GHP}\nopenai key {SK}\nok"))
    s.assistant(read(f"{P}/app/settings.py", f"<file>\n00001| {SETTINGS}</file>"))
    s.assistant(text(f"Done: app/deploy.py now reads the key from the environment instead of {AWS}."))
    return s


def _assert_clean(body: str) -> None:
    for name, secret in SECRETS.items():
        for form in {secret, json.dumps(secret)[1:-1]}:
            assert form not in body, f"the {name} secret survived"
        assert secret[-12:] not in body, f"part of the {name} secret survived"


@pytest.mark.parametrize("generation", ["late", "v2"])
def test_no_planted_secret_survives_in_any_field(tmp_path: Path, generation: str) -> None:
    db = write_db(tmp_path / "opencode.db", [planted_session()], generation)
    records, stats, _ = collect([SessionSource(opencode=str(db))], tmp_path, "python")
    chats = [r for r in records if r["kind"] == "chat"]
    assert len(chats) == 1
    messages = chats[0]["messages"]
    roles = [m["role"] for m in messages]
    assert roles.count("tool") == 6 and "user" in roles and "assistant" in roles  # every planted field was kept
    assert any(r["kind"] == "code_change" and r["path"].endswith("deploy.py") for r in records)
    args = [c["function"]["arguments"] for m in messages for c in m.get("tool_calls", [])]
    db_args = next(a for a in args if "host" in a)
    assert db_args["host"] == "db.internal" and db_args["password"] == "[REDACTED_PASSWORD]"  # judged with its key
    assert db_args["options"]["apiKey"] == "[REDACTED_OPENAI_KEY]"
    _assert_clean(json.dumps(records, ensure_ascii=False))
    red = stats["redactions"]
    assert red.get("github_token", 0) >= 5 and red.get("openai_key", 0) >= 4 and red.get("aws_access_key", 0) >= 4
    assert red.get("password", 0) >= 3


def test_session_logs_asset_writes_no_planted_secret(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PY_FILES)
    (tmp_path / "oc").mkdir()
    db = write_db(tmp_path / "oc" / "opencode.db", [planted_session()])
    cfg = write_config(tmp_path, [repo], sessions=[{"opencode": str(db)}])
    with forge_instance() as instance:
        assert materialize_assets(cfg, [session_logs], instance=instance).success
        meta = instance.get_latest_materialization_event(AssetKey("session_logs")).asset_materialization.metadata
    folder = Path(meta["dagster/uri"].value)
    body = (folder / "records.jsonl").read_text(encoding="utf-8")
    assert meta["records"].value >= 2 and "[REDACTED_GITHUB_TOKEN]" in body
    for f in (tmp_path / "artifacts").rglob("*"):  # the records, the manifest, anything else written
        if f.is_file():
            _assert_clean(f.read_bytes().decode("utf-8", "replace"))
