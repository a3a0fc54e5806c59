"""The Forge endpoint as a service: the long-running process a service manager (systemd, launchd) keeps alive.

    python -m forge_assets.deploy.supervisor --state-dir <artifact_root>/deployment/_endpoint

``forge service install`` (``system_service.py``) writes the unit that runs it. It

- brings the endpoint back when it starts: if ``server.json`` records a deployment whose router or model server is
  not running (after a reboot, or after the supervisor itself crashed and was restarted), it serves the recorded
  models again through ``llama_server.deploy`` (a new server on a free loopback port, smoke-tested, ``route.json``
  pointed at it, the router started on the recorded host and port, the state rewritten). With nothing deployed yet it
  just waits. A recorded process that dies while it runs is revived the same way, ``settle`` seconds later (so that
  a ``forge stop``, which kills the processes and then clears the record, is not undone);
- runs deploys for ``forge run``: ``submit()`` writes one request into ``<state_dir>/requests/<id>.json`` and waits for
  ``<id>.result.json``; the supervisor runs the deploy in its own process, so the new router and model server are
  its children, inside the service's cgroup (and stopped with it), not children of ``forge run``;
- on SIGTERM (the service is stopped, the machine shuts down) stops the router and the model server and exits 0,
  keeping ``server.json`` so that the next start serves the same models again.

Files in the state dir: ``supervisor.json`` (the running supervisor's identity record, ``procs.py``),
``.supervisor.lock`` (held while it runs: one supervisor per endpoint), ``requests/`` (deploy requests and results),
``service.json`` (written by ``forge service install``: which unit file runs this endpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import signal
import sys
import time
import traceback
import uuid
from pathlib import Path

import psutil

from forge_assets.deploy import llama_server, procs
from forge_assets.files import atomic_write, locked, read_json_object
from forge_assets.private import ensure_private_dir

MODULE = "forge_assets.deploy.supervisor"
RECORD = "supervisor.json"  # the running supervisor's identity record
SERVICE = "service.json"  # the unit file that runs this endpoint (system_service.install writes it)
REQUESTS = "requests"
LOCK = ".supervisor.lock"
LOG = "supervisor.log"  # launchd's StandardOutPath; systemd sends the output to the journal
POLL_S = 0.2
SETTLE_S = 30.0  # a recorded process found dead while running is revived this long after, unless the record changed
RESTART_GRACE_S = 20.0  # submit() waits this long for a supervisor that is not running (the manager restarts it)
REQUIRED = ("tag", "host", "port", "n_ctx", "entry")


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM while a deploy runs, so that the stop is not delayed by it."""


class _Changed(Exception):
    """The deployment record changed while a revival waited for the deploy lock: someone else deployed or stopped."""


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forge-supervisor[{os.getpid()}]: {msg}", flush=True)


_read_json = read_json_object  # requests, results and the supervisor's record


# ---------------------------------------------------------------------------------------------------------------
# What `forge run` (service.py) calls


def record(state_dir: Path) -> dict | None:
    """The supervisor's record (supervisor.json: pid, create_time, marker, state_dir, started_at), or None."""
    return _read_json(Path(state_dir) / RECORD)


def running(state_dir: Path) -> bool:
    """Whether a supervisor serves this endpoint now (its recorded process is alive and is the one that wrote it)."""
    return procs.alive(record(state_dir))


def installed(state_dir: Path) -> bool:
    """Whether `forge service install` installed a service for this endpoint (its unit file is still there)."""
    svc = _read_json(Path(state_dir) / SERVICE)
    return bool(svc and svc.get("path") and Path(svc["path"]).is_file())


def request(tag: str, host: str, port: int, entry: dict, *, n_ctx: int, gpu_layers: int | str = "auto", **options) -> dict:
    """A deploy request for submit(): one language's model entry (service.model_entry) served as `tag` on host:port;
    `options` are further keyword arguments of llama_server.deploy (drain_timeout, start_timeout, options …)."""
    return {"tag": tag, "host": host, "port": int(port), "n_ctx": int(n_ctx), "gpu_layers": gpu_layers, "entry": entry,
            "options": options}


