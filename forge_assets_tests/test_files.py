"""forge_assets/files.py: atomic writes, locks, pid liveness and free ports, on the real file system and kernel."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys

import pytest
from forge_assets.files import atomic_write, atomic_write_json, free_port, locked, pid_alive


def test_atomic_write_replaces_the_whole_file_private_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state" / "server.json"  # the folder is made
    atomic_write(target, "old")
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"\x00bytes", mode=0o640)
    assert target.read_bytes() == b"\x00bytes" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["server.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, "kept")
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        atomic_write_json(target, loop)  # not JSON-able (circular): raises before anything is written
    with pytest.raises(TypeError):
        atomic_write(target, 123)  # neither str nor bytes: the write fails inside, after the temporary exists
    assert target.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def _hold(path, ready, release):
    with locked(path):
        ready.set()
        release.wait(30)


def test_locked_excludes_another_process(tmp_path):
    lock = tmp_path / "x.lock"
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.get_context("fork").Process(target=_hold, args=(lock, ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(BlockingIOError):
            with locked(lock, blocking=False):
                pass
    finally:
        release.set()
        proc.join(30)
    with locked(lock, blocking=False):  # free again once the holder let go
        pass


def test_pid_alive_and_free_port():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    port = free_port()
    with socket.socket() as s:  # nothing listens there: it can be bound
        s.bind(("127.0.0.1", port))
    assert 0 < port < 65536


def test_read_json_object_reads_an_object_or_nothing(tmp_path):
    from forge_assets.files import read_json_object

    good = atomic_write_json(tmp_path / "a.json", {"k": [1, 2]})
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "half.json").write_text('{"k": ')
    assert read_json_object(good) == {"k": [1, 2]}
    assert [read_json_object(tmp_path / n) for n in ("list.json", "half.json", "missing.json")] == [None, None, None]
