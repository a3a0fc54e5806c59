"""Processes Forge started, recorded so that Forge never signals a process it did not start.

A record is ``{"pid", "create_time", "marker", "what"}``: the pid, the process's start time as psutil reports it,
and command-line arguments that only that process has (the module it runs, its port, its route file). Before any
signal the live process at that pid must match all three; a dead pid, a zombie, or a pid the kernel has since given
to another program is reported and left alone.

The model servers (Forge's llama.cpp server, mlx-lm, vLLM) and the router share one loop here: ``start_server``
spawns and records one, ``wait_ready`` polls it until it answers (or reports its exit or the timeout with the tail
of its log from the offset where its output starts), ``status`` and ``unreachable`` word what a health check finds,
and ``terminate`` stops it by pid and start time. Each target keeps its own readiness probe and error messages.
A bare "is this pid alive" is ``forge_assets.files.pid_alive``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from forge_assets.private import private_umask

CREATE_TIME_TOLERANCE = 0.05  # seconds; psutil derives it from boot time + clock ticks, stable for one process


def record(pid: int, marker: list[str], what: str) -> dict:
    """The identity record of a process this Forge process just started."""
    return {"pid": pid, "create_time": psutil.Process(pid).create_time(), "marker": list(marker), "what": what}


def spawn(cmd: list[str], log_path: Path, banner: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Start cmd detached (its own session, cwd /, no stdin), its output appended to log_path after a dated
    `=== forge: <banner>` line; returns the process and the log offset where its output starts."""
    log_path = Path(log_path)
    private_umask()  # the log, and everything the child writes (it inherits the umask): the owner's alone
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== forge: {time.strftime('%Y-%m-%dT%H:%M:%S')} {banner}\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd="/")
    return proc, offset


