"""Private by default: what Forge writes is 0700/0600 whatever the umask, and a repository URL's credentials are never
shown (logs, Dagster events and metadata, manifests, error messages) nor kept in a clone's .git/config."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import logging
import os
import plistlib
import stat
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from forge_assets.artifacts import ArtifactStore
from forge_assets.config import DeployConfig, RepoSource
from forge_assets.mining.snapshot import RepoError, clone_dir, take_snapshot
from forge_assets.private import ensure_private_dir, git_credential_env, git_remote, redact_text, redact_url
from forge_assets_tests.conftest import PY_FILES, commit_files, forge_instance, git, make_repo, materialize_assets

TOKEN = "s3cr3t-T0ken"
USER = "forge-user"


@pytest.fixture
def umask_022():
    """Run the test under umask 022 (a typical login umask), restoring the process's umask afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    """{relative path: permission bits} of root and everything below it (symlinks left out: their bits mean nothing)."""
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if not stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(root))] = stat.S_IMODE(st.st_mode)
    return out


def assert_private(root: Path, exact_files: bool = True) -> None:
    """Every folder under root is 0700 and every file 0600 (exact_files=False: git's read-only objects, 0400, and
    executables, 0700, allowed; still nothing for group or others)."""
    bad = {}
    for rel, mode in _modes(root).items():
        p = root / rel
        if p.is_dir():
            ok = mode == 0o700
        else:
            ok = mode == 0o600 if exact_files else not mode & 0o077
        if not ok:
            bad[rel] = oct(mode)
    assert not bad, f"not private under {root}: {bad}"


def _no_token_in_files(root: Path) -> None:
    hits = [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and TOKEN.encode() in p.read_bytes()]
    assert not hits, f"the token is written in {hits}"


# ---------------------------------------------------------------------------------------------------------------
# redaction


@pytest.mark.parametrize("url, shown", [
    (f"https://{USER}:{TOKEN}@127.0.0.1:1/x.git", f"https://{USER}:***@127.0.0.1:1/x.git"),
    ("https://oauth2:glpat-Ab12Cd34Ef56Gh78Ij90@gitlab.example.com/g/p.git", "https://oauth2:***@gitlab.example.com/g/p.git"),
    ("https://ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://github_pat_11ABCDEFG0123456789_abcdefghijklmnop@github.com/o/r", "https://***@github.com/o/r"),
    ("https://x-access-token:ghs_Zz9Yy8Xx7Ww6@github.com/o/r.git", "https://x-access-token:***@github.com/o/r.git"),
    ("https://a1b2c3d4e5f6a7b8c9d0e1f2@bitbucket.org/o/r.git", "https://***@bitbucket.org/o/r.git"),  # a bare long token
    ("http://user:p%40ss%2Fw0rd@host:8080/r.git", "http://user:***@host:8080/r.git"),  # percent-encoded password
    ("https://user:pa@ss@host/r.git", "https://user:***@host/r.git"),  # an unencoded @ in the password
    ("HTTPS://User:Secret1@Host/Path@x.git", "HTTPS://User:***@Host/Path@x.git"),  # an @ in the path is no userinfo
    ("https://:tok3n-only@host/r.git", "https://***@host/r.git"),
    ("https://host/r.git?private_token=abcdef123&ref=main", "https://host/r.git?private_token=***&ref=main"),
    ("ssh://me:pw1234@host:2222/r.git", "ssh://me:***@host:2222/r.git"),
    ("me:pw1234@host:r.git", "me:***@host:r.git"),  # scp-like with a password
    # nothing to hide: unchanged
    ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ("https://alice@host/r.git", "https://alice@host/r.git"),
    ("https://github.com/o/r.git", "https://github.com/o/r.git"),
    ("file:///srv/git/a@b/r.git", "file:///srv/git/a@b/r.git"),
    ("/home/dev/src/a@b:c", "/home/dev/src/a@b:c"),
    ("../relative/repo", "../relative/repo"),
])
def test_redact_url(url: str, shown: str):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent
    assert redact_text(f"fatal: unable to access '{url}/': Could not resolve host") == f"fatal: unable to access '{shown}/': Could not resolve host"


def test_redact_text_scrubs_every_url_and_the_given_secrets():
    text = (f"Cmd('git') failed due to: exit code(128)\n  cmdline: git clone -v -- https://{USER}:{TOKEN}@h/x.git /tmp/c\n"
            f"  stderr: 'fatal: Authentication failed for \"https://{USER}:{TOKEN}@h/x.git\"' and also {TOKEN} alone")
    out = redact_text(text, [TOKEN])
    assert TOKEN not in out and f"https://{USER}:***@h/x.git" in out and "also *** alone" in out


