"""Files and processes, each concern written once: atomic writes, exclusive locks, "is this pid alive", a free port.

- `read_json_object(path)`: a JSON object file, or None when it is missing or not a whole JSON object.
- `atomic_write(path, data)`: write a whole file or nothing. The data goes to a temporary file in the same folder
  (a leading dot, so no reader that lists the folder takes it for a real file), is flushed and fsynced, gets its mode
  (0600 by default: Forge's state, records and configs are private) and replaces `path` with one rename. Text,
  bytes, or any JSON-able value (`atomic_write_json`).
- `locked(path)`: an exclusive `flock` on a lock file for the duration of a `with` block (blocking by default;
  `blocking=False` raises `BlockingIOError` when another process holds it).
- `pid_alive(pid)`: whether a process with that pid exists on this machine.
- `free_port(host)`: a TCP port nothing listens on now (the kernel's pick; another process may take it before use).

Process identity (pid + start time + command-line marker) and the start/ready/stop loop of model servers are in
`forge_assets.deploy.procs`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from forge_assets.private import private_umask


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int = 0o600) -> Path:
    """Replace `path` with `data` (str as UTF-8, or bytes) in one rename; the folder is made (0700) when missing."""
    path = Path(path)
    private_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, value: object, mode: int = 0o600, indent: int | None = 2) -> Path:
    """`atomic_write` of `value` as JSON (sorted as given; `default=str` for paths and dates), with a final newline."""
    return atomic_write(path, json.dumps(value, indent=indent, default=str) + "\n", mode)


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`, or None when the file is missing, unreadable, not JSON or not an object (a state
    file another process is replacing is read whole or not at all: writers use `atomic_write`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def locked(path: str | os.PathLike, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600 when missing) while the block runs."""
    path = Path(path)
    private_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine); a pid we may not signal still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
