"""The sandbox against hostile programs: each must be stopped or refused, and the machine must stay healthy."""

from __future__ import annotations

import os
import secrets
import select
import socket
import time
from pathlib import Path

import pytest

from forge_assets.evaluation.sandbox import available_isolation, processes_of_uid, run_program

ISO = available_isolation()
needs_kernel_isolation = pytest.mark.skipif(not (ISO["netns"] and ISO["separate_uid"]),
                                            reason="needs a network namespace and a separate uid (root)")


def _session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.append(int(name))
    return members


def _assert_nothing_left(result) -> None:
    assert _session_members(result.pid) == []
    if result.uid is not None:
        assert processes_of_uid(result.uid) == []
        deadline = time.monotonic() + 5  # killed orphans are reaped by init shortly after
        while processes_of_uid(result.uid, include_zombies=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_of_uid(result.uid, include_zombies=True) == []


def test_available_isolation_is_consistent():
    assert ISO["network_isolation"] in ("netns", "socket-blocked")
    assert (ISO["network_isolation"] == "netns") == ISO["netns"]
    assert os.path.exists(ISO["python"])
    assert available_isolation() == ISO  # computed once


def test_a_normal_program_passes_with_its_output():
    result = run_program("import sys\nprint('hello from the sandbox')\nprint('to stderr', file=sys.stderr)\n",
                         timeout_s=10)
    assert result.status == "passed" and result.returncode == 0
    assert result.stdout == "hello from the sandbox\n" and "to stderr" in result.stderr
    assert result.network_isolation == ISO["network_isolation"]
    _assert_nothing_left(result)


def test_a_failing_program_fails():
    result = run_program("raise ValueError('nope')\n", timeout_s=10)
    assert result.status == "failed" and result.returncode == 1 and "ValueError: nope" in result.stderr


def test_the_program_runs_in_its_own_directory_which_is_removed():
    result = run_program("import os\nprint(os.getcwd())\nprint(os.environ['HOME'])\nprint(os.environ['TMPDIR'])\n"
                         "open('scratch.txt', 'w').write('x')\n", timeout_s=10)
    assert result.status == "passed", result.stderr
    cwd, home, tmp = result.stdout.split()
    assert home.startswith(cwd + "/") and tmp.startswith(cwd + "/")
    assert not os.path.exists(cwd)


def test_an_infinite_loop_is_stopped():
    started = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=3, cpu_s=1)
    assert result.status in ("timeout", "killed")
    assert time.monotonic() - started < 6
    _assert_nothing_left(result)


def test_a_sleeping_program_times_out():
    result = run_program("import time\ntime.sleep(60)\n", timeout_s=1, cpu_s=5)
    assert result.status == "timeout" and result.seconds < 3
    _assert_nothing_left(result)


def test_a_fork_bomb_is_refused():
    result = run_program("import os\nwhile True:\n    os.fork()\n", timeout_s=5, cpu_s=2)
    assert result.status != "passed"
    _assert_nothing_left(result)


@needs_kernel_isolation
@pytest.mark.parametrize("source", [
    "import os\nwhile True:\n    os.fork()\n",
    # children that leave the process group with setsid and then sleep: only the uid sweep finds them
    "import os, time\nfor _ in range(500):\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
    "            time.sleep(120)\n            os._exit(0)\n    except OSError:\n        break\ntime.sleep(120)\n",
], ids=["fork-bomb", "setsid-sleepers"])
def test_a_fork_bomb_is_bounded_and_cleaned_up_even_when_spawning_is_allowed(source):
    result = run_program(source, timeout_s=3, cpu_s=2, max_procs=32, allow_spawn=True)
    assert result.status in ("failed", "killed", "timeout")
    _assert_nothing_left(result)


def test_a_huge_allocation_is_refused():
    result = run_program("b = bytearray(10 * 1024**3)\nprint('allocated')\n", timeout_s=10, memory_mb=512)
    assert result.status in ("failed", "killed")
    assert "allocated" not in result.stdout
    if result.status == "failed":
        assert "MemoryError" in result.stderr


def test_an_outbound_connection_never_reaches_a_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        source = (
            "import socket, sys\n"
            "try:\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "    s.sendall(b'hello')\n"
            "except Exception as exc:\n"
            "    print('blocked:', type(exc).__name__, exc)\n"
            "    sys.exit(0)\n"
            "print('connected')\n"
            "sys.exit(1)\n"
        )
        result = run_program(source, timeout_s=10)
        assert result.status == "passed", (result.stdout, result.stderr)
        assert result.stdout.startswith("blocked:") and "connected" not in result.stdout
        readable, _, _ = select.select([listener], [], [], 0.5)
        assert readable == []
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_writing_to_the_real_home_is_refused():
    target = Path(os.path.expanduser("~")) / f"forge_sandbox_probe_{secrets.token_hex(4)}"
    assert not target.exists()
    try:
        result = run_program(f"open({str(target)!r}, 'w').write('pwned')\n", timeout_s=10)
        assert result.status == "failed"
        assert "PermissionError" in result.stderr
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


@needs_kernel_isolation
def test_a_child_process_without_the_audit_hook_still_cannot_write_outside():
    target = Path(os.path.expanduser("~")) / f"forge_sandbox_probe_{secrets.token_hex(4)}"
    try:
        source = ("import subprocess\n"
                  f"r = subprocess.run(['sh', '-c', 'echo pwned > {target}'], capture_output=True, text=True)\n"
                  "print(r.returncode, r.stderr)\n")
        result = run_program(source, timeout_s=10, allow_spawn=True)
        assert result.status == "passed", result.stderr
        assert not result.stdout.startswith("0 ")
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_deleting_a_file_outside_is_refused(tmp_path: Path):
    victim = tmp_path / "keep_me.txt"
    victim.write_text("precious")
    for source in (f"import os\nos.remove({str(victim)!r})\n",
                   f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                   f"import os\nos.rename({str(victim)!r}, 'stolen.txt')\n",
                   f"import os\nos.symlink({str(tmp_path)!r}, 'link')\nos.remove('link/keep_me.txt')\n"):
        result = run_program(source, timeout_s=10)
        assert result.status == "failed", source
        assert "PermissionError" in result.stderr
        assert victim.read_text() == "precious"


def test_output_is_truncated():
    result = run_program("import sys\nsys.stdout.write('x' * 1_000_000)\n", timeout_s=10, max_output=1000)
    assert result.status == "passed" and result.stdout == "x" * 1000 and result.truncated


def test_the_file_size_limit_holds():
    result = run_program("open('big.bin', 'wb').write(b'0' * (8 << 20))\n", timeout_s=10, file_mb=1)
    assert result.status in ("failed", "killed")