def test_git_remote_keeps_the_user_and_drops_the_secret():
    assert git_remote(f"https://{USER}:{TOKEN}@h:8443/x.git")[0] == f"https://{USER}@h:8443/x.git"
    assert git_remote("https://ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789@github.com/o/r")[0] == "https://github.com/o/r"
    assert git_remote("ssh://me:pw@host/r.git") == ("ssh://me@host/r.git", None)  # ssh uses keys, never a URL's password
    for plain in ("git@github.com:o/r.git", "https://github.com/o/r.git", "file:///x/r.git", "/x/r"):
        assert git_remote(plain) == (plain, None)
    _, creds = git_remote(f"https://{USER}:{TOKEN}@h/x.git")
    assert TOKEN not in repr(creds)


def test_the_credential_helper_answers_only_its_own_host(tmp_path: Path):
    _, creds = git_remote(f"https://{USER}:p%24ss%20{TOKEN}@git.example:8443/x.git")
    env = {**os.environ, **git_credential_env(creds), "HOME": str(tmp_path)}  # no user git config

    def fill(host: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "credential", "fill"], input=f"protocol=https\nhost={host}\n\n", env=env,
                              capture_output=True, text=True, timeout=30)

    mine = fill("git.example:8443")
    assert mine.returncode == 0 and f"username={USER}\npassword=p$ss {TOKEN}\n" in mine.stdout
    other = fill("elsewhere.example")  # a redirect to another host gets nothing (and no prompt: it fails)
    assert other.returncode != 0 and TOKEN not in other.stdout + other.stderr


# ---------------------------------------------------------------------------------------------------------------
# a git server over HTTP with basic auth (git's "dumb" protocol: static files), for real credentialed clones


class _Server:
    def __init__(self, tmp_path: Path):
        self.src = make_repo(tmp_path / "upstream", PY_FILES)
        self.www = tmp_path / "www"
        self.www.mkdir()
        self.bare = self.www / "proj.git"
        git(tmp_path, "clone", "-q", "--bare", str(self.src), str(self.bare))
        git(self.bare, "update-server-info")
        self.auth: list[str | None] = []
        want = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
        seen = self.auth

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="forge-test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(self.www)))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://{USER}:{TOKEN}@127.0.0.1:{self.httpd.server_address[1]}/proj.git"

    def push(self, files: dict[str, str]) -> str:
        sha = commit_files(self.src, files, "more")
        git(self.src, "push", "-q", str(self.bare), "main")
        git(self.bare, "update-server-info")
        return sha


@pytest.fixture
def server(tmp_path: Path):
    s = _Server(tmp_path)
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


def test_a_credentialed_url_is_cloned_and_fetched_privately_with_no_token_on_disk_or_in_logs(server, tmp_path: Path, umask_022, caplog):
    caplog.set_level(logging.DEBUG)  # GitPython logs its command lines at DEBUG
    clones = tmp_path / "artifacts" / "clones"
    snap = take_snapshot([RepoSource(url=server.url)], tmp_path, clones)
    assert {f.path for f in snap.files["python"]} == set(PY_FILES)
    assert any(a and a.startswith("Basic ") for a in server.auth)  # the server did ask, and git answered

    clone = clone_dir(RepoSource(url=server.url), clones)
    assert git(clone, "config", "remote.origin.url").strip() == f"http://{USER}@127.0.0.1:{server.httpd.server_address[1]}/proj.git"

    # an incremental update fetches with the same credentials, still without writing them
    new = server.push({"app/extra.py": "def extra():\n    return 3\n"})
    again = take_snapshot([RepoSource(url=server.url)], tmp_path, clones)
    assert again.repos[0].commit == new and "app/extra.py" in {f.path for f in again.files["python"]}

    _no_token_in_files(tmp_path / "artifacts")
    assert_private(clones, exact_files=False)  # git keeps its objects read-only (0400), hooks executable (0700)
    assert TOKEN not in caplog.text and TOKEN not in json.dumps(snap.manifest("python")) + repr(snap.repos)


