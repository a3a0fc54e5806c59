"""A LAN bind is defended: keys (401, /health open), a Host allow-list, JSON-only POSTs, a body limit, a max_tokens cap,
a deadline, generation stopped when the client goes away, no absolute paths, no docs; the key reaches the client configs.

The server is real (Forge's server on llama.cpp's engine) with the real pretrained SmolLM2-135M GGUF the test extra ships."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from forge_assets.config import DeployConfig
from forge_assets.deploy import clients, llama_server, procs, service
from forge_assets_tests.conftest import free_port

KEY = "test-key-0123456789"


def _smol() -> Path:
    from forge_assets.export.packaged_models import PackagedModelError, packaged_gguf

    try:
        return packaged_gguf("smollm2-135m")
    except PackagedModelError as exc:
        pytest.skip(str(exc))


def _call(url: str, body: dict | bytes | None = None, *, key: str | None = None, host: str | None = None,
          ctype: str = "application/json", timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": ctype}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if host:
        headers["Host"] = host
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"{}")
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """One server, one slot (so a request that is not cancelled would hold up the next), a key, tight limits."""
    folder = tmp_path_factory.mktemp("guard")
    key_file = folder / "api_key"
    key_file.write_text(KEY + "\n")
    models = [{"id": "forge-python:g", "language": "python", "gguf": str(_smol()), "lora": None, "chat_template": None}]
    options = {"parallel": 1, "api_key_file": str(key_file), "allowed_hosts": ["localhost", "127.0.0.1", "forge.lan"],
               "max_body_bytes": 64 * 1024, "max_tokens_cap": 2000, "request_timeout": 6.0}
    rec = llama_server.start(None, "forge-python:g", "127.0.0.1", free_port(), folder / "server.log", n_ctx=4096, models=models,
                             options=options)
    yield rec
    procs.terminate(rec["process"])


def test_keys_and_an_open_health(guarded):
    ep = guarded["endpoint"]
    root = ep.removesuffix("/v1")
    assert _call(f"{root}/health") == (200, {"status": "ok"})  # open without a key
    code, body = _call(f"{ep}/models")
    assert code == 401 and body["error"]["code"] == "invalid_api_key" and "forge client-config" in body["error"]["message"]
    assert _call(f"{ep}/models", key="wrong")[0] == 401
    assert _call(f"{ep}/completions", {"model": "forge-python:g", "prompt": "x", "max_tokens": 2})[0] == 401
    code, body = _call(f"{ep}/models", key=KEY)
    assert code == 200 and [m["id"] for m in body["data"]] == ["forge-python:g"]
    req = urllib.request.Request(f"{ep}/models", headers={"x-api-key": KEY})  # Anthropic-style header works too
    assert urllib.request.urlopen(req, timeout=30).status == 200


def test_no_paths_and_no_docs(guarded):
    ep = guarded["endpoint"]
    _, body = _call(f"{ep}/models", key=KEY)
    assert "/" not in json.dumps(body["data"][0]["meta"])  # file names only
    root = ep.removesuffix("/v1")
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert _call(f"{root}{path}", key=KEY)[0] == 404


def test_host_allow_list_and_json_only_posts(guarded):
    ep = guarded["endpoint"]
    code, body = _call(f"{ep}/models", key=KEY, host="attacker.example:8088")  # DNS rebinding: a foreign name
    assert code == 403 and body["error"]["code"] == "host_not_allowed" and "deploy.allowed_hosts" in body["error"]["message"]
    assert _call(f"{ep}/models", key=KEY, host="forge.lan:8088")[0] == 200  # a name the team configured
    body = {"model": "forge-python:g", "prompt": "x", "max_tokens": 2}
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):  # CORS-simple: no preflight
        code, out = _call(f"{ep}/completions", body, key=KEY, ctype=ctype)
        assert code == 415 and out["error"]["code"] == "unsupported_media_type", ctype
    assert _call(f"{ep}/completions", body, key=KEY, ctype="application/json; charset=utf-8")[0] == 200


def test_body_limit_by_length_and_by_chunks(guarded):
    ep = guarded["endpoint"]
    big = {"model": "forge-python:g", "prompt": "x" * 70 * 1024, "max_tokens": 1}
    code, out = _call(f"{ep}/completions", big, key=KEY)
    assert code == 413 and out["error"]["code"] == "request_too_large" and "deploy.max_body_mb" in out["error"]["message"]
    # chunked (no Content-Length): counted as it arrives
    host, port = guarded["host"], guarded["port"]
    payload = json.dumps(big).encode()
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for i in range(0, len(payload), 8192):
            part = payload[i:i + 8192]
            try:
                s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            except OSError:
                break  # the server answered and closed early
        try:
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head[:200]


@pytest.mark.slow
def test_max_tokens_cap_and_deadline(guarded):
    ep = guarded["endpoint"]
    counting = {"model": "forge-python:g", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "temperature": 0}
    code, out = _call(f"{ep}/completions", {**counting, "max_tokens": 5}, key=KEY)
    assert code == 200 and out["usage"]["completion_tokens"] == 5
    code, out = _call(f"{ep}/completions", {**counting, "max_tokens": 100000}, key=KEY)  # more than the context: named
    assert code == 400 and out["error"]["code"] == "context_length_exceeded"
    # no n_predict on llama.cpp's native endpoint: the cap (2000), and the 6 s deadline stops it first
    t0 = time.monotonic()
    code, out = _call(f"{ep.removesuffix('/v1')}/completion", counting, key=KEY)
    took = time.monotonic() - t0
    assert code == 200 and out["stop_type"] == "limit"
    assert 5.5 < took < 20 and 0 < out["tokens_predicted"] < 2000, (took, out)


def test_a_client_that_goes_away_stops_its_generation(guarded):
    """One slot: a stream abandoned after its first token must not hold the slot until its 2,000 tokens are done."""
    ep = guarded["endpoint"]
    host, port = guarded["host"], guarded["port"]
    body = json.dumps({"model": "forge-python:g", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 1900,
                       "temperature": 0, "stream": True}).encode()
    for _ in range(2):  # streamed, then abandoned twice in a row
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            got = b""
            while b"data: " not in got:  # the first token arrives
                chunk = s.recv(8192)
                assert chunk, got
                got += chunk
    t0 = time.monotonic()
    code, out = _call(f"{ep}/completions", {"model": "forge-python:g", "prompt": "def f():", "max_tokens": 2}, key=KEY)
    assert code == 200 and time.monotonic() - t0 < 4.0  # the slot was free: the abandoned streams were cancelled


def test_a_lan_bind_gets_a_key_written_0600_and_into_every_client_config(tmp_path: Path, monkeypatch):
    store = SimpleNamespace(root=tmp_path)
    lan = DeployConfig(host="0.0.0.0")
    opts = service.server_options(store, lan)
    key_file = Path(opts["api_key_file"])
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600 and len(key_file.read_text().strip()) >= 32
    assert service.server_options(store, lan)["api_key_file"] == str(key_file)  # kept, not regenerated
    assert key_file.read_text() == Path(opts["api_key_file"]).read_text()
    assert "localhost" in opts["allowed_hosts"] and socket.gethostname().lower() in opts["allowed_hosts"]
    assert service.server_options(SimpleNamespace(root=tmp_path / "other"), DeployConfig())["api_key_file"] is None  # loopback: none
    monkeypatch.setenv("TEAM_KEY", "from-the-environment")
    env = service.server_options(SimpleNamespace(root=tmp_path / "env"), DeployConfig(host="0.0.0.0", api_key="$TEAM_KEY"))
    assert Path(env["api_key_file"]).read_text().strip() == "from-the-environment"
    monkeypatch.delenv("TEAM_KEY")
    with pytest.raises(Exception, match="TEAM_KEY"):
        service.server_options(SimpleNamespace(root=tmp_path / "env2"), DeployConfig(host="0.0.0.0", api_key="$TEAM_KEY"))

    served = clients.Endpoint("llama-server", "http://192.0.2.10:8088/v1", [clients.ServedModel("forge-python:1", "python", 8192, 1024)],
                            api_key="k-123")
    paths = clients.write_all(served, tmp_path / "clients")
    assert json.loads(paths["opencode"].read_text())["provider"]["forge"]["options"]["apiKey"] == "k-123"
    assert "apiKey: k-123" in paths["continue"].read_text() and 'api_key = "k-123"' in paths["tabby"].read_text()
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in paths.values())


@pytest.mark.slow
def test_a_lan_bind_refuses_keyless_requests_end_to_end(tmp_path: Path):
    """deploy.host 0.0.0.0 through the real deploy path (router + server): keyless 401, keyed 200 (reached on loopback)."""
    store = SimpleNamespace(root=tmp_path)
    d = DeployConfig(host="0.0.0.0", port=free_port())
    models = [{"id": "forge-python:lan", "language": "python", "gguf": str(_smol()), "lora": None, "chat_template": None}]
    state_dir = service.endpoint_dir(store)
    state = llama_server.deploy(None, "forge-python:lan", d.host, d.port, state_dir, n_ctx=2048, models=models,
                                options=service.server_options(store, d))
    try:
        assert state["endpoint"] == f"http://0.0.0.0:{d.port}/v1" and state["router"]["host"] == "0.0.0.0"
        key = (state_dir / service.API_KEY).read_text().strip()
        ep = f"http://127.0.0.1:{d.port}/v1"
        assert _call(f"{ep}/models")[0] == 401
        assert _call(f"{ep}/chat/completions", {"model": "forge-python:lan", "messages": [{"role": "user", "content": "hi"}]})[0] == 401
        assert _call(f"http://127.0.0.1:{d.port}/health") == (200, {"status": "ok"})
        code, out = _call(f"{ep}/chat/completions", {"model": "forge-python:lan", "max_tokens": 3,
                                                     "messages": [{"role": "user", "content": "hi"}]}, key=key)
        assert code == 200 and out["model"] == "forge-python:lan"
        assert llama_server.health(state_dir)["ok"]  # Forge's own checks send the key
    finally:
        llama_server.stop(state_dir)


@pytest.mark.slow
def test_blue_green_refuses_a_listener_that_is_not_its_server(tmp_path: Path, monkeypatch):
    """start() proves the process answering on the new port is the one it started before anything is switched."""
    import psutil

    impostor = psutil.Process(os.getppid())
    monkeypatch.setattr(procs, "listener", lambda host, port: impostor)
    models = [{"id": "forge-python:x", "language": "python", "gguf": str(_smol()), "lora": None, "chat_template": None}]
    with pytest.raises(llama_server.DeployError, match="not the model server Forge started"):
        llama_server.start(None, "forge-python:x", "127.0.0.1", free_port(), tmp_path / "server.log", n_ctx=1024, models=models)