def _reap(pid: int) -> None:
    """Collect a dead child's exit status so it does not linger as a zombie (no-op for other processes)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def verify(rec: dict | None) -> tuple[psutil.Process | None, str]:
    """The live process the record names, or None and why not ("is not running", "now belongs to …")."""
    if not rec or not rec.get("pid"):
        return None, "has no recorded pid"
    pid = int(rec["pid"])
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None, "is not running (exited)"
        created = proc.create_time()
        cmdline = proc.cmdline()
        for _ in range(40):  # /proc/<pid>/cmdline reads empty for a moment while the process is still exec'ing
            if cmdline:
                break
            time.sleep(0.025)
            cmdline = proc.cmdline()
    except psutil.NoSuchProcess:
        return None, "is not running"
    except psutil.AccessDenied:
        return None, "now belongs to a process of another user; left alone"
    expected = rec.get("create_time")
    same_start = expected is not None and abs(created - float(expected)) <= CREATE_TIME_TOLERANCE
    if expected is None and rec.get("started_before") is not None:  # records written before start times were kept
        same_start = created <= float(rec["started_before"])
    same_cmd = all(m in cmdline for m in rec.get("marker") or []) and bool(rec.get("marker"))
    if same_start and same_cmd:
        return proc, "is running"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
    name = " ".join(cmdline)[:80] or proc.name()
    return None, f"now belongs to another program (`{name}`, started {started}); left alone"


def alive(rec: dict | None) -> bool:
    return verify(rec)[0] is not None


def status(rec: dict | None) -> str:
    """"running", or why the recorded process is not (verify's reason): what health reports say of a server."""
    proc, why = verify(rec)
    return "running" if proc is not None else why


# ------------------------------------------------------------------------------------ model servers: one loop

@dataclass
class Started:
    """A model server just spawned: the process, where its output starts in the log, and its identity record
    (None when it died before its start time could be read; wait_ready then reports its exit)."""

    proc: subprocess.Popen
    log_path: Path
    offset: int
    record: dict | None


def start_server(cmd: list[str], log_path: Path, banner: str, marker: list[str], what: str, port: int,
                 env: dict | None = None) -> Started:
    """Spawn a model server detached (spawn) and record its identity (pid, start time, marker, what, port)."""
    proc, offset = spawn(cmd, log_path, banner, env=env)
    try:
        rec = {**record(proc.pid, marker, what), "port": port}
    except psutil.NoSuchProcess:
        rec = None
    return Started(proc, Path(log_path), offset, rec)


# What a readiness probe may raise while the server is still coming up: it is asked again.
NOT_YET = (OSError, urllib.error.URLError, ValueError)


def wait_ready(started: Started, ready: Callable[[], object], timeout: float, *, exited: Callable[[int, str], Exception],
               timed_out: Callable[[str], Exception], poll: float = 0.2, not_yet: tuple = NOT_YET):
    """Ask `ready()` every `poll` seconds until it returns something other than None (returned), for at most
    `timeout` seconds. If the server exits first, raise `exited(exit code, log tail)`; past the timeout it is stopped
    and `timed_out(log tail)` raised (each target words its own error, naming its log and the fix). `ready` may raise
    its own error to give up early; the `not_yet` errors (connection refused, …) mean "ask again"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started.proc.poll() is not None:
            raise exited(started.proc.returncode, log_tail(started.log_path, started.offset))
        with contextlib.suppress(*not_yet):
            answer = ready()
            if answer is not None:
                return answer
        time.sleep(poll)
    terminate(started.record)
    raise timed_out(log_tail(started.log_path, started.offset))


def unreachable(exc: BaseException, where: str, timeout: float) -> str:
    """Why a health probe of a server on `where` (host:port) got no HTTP answer, as a health report says it."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused on {where}"
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
        return f"no answer within {timeout:.0f}s on {where}"
    return f"{reason} on {where}"


_ERROR_LINE = re.compile(r"error|exception|failed|refused|not found", re.IGNORECASE)


def log_tail(path: Path, offset: int = 0, lines: int = 1) -> str:
    """The last error lines of a log from offset (else its last lines), each cut to 300 characters, joined by " | "."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in text if _ERROR_LINE.search(ln)]
        return " | ".join(ln[:300] for ln in (errors or text)[-lines:])
    return ""


def established(proc: psutil.Process, port: int | None = None) -> int:
    """How many established TCP connections the process has (requests in flight, or idle keep-alives); with port, only
    those accepted on that local port (its clients: not a server's own connections to its engine)."""
    try:
        conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0
    except psutil.AccessDenied:
        return 0
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and (port is None or (c.laddr and c.laddr.port == port)))


def drain(rec: dict | None, timeout: float) -> bool:
    """Wait until the recorded process has no established connections (True), or timeout seconds (False)."""
    proc, _ = verify(rec)
    if proc is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_running() or established(proc, (rec or {}).get("port")) == 0:
            return True
        time.sleep(0.1)
    return False


def terminate(rec: dict | None, grace: float = 10.0) -> str:
    """Stop the recorded process if it is still the one Forge started (SIGTERM, SIGKILL after grace seconds).

    Returns a sentence saying what happened; a dead or reused pid is never signalled.
    """
    what = (rec or {}).get("what", "process")
    pid = (rec or {}).get("pid")
    proc, why = verify(rec)
    if proc is None:
        return f"{what} (pid {pid}) {why}"
    try:
        children = proc.children(recursive=True)
        proc.terminate()  # psutil re-checks the start time before it signals
        try:
            proc.wait(grace)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
    except psutil.NoSuchProcess:
        pass
    _reap(int(pid))
    return f"stopped {what} (pid {pid})"


def listener(host: str, port: int) -> psutil.Process | None:
    """The process listening on host:port, where the system lets us see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.laddr.ip in (host, "0.0.0.0", "::"):
            if c.pid:
                with contextlib.suppress(psutil.Error):
                    return psutil.Process(c.pid)
    return None


def describe(proc: psutil.Process | None) -> str:
    if proc is None:
        return "another program"
    with contextlib.suppress(psutil.Error):
        return f"pid {proc.pid} (`{' '.join(proc.cmdline())[:100] or proc.name()}`)"
    return f"pid {proc.pid}"
