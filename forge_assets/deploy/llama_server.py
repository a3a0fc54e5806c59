"""llama.cpp's OpenAI-compatible server (llama-cpp-python[server]), run by Forge on 127.0.0.1.

A deploy stops the language's running server, starts one on the new GGUF and smoke-tests it; if
the new one fails, the previous GGUF is served again, so a failed run never loses a deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STATE = "server.json"


class DeployError(RuntimeError):
    """A model could not be served; the message says what failed and where the log is."""


def _http(method: str, url: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode() or "{}")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def read_state(state_dir: Path) -> dict | None:
    """The running server's record (pid, port, tag, gguf), or None."""
    p = state_dir / STATE
    return json.loads(p.read_text()) if p.is_file() else None


def _write_state(state_dir: Path, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_dir / STATE)


def start(gguf: Path, tag: str, host: str, port: int, log_path: Path, n_ctx: int = 2048, timeout: float = 120.0) -> dict:
    """Start a detached llama.cpp server for gguf as model `tag`; wait until it answers /v1/models."""
    if not port_free(host, port):
        raise DeployError(f"port {port} on {host} is in use by another program. Fix: free it or set deploy.port in forge.yaml.")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", tag,
           "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://{host}:{port}/v1"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"llama.cpp server for {gguf.name} exited with code {proc.returncode} while starting. See {log_path}.")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            models = _http("GET", f"{endpoint}/models", timeout=2)
            if any(m.get("id") == tag for m in models.get("data", [])):
                return {"pid": proc.pid, "host": host, "port": port, "endpoint": endpoint, "tag": tag, "gguf": str(gguf),
                        "log": str(log_path), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        time.sleep(0.3)
    stop_pid(proc.pid)
    raise DeployError(f"llama.cpp server for {gguf.name} did not answer on {endpoint} within {timeout:.0f}s. See {log_path}.")


def smoke_chat(endpoint: str, tag: str, prompt: str = "Write a hello world function.", max_tokens: int = 16) -> dict:
    """One chat completion against the served tag; raises DeployError unless it answers properly."""
    try:
        out = _http("POST", f"{endpoint}/chat/completions", {
            "model": tag, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0})
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise DeployError(f"smoke test: POST {endpoint}/chat/completions failed: {exc}") from None
    choice = (out.get("choices") or [{}])[0]
    if "message" not in choice or out.get("model") != tag:
        raise DeployError(f"smoke test: {endpoint}/chat/completions answered without a message for model {tag}: {out}")
    return {"reply": choice["message"].get("content", ""), "finish_reason": choice.get("finish_reason"),
            "completion_tokens": (out.get("usage") or {}).get("completion_tokens")}


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """Stop a server process group: SIGTERM, then SIGKILL after grace seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def stop(state_dir: Path) -> dict | None:
    """Stop the language's server if one runs; return the record of what was stopped."""
    state = read_state(state_dir)
    if state is None:
        return None
    if alive(state["pid"]):
        stop_pid(state["pid"])
    (state_dir / STATE).unlink(missing_ok=True)
    return state


def deploy(gguf: Path, tag: str, host: str, port: int, state_dir: Path) -> dict:
    """Serve gguf as tag on host:port, replacing the language's previous server only if the new one works."""
    previous = read_state(state_dir)
    if previous and alive(previous["pid"]):
        stop_pid(previous["pid"])
    log_path = state_dir / "server.log"
    try:
        state = start(gguf, tag, host, port, log_path)
        try:
            state["smoke"] = smoke_chat(state["endpoint"], tag)
        except DeployError:
            stop_pid(state["pid"])
            raise
    except DeployError as exc:
        if previous and Path(previous["gguf"]).is_file():  # put the last good model back
            restored = start(Path(previous["gguf"]), previous["tag"], previous["host"], previous["port"], log_path)
            _write_state(state_dir, {**previous, **restored})
            raise DeployError(f"{exc} The previous deployment {previous['tag']} is serving again.") from None
        (state_dir / STATE).unlink(missing_ok=True)
        raise
    _write_state(state_dir, state)
    return state
