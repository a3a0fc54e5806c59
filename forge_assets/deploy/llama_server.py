"""Forge's model server (llama.cpp through ``forge_server.py``) behind a Forge router: blue-green deploys.

One stable endpoint ``http://<deploy.host>:<deploy.port>/v1`` serves every language's tag from one server process
that holds the base model once and applies each language's LoRA adapter per request. A tiny Forge router
(``router.py``) forwards every new connection to the server named in ``route.json``. A deploy

1. starts a server for the new set of models on a free loopback port and smoke-tests it there
   (``/v1/models`` lists every tag, ``/v1/chat/completions`` and a FIM ``/v1/completions`` answer for the new tag);
2. atomically re-points ``route.json`` at it (starting the router if none runs on the port, or a new one when
   ``deploy.port`` moved it) and checks the new tag answers through the stable endpoint;
3. records the new deployment (the tag moves), then stops the old server (and old router) once their open
   connections have drained, or after ``drain_timeout`` seconds.

If any step fails, the new server is stopped, the route is put back and the old server keeps serving: clients
see no gap. Every process is recorded with its pid, start time and command-line marker (``procs.py``), and is
only ever signalled while it still matches that record.

Files in ``state_dir`` (``<artifact_root>/deployment/_endpoint``; a language's own folder for deployments made
before one server held every language): ``server.json`` (the deployment), ``route.json`` (the router's upstream),
``server-<port>.json`` (a server's config), ``server.log`` and ``router.log``.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from forge_assets.deploy import procs
from forge_assets.files import atomic_write, free_port, locked
from forge_assets.private import private_umask

STATE = "server.json"
ROUTE = "route.json"
UPSTREAM_HOST = "127.0.0.1"  # model servers listen on loopback only; clients reach them through the router
ROUTER_SCRIPT = Path(__file__).with_name("router.py")
SERVER_MODULE = "forge_assets.deploy.forge_server"


class DeployError(RuntimeError):
    """A model could not be served; the message says what failed, what still serves, and where the log is."""


def _json_request(method: str, url: str, body: dict | None, key: str | None) -> urllib.request.Request:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return urllib.request.Request(url, data=data, method=method, headers=headers)


def _http(method: str, url: str, body: dict | None = None, timeout: float = 60.0, key: str | None = None) -> dict:
    """The JSON answer of one request to a model server; HTTP errors raised (urllib's HTTPError)."""
    with urllib.request.urlopen(_json_request(method, url, body, key), timeout=timeout) as resp:
        return json.loads(resp.read().decode() or "{}")


def _request(method: str, url: str, body: dict | None = None, timeout: float = 60.0, key: str | None = None) -> tuple[int, str]:
    """(status, body text) of one request to a model server; HTTP errors are returned, connection errors raised."""
    try:
        with urllib.request.urlopen(_json_request(method, url, body, key), timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _busy(host: str, port: int) -> str:
    return f"port {port} on {host} is in use by {procs.describe(procs.listener(host, port))}"


def read_state(state_dir: Path) -> dict | None:
    """The language's deployment record (tag, gguf, endpoint, pid, the router and server records), or None."""
    p = state_dir / STATE
    return json.loads(p.read_text()) if p.is_file() else None


def _write_state(state_dir: Path, state: dict) -> None:
    atomic_write(state_dir / STATE, json.dumps(state, indent=2))


def _server_record(state: dict | None) -> dict | None:
    """The llama.cpp server's identity record; synthesized for records written before Forge kept start times."""
    if not state:
        return None
    if "server" in state:
        return state["server"]
    started = state.get("started_at")
    before = calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) + 2 if started else None
    return {"pid": state.get("pid"), "create_time": None, "started_before": before,
            "marker": ["llama_cpp.server", str(state.get("port"))], "what": f"llama.cpp server for {state.get('tag')}"}


def _records(state: dict) -> list[dict]:
    """Every process the state names: the router first (so clients are refused, not half-served), then servers."""
    recs = [state.get("router"), _server_record(state), *(state.get("retiring") or [])]
    return [r for r in recs if r]


def server_config(models: list[dict], n_ctx: int, threads: int | None = None, gpu_layers: int | str = "auto",
                  options: dict | None = None) -> dict:
    """The Forge server's config: every model entry {id, language, gguf, lora, chat_template}, one context size, and the
    serving options (forge_server.DEFAULTS: parallel, api_key_file, allowed_hosts, max_body_bytes, max_tokens_cap,
    request_timeout)."""
    return {"n_ctx": int(n_ctx), "threads": threads or min(os.cpu_count() or 2, 8), "gpu_layers": gpu_layers,
            **(options or {}), "models": models}


def key_of(options: dict | None) -> str | None:
    """The API key Forge's own checks send (the first line of options' api_key_file), or None when there is none."""
    path = (options or {}).get("api_key_file")
    if not path:
        return None
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.strip():
                return line.strip()
    return None


def start(gguf: Path | None, tag: str, host: str, port: int, log_path: Path, n_ctx: int = 32768, timeout: float = 120.0,
          models: list[dict] | None = None, gpu_layers: int | str = "auto", options: dict | None = None) -> dict:
    """Start a detached Forge model server (``forge_server.py``) on host:port; wait until /v1/models lists every tag.

    `models` are the server's entries (one base held once, each tag with its LoRA); without them the one GGUF is
    served as `tag`. Returns the server's record (pid, port, endpoint, tag, tags, config, log, and `process`: the
    identity record for stopping it).
    """
    if not port_free(host, port):
        raise DeployError(f"{_busy(host, port)}. Fix: stop that program, or set deploy.port in forge.yaml to a free port.")
    models = models or [{"id": tag, "language": None, "gguf": str(gguf), "lora": None, "chat_template": None}]
    tags = [m["id"] for m in models]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config_path = log_path.parent / f"server-{port}.json"
    atomic_write(config_path, json.dumps(server_config(models, n_ctx, gpu_layers=gpu_layers, options=options), indent=2))
    cmd = [sys.executable, "-m", SERVER_MODULE, "--config", str(config_path), "--host", host, "--port", str(port)]
    started = procs.start_server(cmd, log_path, f"starting {', '.join(tags)} on {host}:{port}", [SERVER_MODULE, str(config_path), str(port)],
                                 f"Forge model server for {', '.join(tags)}", port)
    proc, record = started.proc, started.record
    endpoint = f"http://{_connect_host(host)}:{port}/v1"

    def ready() -> dict | None:
        models_listed = _http("GET", f"{endpoint}/models", timeout=2, key=key_of(options))
        if not set(tags) <= {m.get("id") for m in models_listed.get("data", [])}:
            return None
        served_ctx = min(int((m.get("meta") or {}).get("context") or n_ctx) for m in models_listed["data"])
        listening = procs.listener(host, port)
        if listening is not None and listening.pid != proc.pid:  # another program answered on the port we chose
            procs.terminate(record)
            raise DeployError(f"port {port} on {host} answered, but from {procs.describe(listening)}, not the model "
                              f"server Forge started (pid {proc.pid}); nothing was switched. Fix: run `forge run` again.")
        return {"pid": proc.pid, "host": host, "port": port, "endpoint": endpoint, "tag": tag, "tags": tags,
                "gguf": str(gguf) if gguf else None, "config": str(config_path), "models": models, "n_ctx": served_ctx,
                "log": str(log_path), "log_offset": started.offset, "process": record, "options": options or {},
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def exited(code: int, tail: str) -> DeployError:
        files = ", ".join(sorted({Path(m["gguf"]).name for m in models} | {Path(m["lora"]).name for m in models if m.get("lora")}))
        return DeployError(f"the model server could not serve {', '.join(tags)} from {files}: it exited with code {code} "
                           f"while loading ({tail or 'no output'}). See {log_path}.")

    return procs.wait_ready(started, ready, timeout, exited=exited, timed_out=lambda tail: DeployError(
        f"the model server for {', '.join(tags)} did not answer on {endpoint} within {timeout:.0f}s. See {log_path}."))


def _start_upstream(gguf: Path | None, tag: str, log_path: Path, n_ctx: int, timeout: float, models: list[dict] | None,
                    gpu_layers: int | str, options: dict | None = None) -> dict:
    """start() on a free loopback port, trying another port if the chosen one was taken meanwhile."""
    for attempt in range(3):
        port = free_port(UPSTREAM_HOST)
        try:
            return start(gguf, tag, UPSTREAM_HOST, port, log_path, n_ctx=n_ctx, timeout=timeout, models=models, gpu_layers=gpu_layers,
                         options=options)
        except DeployError as exc:
            if attempt == 2 or ("in use" not in str(exc) and "address already in use" not in str(exc).lower()):
                raise
    raise AssertionError("unreachable")


def smoke_chat(endpoint: str, tag: str, prompt: str = "Write a hello world function.", max_tokens: int = 16,
               key: str | None = None) -> dict:
    """One chat completion against the served tag; raises DeployError unless it answers properly."""
    try:
        out = _http("POST", f"{endpoint}/chat/completions", {
            "model": tag, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}, key=key)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise DeployError(f"smoke test: POST {endpoint}/chat/completions failed: {exc}") from None
    choice = (out.get("choices") or [{}])[0]
    if "message" not in choice or out.get("model") != tag:
        raise DeployError(f"smoke test: {endpoint}/chat/completions answered without a message for model {tag}: {out}")
    return {"reply": choice["message"].get("content", ""), "finish_reason": choice.get("finish_reason"),
            "completion_tokens": (out.get("usage") or {}).get("completion_tokens")}


def smoke_fim(endpoint: str, tag: str, max_tokens: int = 8, key: str | None = None) -> dict:
    """One fill-in-the-middle completion (`suffix` given) against the served tag; raises DeployError unless it answers,
    or refuses FIM because the model has no FIM tokens (then {"middle": "", "skipped": the server's reason})."""
    try:
        out = _http("POST", f"{endpoint}/completions", {"model": tag, "prompt": "def add(a, b):\n    ", "suffix": "\n    return result\n",
                                                       "max_tokens": max_tokens, "temperature": 0}, key=key)
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read().decode() or "{}").get("error") or {}
        except ValueError:
            err = {}
        if exc.code == 400 and err.get("code") == "fim_not_supported":
            return {"middle": "", "skipped": err.get("message", "")}
        raise DeployError(f"smoke test: POST {endpoint}/completions (FIM) failed: {exc}") from None
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise DeployError(f"smoke test: POST {endpoint}/completions (FIM) failed: {exc}") from None
    choice = (out.get("choices") or [{}])[0]
    if "text" not in choice or out.get("model") != tag:
        raise DeployError(f"smoke test: {endpoint}/completions answered without a completion for model {tag}: {out}")
    return {"middle": choice["text"], "finish_reason": choice.get("finish_reason")}


def start_router(host: str, port: int, route: Path, log_path: Path, timeout: float = 15.0) -> dict:
    """Start a detached Forge router on host:port forwarding to the upstream in `route`; return its record."""
    if not port_free(host, port):
        raise DeployError(f"{_busy(host, port)}. Fix: stop that program, or set deploy.port in forge.yaml to a free port "
                          "(Forge then re-assigns every language's port from it; see deployment/ports.json).")
    cmd = [sys.executable, str(ROUTER_SCRIPT), "--host", host, "--port", str(port), "--route", str(route)]
    private_umask()  # the router's log; the router (a script, not importing forge_assets) inherits the umask
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd="/")
    rec = {**procs.record(proc.pid, [str(ROUTER_SCRIPT), str(route), str(port)], f"Forge router on {host}:{port}"),
           "host": host, "port": port, "log": str(log_path)}

    def ready() -> dict | None:
        p = psutil.Process(proc.pid)
        conns = p.net_connections(kind="tcp") if hasattr(p, "net_connections") else p.connections(kind="tcp")
        return rec if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns) else None

    return procs.wait_ready(procs.Started(proc, log_path, 0, rec), ready, timeout, poll=0.05, not_yet=(psutil.Error,),
                            exited=lambda code, tail: DeployError(f"the Forge router could not listen on {host}:{port} (exit code "
                                                                  f"{code}; {tail}). See {log_path}."),
                            timed_out=lambda tail: DeployError(f"the Forge router did not listen on {host}:{port} within "
                                                               f"{timeout:.0f}s. See {log_path}."))