def submit(state_dir: Path, request: dict, timeout: float = 900.0, poll: float = 0.1) -> dict:
    """Have the endpoint's supervisor run one deploy and wait for it; returns the new state (what llama_server.deploy
    returns), or raises llama_server.DeployError with the deploy's own message.

    `request` is {"tag", "host", "port", "n_ctx", "gpu_layers", "entry", "options"} (see request()): the entry replaces
    its language's entry among the models already served, under the deploy lock, as service.deploy_gguf does.
    """
    state_dir = Path(state_dir)
    missing = [k for k in REQUIRED if k not in request]
    if missing:
        raise ValueError(f"a deploy request needs {', '.join(missing)}")
    if not (request["entry"] or {}).get("language"):
        raise ValueError("a deploy request's entry needs its language")
    text = json.dumps(request)  # only plain JSON values travel to the supervisor
    folder = state_dir / REQUESTS
    rid = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path, result = folder / f"{rid}.json", folder / f"{rid}.result.json"
    atomic_write(path, text)
    deadline = time.monotonic() + timeout
    gone_since = None
    while True:
        if result.is_file():
            data = _read_json(result) or {}
            result.unlink(missing_ok=True)
            if data.get("ok"):
                return data["state"]
            raise llama_server.DeployError(data.get("error") or f"the Forge endpoint service failed deploy request {rid} without a message.")
        now = time.monotonic()
        if running(state_dir):
            gone_since = None
        else:
            gone_since = gone_since or now
        if now > deadline or (gone_since is not None and now - gone_since > RESTART_GRACE_S):
            withdrawn = _withdraw(path)
            why = (f"did not answer within {timeout:.0f}s" if now > deadline else
                   f"is not running (no live supervisor recorded in {state_dir / RECORD})")
            fate = ("The request was withdrawn; nothing was changed." if withdrawn else
                    "It had taken the request; what serves is what `forge status` shows.")
            raise llama_server.DeployError(f"the Forge endpoint service {why} while deploying {request['tag']}. {fate} Fix: check "
                                           "`forge service status` (and its log), then run `forge run` again.")
        time.sleep(poll)


