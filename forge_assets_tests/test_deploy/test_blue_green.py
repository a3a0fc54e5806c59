"""Blue-green deploys behind the Forge router, health over HTTP, and stopping only what Forge started.

Real llama.cpp servers on 127.0.0.1 serving a real (tiny) GGUF; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from forge_assets import cli
from forge_assets.deploy import llama_server, procs
from forge_assets.deploy.ports import port_for, read_ports
from forge_assets_tests.conftest import assert_no_forge_processes, forge_processes, free_port, write_config


@pytest.fixture
def state_dir(tmp_path: Path):
    """A language's deployment folder; afterwards every router and server the test started must be gone."""
    folder = tmp_path / "artifacts" / "deployment" / "python"
    yield folder
    llama_server.stop(folder)
    assert_no_forge_processes()


@pytest.fixture
def foreign():
    """Unrelated live processes (`sleep 60`) that no Forge command may signal; killed at the end."""
    started: list[subprocess.Popen] = []

    def spawn() -> subprocess.Popen:
        started.append(subprocess.Popen(["sleep", "60"]))
        return started[-1]

    yield spawn
    for p in started:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def v2_gguf(q8_gguf: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "model-Q8_0.gguf"
    shutil.copyfile(q8_gguf, out)
    return out


def _get(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _chat(endpoint: str, tag: str) -> dict:
    req = urllib.request.Request(f"{endpoint}/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": tag, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


class Poller(threading.Thread):
    """Requests the stable endpoint back to back (a new connection each time) and records every outcome."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        self.endpoint, self.halt = endpoint, threading.Event()
        self.served: list[str] = []  # model id answering each request, in order
        self.failures: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            try:
                if n % 4 == 0 and self.served:  # a real completion now and then
                    # the stable alias: a client pinned to a version tag is told that tag is gone once the new one serves
                    assert _chat(self.endpoint, self.served[-1].split(":")[0] + ":latest")["choices"]
                else:
                    self.served.append(_get(f"{self.endpoint}/models")["data"][0]["id"])
            except (OSError, urllib.error.URLError, ValueError, KeyError, AssertionError) as exc:
                self.failures.append(f"request {n}: {exc}")
            time.sleep(0.02)

    def __enter__(self) -> "Poller":
        self.start()
        deadline = time.time() + 30
        while not self.served and not self.failures and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.join(90)


@pytest.mark.slow
def test_redeploy_keeps_answering_on_the_stable_endpoint(q8_gguf: Path, v2_gguf: Path, state_dir: Path):
    port = free_port()
    first = llama_server.deploy(q8_gguf, "forge-python:one", "127.0.0.1", port, state_dir)
    assert first["endpoint"] == f"http://127.0.0.1:{port}/v1" and first["smoke"]["reply"] is not None
    assert first["upstream"]["port"] != port and procs.alive(first["server"]) and procs.alive(first["router"])

    with Poller(first["endpoint"]) as poller:
        second = llama_server.deploy(v2_gguf, "forge-python:two", "127.0.0.1", port, state_dir, drain_timeout=10)
        time.sleep(0.5)
    assert poller.failures == []
    assert "forge-python:one" in poller.served and poller.served[-1] == "forge-python:two"
    switched = poller.served.index("forge-python:two")
    assert set(poller.served[switched:]) == {"forge-python:two"}  # once switched, every new connection gets the new model

    assert second["endpoint"] == first["endpoint"] and second["tag"] == "forge-python:two"
    assert second["router"] == first["router"]  # same router process, same port
    assert not procs.alive(first["server"]) and procs.alive(second["server"])  # the old server was retired
    assert second["retired"] == [f"stopped Forge model server for forge-python:one (pid {first['pid']})"]
    assert llama_server.read_state(state_dir)["tag"] == "forge-python:two"
    assert llama_server.health(state_dir)["health"] == "up" and llama_server.serving(state_dir, "forge-python:two")
    assert len(forge_processes()) == 2  # one router, one server


@pytest.mark.slow
def test_a_gguf_that_fails_to_load_leaves_the_old_model_serving(q8_gguf: Path, tmp_path: Path, state_dir: Path):
    port = free_port()
    good = llama_server.deploy(q8_gguf, "forge-python:good", "127.0.0.1", port, state_dir)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(q8_gguf.read_bytes()[: q8_gguf.stat().st_size // 2])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(256))

    with Poller(good["endpoint"]) as poller:
        for broken in (truncated, garbage):
            with pytest.raises(llama_server.DeployError) as err:
                llama_server.deploy(broken, "forge-python:bad", "127.0.0.1", port, state_dir)
            msg = str(err.value)
            assert f"the model server could not serve forge-python:bad from {broken.name}" in msg and "server.log" in msg
            assert f"The previous deployment forge-python:good keeps serving on {good['endpoint']}." in msg
    assert poller.failures == [] and set(poller.served) == {"forge-python:good"} and len(poller.served) > 3

    state = llama_server.read_state(state_dir)
    assert state["tag"] == "forge-python:good" and state["server"] == good["server"] and procs.alive(state["server"])
    assert _chat(good["endpoint"], "forge-python:good")["choices"]
    assert len(forge_processes()) == 2  # the failed servers are gone


def _status(monkeypatch, tmp_path: Path, capsys) -> dict:
    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [])))
    assert cli.main(["status", "--language", "python"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_status_says_down_when_the_server_or_router_is_killed(q8_gguf: Path, tmp_path: Path, state_dir: Path, monkeypatch, capsys):
    port = free_port()
    state = llama_server.deploy(q8_gguf, "forge-python:one", "127.0.0.1", port, state_dir)
    assert _status(monkeypatch, tmp_path, capsys)["health"] == "up"

    os.kill(state["pid"], signal.SIGKILL)
    psutil.Process(state["pid"]).wait(10)
    health = _status(monkeypatch, tmp_path, capsys)["health"]
    assert health.startswith(f"down: HTTP 502 on 127.0.0.1:{port}")
    assert f"the model server for forge-python:one (pid {state['pid']}) is not running" in health

    os.kill(state["router"]["pid"], signal.SIGKILL)
    psutil.Process(state["router"]["pid"]).wait(10)
    health = _status(monkeypatch, tmp_path, capsys)["health"]
    assert health.startswith(f"down: connection refused on 127.0.0.1:{port}")
    assert f"the Forge router (pid {state['router']['pid']}) is not running" in health
    assert not llama_server.serving(state_dir, "forge-python:one")

    # A redeploy brings it back on the same endpoint.
    again = llama_server.deploy(q8_gguf, "forge-python:one", "127.0.0.1", port, state_dir)
    assert again["endpoint"] == state["endpoint"] and _status(monkeypatch, tmp_path, capsys)["health"] == "up"


def test_stop_never_signals_a_process_forge_did_not_start(tmp_path: Path, state_dir: Path, foreign, monkeypatch, capsys):
    stale, other_cmd, legacy = foreign(), foreign(), foreign()
    dead = subprocess.Popen(["true"])
    dead.wait()
    ct = psutil.Process(stale.pid).create_time()
    route = str(state_dir / llama_server.ROUTE)
    # the pid was reused: same command-line marker would match, but the process started at another time
    router = {"pid": stale.pid, "create_time": ct - 100, "marker": ["sleep"], "what": "Forge router on 127.0.0.1:1", "host": "127.0.0.1", "port": 1}
    # right start time, but not the command Forge ran
    server = {"pid": other_cmd.pid, "create_time": psutil.Process(other_cmd.pid).create_time(),
              "marker": ["llama_cpp.server", route], "what": "llama.cpp server for forge-python:x"}
    retiring = [{"pid": dead.pid, "create_time": ct, "marker": ["llama_cpp.server"], "what": "llama.cpp server for forge-python:w"}]
    state_dir.mkdir(parents=True)
    (state_dir / llama_server.STATE).write_text(json.dumps({
        "tag": "forge-python:x", "endpoint": "http://127.0.0.1:1/v1", "host": "127.0.0.1", "port": 1, "pid": other_cmd.pid,
        "router": router, "server": server, "retiring": retiring}))

    monkeypatch.setenv("FORGE_CONFIG", str(write_config(tmp_path, [])))
    assert cli.main(["stop"]) == 0
    out = capsys.readouterr().out
    assert f"Forge router on 127.0.0.1:1 (pid {stale.pid}) now belongs to another program (`sleep 60`" in out
    assert f"llama.cpp server for forge-python:x (pid {other_cmd.pid}) now belongs to another program (`sleep 60`" in out
    assert f"llama.cpp server for forge-python:w (pid {dead.pid}) is not running" in out and "record cleared" in out
    assert stale.poll() is None and other_cmd.poll() is None  # neither was signalled
    assert llama_server.read_state(state_dir) is None

    # A record written before Forge kept start times: a pid reused after the server was started is left alone too.
    (state_dir / llama_server.STATE).write_text(json.dumps({
        "pid": legacy.pid, "host": "127.0.0.1", "port": 1, "endpoint": "http://127.0.0.1:1/v1", "tag": "forge-python:old",
        "gguf": "/x.gguf", "started_at": "2020-01-01T00:00:00Z"}))
    stopped = llama_server.stop(state_dir)
    assert stopped["messages"] == [f"llama.cpp server for forge-python:old (pid {legacy.pid}) now belongs to another program "
                                   f"(`sleep 60`, started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(psutil.Process(legacy.pid).create_time()))}); left alone"]
    assert legacy.poll() is None
    assert cli.main(["stop"]) == 0 and "nothing to stop" not in capsys.readouterr().out  # no languages recorded: silent


@pytest.mark.slow
def test_changing_deploy_port_moves_the_endpoint(q8_gguf: Path, tmp_path: Path, state_dir: Path):
    root = tmp_path / "artifacts"
    old_port = port_for(root, "python", free_port())
    first = llama_server.deploy(q8_gguf, "forge-python:one", "127.0.0.1", old_port, state_dir)

    new_base = free_port()
    new_port = port_for(root, "python", new_base)
    assert new_port == new_base and read_ports(root) == (new_base, {"python": new_base})
    moved = llama_server.deploy(q8_gguf, "forge-python:one", "127.0.0.1", new_port, state_dir, drain_timeout=5)

    assert moved["endpoint"] == f"http://127.0.0.1:{new_port}/v1" and moved["router"]["port"] == new_port
    assert _chat(moved["endpoint"], "forge-python:one")["model"] == "forge-python:one"
    assert not procs.alive(first["router"]) and not procs.alive(first["server"])
    with pytest.raises(urllib.error.URLError, match="refused"):
        _get(f"{first['endpoint']}/models", timeout=5)
    assert llama_server.health(state_dir)["health"] == "up"


def test_a_busy_stable_port_is_a_true_actionable_error(q8_gguf: Path, state_dir: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(llama_server.DeployError) as err:
            llama_server.deploy(q8_gguf, "forge-python:one", "127.0.0.1", port, state_dir)
    msg = str(err.value)
    assert f"port {port} on 127.0.0.1 is in use by pid {os.getpid()}" in msg
    assert "set deploy.port in forge.yaml" in msg and "Nothing was deployed before" in msg
    assert llama_server.read_state(state_dir) is None and forge_processes() == []  # nothing was started


def test_ports_are_reassigned_when_deploy_port_changes(tmp_path: Path):
    assert port_for(tmp_path, "python", 9000) == 9000
    assert port_for(tmp_path, "rust", 9000) == 9001
    assert port_for(tmp_path, "python", 9000) == 9000
    assert port_for(tmp_path, "rust", 9500) == 9501  # the base changed: everyone moves, keeping the order
    assert read_ports(tmp_path) == (9500, {"python": 9500, "rust": 9501})
    # the flat format written before the base was recorded
    (tmp_path / "deployment" / "ports.json").write_text(json.dumps({"python": 8088, "go": 8089}))
    assert port_for(tmp_path, "go", 8088) == 8089  # same base as before: nothing moves
    assert port_for(tmp_path, "go", 7000) == 7001


def test_procs_verify_matches_start_time_and_marker(foreign):
    sleeper = foreign()
    rec = procs.record(sleeper.pid, ["sleep", "60"], "a sleeper")
    assert procs.verify(rec)[0].pid == sleeper.pid
    assert procs.verify({**rec, "marker": ["llama_cpp.server"]})[0] is None
    assert procs.verify({**rec, "create_time": rec["create_time"] + 1})[0] is None
    assert procs.terminate(rec) == f"stopped a sleeper (pid {sleeper.pid})"  # it was ours: signalled and reaped
    assert not psutil.pid_exists(sleeper.pid) or psutil.Process(sleeper.pid).create_time() != rec["create_time"]
    assert procs.terminate(rec) == f"a sleeper (pid {sleeper.pid}) is not running"


@pytest.mark.slow
def test_a_deployment_recorded_before_the_router_is_taken_over(q8_gguf: Path, state_dir: Path):
    """server.json written by an early Forge: llama-cpp-python's own server listens on the stable port itself."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    old = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(q8_gguf), "--model_alias", "forge-python:old",
                            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            _get(f"{endpoint}/models", timeout=2)
            break
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    legacy = {"pid": old.pid, "host": "127.0.0.1", "port": port, "endpoint": endpoint, "tag": "forge-python:old", "gguf": str(q8_gguf),
              "log": str(state_dir / "server.log"), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (state_dir / llama_server.STATE).write_text(json.dumps(legacy))
    assert llama_server.health(state_dir)["health"] == "up"

    new = llama_server.deploy(q8_gguf, "forge-python:new", "127.0.0.1", port, state_dir)
    assert new["endpoint"] == endpoint and new["router"]["port"] == port
    old.wait(10)
    assert old.returncode is not None and llama_server.health(state_dir)["health"] == "up"
    assert len(forge_processes()) == 2