def _write_route(route: Path, upstream: dict) -> None:
    atomic_write(route, json.dumps({"host": upstream["host"], "port": upstream["port"], "tag": upstream["tag"],
                                     "pid": upstream["pid"]}))


def _through(endpoint: str, tag: str, timeout: float = 15.0, key: str | None = None) -> None:
    """Wait until the stable endpoint lists tag (the router forwards to the new server)."""
    deadline, last = time.time() + timeout, "no answer"
    while time.time() < deadline:
        try:
            ids = [m.get("id") for m in _http("GET", f"{endpoint}/models", timeout=5, key=key).get("data", [])]
            if tag in ids:
                return
            last = f"it lists {ids}"
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise DeployError(f"{endpoint}/models did not list {tag} through the Forge router within {timeout:.0f}s ({last}).")


def _deploy_lock(state_dir: Path):
    """One deploy at a time per endpoint (the state folder's .deploy.lock)."""
    return locked(state_dir / ".deploy.lock")


def _still_serving(previous: dict | None) -> str:
    if not previous:
        return "Nothing was deployed before, so nothing serves this language."
    router, server = previous.get("router"), _server_record(previous)
    if procs.alive(server) and (router is None or procs.alive(router)):
        return f"The previous deployment {previous['tag']} keeps serving on {previous['endpoint']}."
    return f"The previous deployment {previous['tag']} was not running either; nothing serves {previous['endpoint']}."