def test_a_clone_an_earlier_forge_made_with_the_token_is_scrubbed_and_locked(server, tmp_path: Path, umask_022):
    import hashlib

    clones = tmp_path / "artifacts" / "clones"
    clones.mkdir(parents=True, mode=0o755)
    legacy = clones / (hashlib.sha1(server.url.encode()).hexdigest()[:10] + "-proj")  # the old name: a hash of the full URL
    env = {**os.environ, **git_credential_env(git_remote(server.url)[1])}
    subprocess.run(["git", "clone", "-q", server.url, str(legacy)], check=True, capture_output=True, env=env)
    assert TOKEN in (legacy / ".git" / "config").read_text()  # what earlier versions left behind
    os.chmod(tmp_path / "artifacts", 0o755)

    new = server.push({"app/more.py": "def more():\n    return 4\n"})
    snap = take_snapshot([RepoSource(url=server.url)], tmp_path, clones)
    assert snap.repos[0].commit == new and not legacy.exists()
    _no_token_in_files(clones)
    assert stat.S_IMODE(clones.stat().st_mode) == 0o700  # locked: nothing the old Forge left below is reachable


def test_an_unreachable_credentialed_url_fails_without_showing_the_token(tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"https://{USER}:{TOKEN}@127.0.0.1:1/x.git"
    with pytest.raises(RepoError) as err:
        take_snapshot([RepoSource(url=url)], tmp_path, tmp_path / "clones")
    message = str(err.value)
    assert TOKEN not in message and f"https://{USER}:***@127.0.0.1:1/x.git" in message and "Fix:" in message
    assert err.value.__cause__ is None and err.value.__context__ is None  # no GitCommandError (its command line) chained
    assert TOKEN not in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------------
# the repo_snapshot asset through Dagster


def _materialize_snapshot(cfg: Path):
    with forge_instance() as instance:
        result = materialize_assets(cfg, ["repo_snapshot"], instance=instance, raise_on_error=False)
        logs = "\n".join(repr(rec) for rec in instance.all_logs(result.run_id))
        metadata = {}
        for mat in result.asset_materializations_for_node("repo_snapshot"):
            metadata.update({k: v.value for k, v in mat.metadata.items()})
    return result, logs, metadata


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "forge.yaml"
    path.write_text(yaml.safe_dump({"artifact_root": str(tmp_path / "artifacts"), "repos": [{"url": url}]}))
    return path


def test_the_snapshot_asset_on_a_credentialed_url_writes_privately_and_shows_no_token(server, tmp_path: Path, umask_022, caplog):
    caplog.set_level(logging.DEBUG)
    result, logs, metadata = _materialize_snapshot(_config(tmp_path, server.url))
    assert result.success
    assert metadata["files"] == len(PY_FILES)
    assert TOKEN not in logs and TOKEN not in json.dumps(metadata, default=str) and TOKEN not in caplog.text
    root = tmp_path / "artifacts"
    _no_token_in_files(root)  # snapshot.json, manifest.json, history.jsonl, the clone's .git/config
    assert_private(root / "clones", exact_files=False)
    assert_private(root / "repo_snapshot")  # everything Forge itself writes: exactly 0700 / 0600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_the_snapshot_asset_on_an_unreachable_credentialed_url_fails_without_the_token(tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    result, logs, _ = _materialize_snapshot(_config(tmp_path, f"https://{USER}:{TOKEN}@127.0.0.1:1/x.git"))
    assert not result.success
    assert "cannot clone or fetch" in logs and f"{USER}:***@127.0.0.1:1" in logs
    assert TOKEN not in logs and TOKEN not in caplog.text
    if (tmp_path / "artifacts").exists():
        _no_token_in_files(tmp_path / "artifacts")


# ---------------------------------------------------------------------------------------------------------------
# a local repository and the artifact store


def test_a_local_snapshot_a_file_url_clone_and_artifacts_are_private_under_umask_022(py_repo: Path, tmp_path: Path, umask_022):
    root = tmp_path / "artifacts"
    root.mkdir(mode=0o755)
    (root / "old.txt").write_text("written by an earlier Forge")  # 0644 under umask 022
    os.chmod(root / "old.txt", 0o644)

    local = take_snapshot([RepoSource(path=str(py_repo))], tmp_path, root / "clones")
    assert {f.path for f in local.files["python"]} == set(PY_FILES)
    assert not (root / "clones").exists()  # a local path is read in place: nothing written
    cloned = take_snapshot([RepoSource(url=py_repo.as_uri())], tmp_path, root / "clones")
    assert cloned.fingerprint("python") == local.fingerprint("python")

    store = ArtifactStore(root)
    with store.write("repo_snapshot", "python", {"commits": {"repo": local.repos[0].commit}}) as out:
        (out.path / "snapshot.json").write_text(json.dumps(local.manifest("python")))
        (out.path / "sub").mkdir()
        (out.path / "sub" / "data.bin").write_bytes(b"\0" * 10)
    store.log_event("repo_snapshot", "python", "deploy", out.artifact.version, note="x")
    with store.workdir("scratch") as work:
        (work / "tmp.txt").write_text("x")
        assert stat.S_IMODE(work.stat().st_mode) == 0o700 and stat.S_IMODE((work / "tmp.txt").stat().st_mode) == 0o600

    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # the earlier root is locked: its 0644 file is out of reach
    (root / "old.txt").unlink()
    assert_private(root / "clones", exact_files=False)
    assert_private(root / "repo_snapshot")
    assert_private(root / ".work")


def test_history_an_earlier_forge_wrote_0644_becomes_0600(tmp_path: Path):
    store = ArtifactStore(tmp_path / "a")
    folder = store.folder("gguf", "python")
    folder.mkdir(parents=True)
    (folder / "history.jsonl").write_text("")
    os.chmod(folder / "history.jsonl", 0o644)
    store.log_event("gguf", "python", "deploy", "v1", url=f"https://{USER}:{TOKEN}@h/x.git")
    assert stat.S_IMODE((folder / "history.jsonl").stat().st_mode) == 0o600
    assert TOKEN not in (folder / "history.jsonl").read_text() and store.history("gguf", "python")[0]["url"] == f"https://{USER}:***@h/x.git"


def test_ensure_private_dir_never_locks_the_home_folder_or_another_users(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    monkeypatch.setenv("HOME", str(home))
    ensure_private_dir(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    ensure_private_dir(home / ".cache" / "forge" / "models")
    assert stat.S_IMODE((home / ".cache").stat().st_mode) == 0o700  # made by Forge, so made private
    os.chmod(home / ".cache", 0o755)  # the user's own, later: only the root Forge asked for is chmodded
    os.chmod(home / ".cache" / "forge" / "models", 0o755)
    ensure_private_dir(home / ".cache" / "forge" / "models")
    assert stat.S_IMODE((home / ".cache").stat().st_mode) == 0o755
    assert stat.S_IMODE((home / ".cache" / "forge" / "models").stat().st_mode) == 0o700


# ---------------------------------------------------------------------------------------------------------------
# deployment state


def test_deploy_state_files_are_0600_in_0700_folders_under_umask_022(tmp_path: Path, umask_022):
    from forge_assets.deploy import clients, llama_server, ports, service, supervisor, system_service
    from forge_assets.deploy.clients import Endpoint, ServedModel

    root = tmp_path / "artifacts"
    dep = root / "deployment"
    endpoint = dep / "_endpoint"
    port = ports.port_for(root, "python", 18100)  # deployment/ports.json and its lock
    llama_server._write_state(endpoint, {"tag": "forge-python:abc", "port": port})  # server.json
    llama_server._write_route(endpoint / "route.json", {"host": "127.0.0.1", "port": port, "tag": "forge-python:abc", "pid": 1})
    supervisor.atomic_write(endpoint / supervisor.REQUESTS / "1.json", "{}")
    with llama_server._deploy_lock(endpoint):
        pass
    served = Endpoint("llama-server", f"http://127.0.0.1:{port}/v1", [ServedModel("forge-python:abc", "python", context=4096, max_output=512)])
    paths = clients.write_all(served, dep / "python" / "clients")  # no API key: still the owner's alone
    assert set(paths) == {"opencode", "continue", "tabby"}
    service.server_options(SimpleNamespace(root=root), DeployConfig(host="0.0.0.0"))  # writes the API key
    out = system_service.install(endpoint, platform="linux", home=tmp_path / "home", activate=False, log=lambda _: None)
    assert "UMask=0077" in Path(out["path"]).read_text().splitlines()
    assert plistlib.loads(system_service.render_plist(endpoint))["Umask"] == 0o077 == 63
    assert_private(root)


def test_a_spawned_process_and_its_log_are_private_under_umask_022(tmp_path: Path, umask_022):
    import sys

    from forge_assets.deploy import procs

    log = tmp_path / "state" / "server.log"
    out = tmp_path / "state" / "child-wrote.txt"
    proc, _ = procs.spawn([sys.executable, "-c", f"open({str(out)!r}, 'w').write('x')"], log, "test child")
    assert proc.wait(30) == 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(out.stat().st_mode) == 0o600