def _withdraw(path: Path) -> bool:
    """Remove a request the supervisor has not taken yet (True), or say it was taken (False)."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def merge_models(previous: dict | None, entry: dict) -> list[dict]:
    """The previous server's entries with this language's replaced (or added), languages in a stable order
    (service._with, kept here so the supervisor does not import the artifact store)."""
    kept = [m for m in (previous or {}).get("models") or [] if m.get("language") != entry["language"] and m.get("language")]
    kept = [m for m in kept if Path(m["gguf"]).is_file() and (not m.get("lora") or Path(m["lora"]).is_file())]
    return sorted(kept + [entry], key=lambda m: m["language"])


# ---------------------------------------------------------------------------------------------------------------
# Reviving a recorded deployment


def _identity(state: dict | None) -> tuple:
    """What makes one deployment record different from another: its tag and its processes."""
    def key(rec):
        return (rec or {}).get("pid"), (rec or {}).get("create_time")

    return ((state or {}).get("tag"), key((state or {}).get("server")), key((state or {}).get("router")))


def needs_revival(state: dict | None) -> bool:
    """A deployment is recorded, and its model server or its router is not running."""
    return bool(state) and not (procs.alive(state.get("server")) and procs.alive(state.get("router")))


def recorded_models(state: dict) -> list[dict]:
    """The recorded server entries whose files are still there."""
    models = state.get("models") or ([{"id": state["tag"], "language": None, "gguf": state["gguf"], "lora": None,
                                       "chat_template": None}] if state.get("gguf") and state.get("tag") else [])
    return [m for m in models if Path(m["gguf"]).is_file() and (not m.get("lora") or Path(m["lora"]).is_file())]


def _gpu_layers(state: dict) -> int | str:
    config = _read_json(Path(state["config"])) if state.get("config") else None
    return (config or {}).get("gpu_layers", "auto")


def revive(state_dir: Path, log=_log) -> dict | None:
    """Serve the recorded deployment again if its router or model server is not running (llama_server.deploy: a new
    server on a free loopback port, route.json, the router on the recorded host:port, the state rewritten).

    Returns the new state, or None when nothing needed reviving (or the record changed meanwhile). Raises DeployError
    when it cannot be served (the models are gone, the port is taken …)."""
    state = llama_server.read_state(state_dir)
    if not needs_revival(state):
        return None
    models = recorded_models(state)
    if not models:
        files = ", ".join(str(m.get("gguf")) for m in state.get("models") or []) or "none recorded"
        raise llama_server.DeployError(f"cannot serve {state.get('tag')} again: its model files are gone ({files}). Fix: run "
                                       "`forge run` to deploy again, or `forge stop` to clear the record.")
    ids = [m["id"] for m in models]
    tag = state["tag"] if state.get("tag") in ids else ids[0]
    kwargs = {}
    if state.get("options") and "options" in inspect.signature(llama_server.deploy).parameters:
        kwargs["options"] = state["options"]  # the serving options it was deployed with (key file, limits …)
    before = _identity(state)

    def entries(previous: dict | None) -> list[dict]:  # called under the deploy lock
        if previous is None or _identity(previous) != before:
            raise _Changed()
        return models

    down = [what for what, rec in (("router", state.get("router")), ("model server", state.get("server"))) if not procs.alive(rec)]
    log(f"the {' and the '.join(down)} of {state.get('endpoint')} {'are' if len(down) > 1 else 'is'} not running; serving "
        f"{', '.join(ids)} again (context {state.get('n_ctx')})")
    try:
        new = llama_server.deploy(None, tag, state["host"], int(state["port"]), state_dir, n_ctx=int(state.get("n_ctx") or 32768),
                                  gpu_layers=_gpu_layers(state), models=entries, **kwargs)
    except _Changed:
        log("the deployment record changed meanwhile; nothing revived")
        return None
    log(f"{new['endpoint']} serves {', '.join(new['tags'])} again (model server pid {new['pid']}, router pid "
        f"{(new.get('router') or {}).get('pid')})")
    return new


# ---------------------------------------------------------------------------------------------------------------
# The supervisor process


class Supervisor:
    def __init__(self, state_dir: Path, marker: str, settle: float = SETTLE_S, poll: float = POLL_S):
        self.state_dir, self.marker, self.settle, self.poll = state_dir, marker, settle, poll
        self.stopping = False
        self.busy = False
        self.pending: tuple | None = None  # (identity of a record that needs reviving, when to try)
        self.backoff = 0.0
        self.next_check = 0.0

    # signals -----------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            _log(f"{signal.Signals(signum).name}: stopping")
        self.stopping = True
        if self.busy:
            self.busy = False
            raise _Stop()

    # main loop ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        # a service manager may start it with umask 022 (a unit written by an earlier Forge): everything it writes, and
        # the router and model servers it starts, are the owner's alone; the endpoint's folder is locked
        ensure_private_dir(self.state_dir)
        with contextlib.ExitStack() as held:  # the lock is released last, after the record is removed
            try:
                if not self._lock(held):
                    return 0
                atomic_write(self.state_dir / RECORD, json.dumps({
                    **procs.record(os.getpid(), [MODULE, self.marker], f"Forge endpoint supervisor for {self.state_dir}"),
                    "state_dir": str(self.state_dir), "python": sys.executable,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
                _log(f"serving the endpoint recorded in {self.state_dir}")
                self._adopt()
                self._clean_requests()
                startup = True
                try:
                    while not self.stopping:
                        for path in self._requests():
                            if self.stopping:
                                break
                            self._handle(path)
                        if not self.stopping:
                            self._watch(startup)
                        startup = False
                        time.sleep(self.poll)
                except _Stop:
                    pass
                self.busy = False
                self._shutdown()
                return 0
            finally:
                rec = record(self.state_dir)
                if rec and rec.get("pid") == os.getpid():
                    (self.state_dir / RECORD).unlink(missing_ok=True)

    def _adopt(self) -> None:
        """Say so when the recorded processes run already (started by `forge run` before the service was installed)."""
        with contextlib.suppress(OSError, ValueError):
            state = llama_server.read_state(self.state_dir)
            if state and not needs_revival(state):
                _log(f"{state.get('endpoint')} is served by processes started before this supervisor (router pid "
                     f"{(state.get('router') or {}).get('pid')}, model server pid {state.get('pid')}); they keep serving; the "
                     "next deploy replaces the model server with its own child, the next restart of the service both")

    def _lock(self, held: contextlib.ExitStack) -> bool:
        """One supervisor per endpoint: wait for another one to exit (say so once), then hold the endpoint's lock until
        `held` closes; False if stopped meanwhile."""
        said = False
        while True:
            try:
                held.enter_context(locked(self.state_dir / LOCK, blocking=False))
                return True
            except BlockingIOError:
                if not said:
                    other = record(self.state_dir) or {}
                    _log(f"another supervisor (pid {other.get('pid')}) serves {self.state_dir}; waiting for it to exit")
                    said = True
            if self.stopping:
                return False
            time.sleep(0.5)

    # deploy requests -----------------------------------------------------------------------------------------
    def _requests(self) -> list[Path]:
        folder = self.state_dir / REQUESTS
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".") and not p.name.endswith(".result.json"))

    def _clean_requests(self) -> None:
        """Answer requests a previous supervisor had taken when it died; drop results nobody collected for a day."""
        folder = self.state_dir / REQUESTS
        if not folder.is_dir():
            return
        for taken in folder.glob("*.taken"):
            self._answer(taken.stem, {"ok": False, "error": "the Forge endpoint service restarted while it deployed this request, "
                                      "so the deploy did not finish; what serves is what `forge status` shows. Fix: run "
                                      "`forge run` again."})
            taken.unlink(missing_ok=True)
        for stale in [*folder.glob("*.result.json"), *folder.glob(".*.tmp")]:
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > 86400:
                    stale.unlink()

    def _answer(self, rid: str, out: dict) -> None:
        atomic_write(self.state_dir / REQUESTS / f"{rid}.result.json", json.dumps(out, default=str))

    def _handle(self, path: Path) -> None:
        rid, taken = path.stem, path.with_suffix(".taken")
        try:
            os.rename(path, taken)  # taken: submit() can no longer withdraw it
        except FileNotFoundError:
            return
        try:
            req = json.loads(taken.read_text())
            _log(f"deploy request {rid}: {req.get('tag')} on {req.get('host')}:{req.get('port')}")
            entry = req["entry"]
            self.busy = True
            try:
                state = llama_server.deploy(None, req["tag"], req["host"], int(req["port"]), self.state_dir, n_ctx=int(req["n_ctx"]),
                                            gpu_layers=req.get("gpu_layers", "auto"),
                                            models=lambda previous: merge_models(previous, entry), **(req.get("options") or {}))
            finally:
                self.busy = False
            out = {"ok": True, "state": state}
            _log(f"deploy request {rid}: {state['tag']} serves on {state['endpoint']} (model server pid {state['pid']})")
        except _Stop:
            self._answer(rid, {"ok": False, "error": "the Forge endpoint service was stopped while it deployed this request; "
                                                     "nothing was switched. Fix: start it (`forge service install`) and run `forge run` again."})
            taken.unlink(missing_ok=True)
            raise
        except llama_server.DeployError as exc:
            out = {"ok": False, "error": str(exc)}
            _log(f"deploy request {rid} failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a malformed request must not take the endpoint down
            out = {"ok": False, "error": f"the Forge endpoint service could not run the deploy: {type(exc).__name__}: {exc}"}
            _log(f"deploy request {rid} failed:\n{traceback.format_exc()}")
        self._answer(rid, out)
        taken.unlink(missing_ok=True)
        self.pending = None

    # reviving ---------------------------------------------------------------------------------------------------
    def _watch(self, startup: bool) -> None:
        now = time.monotonic()
        if not startup and now < self.next_check:
            return
        self.next_check = now + 1.0
        try:
            state = llama_server.read_state(self.state_dir)
        except (OSError, ValueError) as exc:  # written by hand, or a disk error: say so, keep serving requests
            if self.pending != ("unreadable", str(exc)):
                _log(f"cannot read {self.state_dir / llama_server.STATE}: {exc}")
                self.pending = ("unreadable", str(exc))
            return
        if not needs_revival(state):
            self.pending, self.backoff = None, 0.0
            return
        ident = _identity(state)
        if self.pending is None or self.pending[0] != ident:
            delay = 0.0 if startup else self.settle
            if delay:
                _log(f"a process of {state.get('endpoint')} is not running; serving it again in {delay:.0f}s unless it is "
                     "redeployed or stopped meanwhile")
            self.pending = (ident, now + delay)
        if now < self.pending[1]:
            return
        self.busy = True
        try:
            revive(self.state_dir)
            self.pending, self.backoff = None, 0.0
        except llama_server.DeployError as exc:
            self.backoff = min(max(self.backoff * 2, 10.0), 300.0)
            _log(f"could not serve the recorded deployment again: {exc} Trying again in {self.backoff:.0f}s.")
            self.pending = (ident, time.monotonic() + self.backoff)
        except Exception:  # noqa: BLE001 - anything else: logged with its trace, retried; the service keeps running
            self.backoff = min(max(self.backoff * 2, 10.0), 300.0)
            _log(f"could not serve the recorded deployment again:\n{traceback.format_exc()}Trying again in {self.backoff:.0f}s.")
            self.pending = (ident, time.monotonic() + self.backoff)
        finally:
            self.busy = False

    # stopping ---------------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop the router and the model server; keep the deployment record, so the next start serves it again."""
        try:
            stopped = llama_server.stop(self.state_dir)
        except Exception:  # noqa: BLE001 - the children are still stopped below
            stopped = None
            _log(f"stopping the endpoint failed:\n{traceback.format_exc()}")
        if stopped:
            for msg in stopped.get("messages") or []:
                _log(msg)
            if llama_server.read_state(self.state_dir) is None:  # unless a deploy from elsewhere wrote a new one meanwhile
                llama_server._write_state(self.state_dir, {k: v for k, v in stopped.items() if k not in ("messages", "retired")})
        # anything else it started (a model server a deploy had started when the stop came)
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                _log(f"stopping pid {child.pid} (`{' '.join(child.cmdline())[:120]}`), which it had started")
                child.terminate()
        _, left = psutil.wait_procs(children, timeout=10)
        for child in left:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(left, timeout=5)
        _log("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge-supervisor", description="Keep the Forge endpoint recorded in STATE_DIR served.")
    parser.add_argument("--state-dir", required=True, help="<artifact_root>/deployment/_endpoint")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help=f"seconds a recorded process must stay dead before it is revived (default {SETTLE_S:.0f})")
    args = parser.parse_args(argv)
    state_dir = Path(os.path.expanduser(args.state_dir)).absolute()
    # the command-line word that names the state dir (`--state-dir X` or `--state-dir=X`): part of its identity record
    words = [a for a in (sys.argv[1:] if argv is None else argv) if a.endswith(args.state_dir)]
    return Supervisor(state_dir, marker=words[-1] if words else args.state_dir, settle=args.settle).run()


if __name__ == "__main__":
    sys.exit(main())