def deploy(gguf: Path | None, tag: str, host: str, port: int, state_dir: Path, *, n_ctx: int = 32768,
           drain_timeout: float = 30.0, start_timeout: float = 120.0, models=None, gpu_layers: int | str = "auto",
           options: dict | None = None) -> dict:
    """Serve `models` (or the one gguf as tag) on the stable endpoint http://host:port/v1 from one Forge model server,
    replacing the previous server only once the new one has answered for `tag` (chat and FIM) and lists every tag;
    returns the state (endpoint, tag, tags, pid, smoke, router, server …).

    `models` may be a function of the previous state (None when nothing is deployed) returning the entries: it is
    called under the deploy lock, so two languages deploying at once each keep the other's tag.
    """
    with _deploy_lock(state_dir):
        if callable(models):
            models = models(read_state(state_dir))
        return _deploy(Path(gguf) if gguf else None, tag, host, port, state_dir, n_ctx, drain_timeout, start_timeout, models, gpu_layers,
                       options)


def _deploy(gguf: Path | None, tag: str, host: str, port: int, state_dir: Path, n_ctx: int, drain_timeout: float,
            start_timeout: float, models: list[dict] | None = None, gpu_layers: int | str = "auto", options: dict | None = None) -> dict:
    previous = read_state(state_dir)
    prev_server, prev_router = _server_record(previous), (previous or {}).get("router")
    route = state_dir / ROUTE
    endpoint = f"http://{host}:{port}/v1"
    keep_router = procs.alive(prev_router) and prev_router.get("host") == host and prev_router.get("port") == port
    # A deployment made before the router existed has its server listening on the stable port itself.
    legacy_on_port = previous is not None and prev_router is None and previous.get("port") == port and procs.alive(prev_server)
    if not keep_router and not legacy_on_port and not port_free(host, port):
        raise DeployError(f"cannot serve {tag} on {endpoint}: {_busy(host, port)}. Fix: stop that program, or set deploy.port "
                          "in forge.yaml to a free port (Forge then re-assigns every language's port from it; see "
                          f"deployment/ports.json). {_still_serving(previous)}")

    # 1. the new server, on a free loopback port, proven directly
    timings, t0 = {}, time.monotonic()
    try:
        new = _start_upstream(gguf, tag, state_dir / "server.log", n_ctx, start_timeout, models, gpu_layers, options)
    except DeployError as exc:
        raise DeployError(f"{exc} {_still_serving(previous)}") from None
    try:
        timings["start_s"] = round(time.monotonic() - t0, 2)
        key = key_of(options)
        smoke = smoke_chat(new["endpoint"], tag, key=key)
        smoke["fim"] = smoke_fim(new["endpoint"], tag, key=key)
    except DeployError as exc:
        procs.terminate(new["process"])
        raise DeployError(f"{exc} See {new['log']}. {_still_serving(previous)}") from None

    timings["smoke_s"] = round(time.monotonic() - t0 - timings["start_s"], 2)
    # 2. new connections go to it; the stable endpoint must list the new tag
    old_route = route.read_text() if route.is_file() else None
    _write_route(route, new)
    router = prev_router if keep_router else None
    try:
        if router is None:
            if legacy_on_port:  # once, when upgrading from a deployment without a router: a short gap
                procs.terminate(prev_server)
            router = start_router(host, port, route, state_dir / "router.log")
        _through(endpoint, tag, key=key)
    except DeployError as exc:
        if old_route is not None:
            atomic_write(route, old_route)
        else:
            route.unlink(missing_ok=True)
        if router is not None and router is not prev_router:
            procs.terminate(router)
        procs.terminate(new["process"])
        raise DeployError(f"{exc} {_still_serving(previous)}") from None

    # 3. the tag moves; then the old server (and the old router, if the port moved) stop once drained
    retiring = [r for r in ((prev_router if router is not prev_router else None), prev_server, *((previous or {}).get("retiring") or []))
                if r and procs.alive(r)]
    state = {"tag": tag, "tags": new["tags"], "models": new["models"], "n_ctx": new["n_ctx"], "config": new["config"],
             "gguf": str(gguf) if gguf else None, "host": host, "port": port, "endpoint": endpoint, "pid": new["pid"],
             "upstream": {"host": new["host"], "port": new["port"], "endpoint": new["endpoint"]},
             "log": new["log"], "router": router, "server": new["process"], "started_at": new["started_at"],
             "smoke": smoke, "retiring": retiring, "options": options or {}}
    _write_state(state_dir, state)
    timings["switch_s"] = round(time.monotonic() - t0 - timings["start_s"] - timings["smoke_s"], 2)
    t_drain = time.monotonic()
    retired = []
    if retiring:
        time.sleep(0.3)  # a connection the router accepted just before the switch reaches the old server first
    for rec in retiring:
        drained = procs.drain(rec, drain_timeout)
        note = procs.terminate(rec)
        retired.append(note if drained else f"{note} after {drain_timeout:.0f}s with connections still open")
    state.pop("retiring")
    _write_state(state_dir, state)
    timings["drain_s"] = round(time.monotonic() - t_drain, 2)
    return {**state, "retired": retired, "timings": timings}


def stop(state_dir: Path) -> dict | None:
    """Stop the language's router and llama.cpp server(s) if they are still the processes Forge started.

    A dead pid, or a pid now used by another program, is not signalled; the state is cleared either way.
    Returns the state that was cleared with `messages` (one sentence per process), or None if nothing was recorded.
    """
    state = read_state(state_dir)
    if state is None:
        return None
    messages = [procs.terminate(rec) for rec in _records(state)]
    (state_dir / STATE).unlink(missing_ok=True)
    (state_dir / ROUTE).unlink(missing_ok=True)
    return {**state, "messages": messages}


def health(state_dir: Path, timeout: float = 5.0) -> dict:
    """Check the language's stable endpoint over HTTP: GET /v1/models must answer and list the deployed tag.

    Returns ``{"ok": bool, "health": "up" | "down: <why>", "endpoint", "tag", "models", "router", "server"}``.
    """
    state = read_state(state_dir)
    if state is None:
        return {"ok": False, "health": f"down: no llama.cpp deployment is recorded in {state_dir} (deploy with `forge run`)",
                "endpoint": None, "tag": None, "models": []}
    endpoint, tag = state["endpoint"], state["tag"]
    where = f"{state['host']}:{state['port']}"
    out = {"endpoint": endpoint, "tag": tag, "models": []}
    try:
        ids = [m.get("id") for m in _http("GET", f"{endpoint}/models", timeout=timeout, key=key_of(state.get("options"))).get("data", [])]
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            detail = json.loads(detail)["error"]["message"]
        why = f"HTTP {exc.code} on {where} ({detail})"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = procs.unreachable(exc, where, timeout)
    else:
        out["models"] = ids
        missing = [t for t in state.get("tags") or [tag] if t not in ids]
        if not missing:
            return {**out, "ok": True, "health": "up", "router": "running", "server": "running"}
        why = f"{endpoint}/models answers but does not list {', '.join(missing)} (it lists {ids})"
    notes = []
    router, server = state.get("router"), _server_record(state)
    out["router"] = "running" if router is None else procs.status(router)
    out["server"] = procs.status(server)
    if router is not None and out["router"] != "running":
        notes.append(f"the Forge router (pid {router['pid']}) {out['router']}")
    if out["server"] != "running":
        notes.append(f"the model server for {tag} (pid {server['pid']}) {out['server']}; see {state.get('log')}")
    fix = "redeploy with `forge run` (or `forge stop` to clear it)"
    return {**out, "ok": False, "health": f"down: {why}" + (f"; {'; '.join(notes)}" if notes else "") + f". Fix: {fix}."}


def serving(state_dir: Path, tag: str) -> bool:
    """True if the stable endpoint answers, lists every deployed tag, and tag among them (what a deploy may reuse)."""
    h = health(state_dir)
    return h["ok"] and tag in h["models"]
