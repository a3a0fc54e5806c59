"""Hostile programs against the sandbox, run as a non-root user (which is how Forge runs on a Mac or a laptop).

Each escape that got through the audit hook alone (issue 22) is tried against both layers:
- "boundary": the OS boundary (Linux: user, mount, pid and network namespaces with a read-only view; what HumanEval uses);
- "hook-only": the audit hook alone (what runs only when a user opts in), which must refuse each of them too.

The programs run from a harness process that is not root: when the tests run as root (CI), the harness is started
as uid 65534 with the system's /usr/bin/python3 and a copy of sandbox.py (it imports only the standard library).
Every target lies in that user's own home and own folders, mode 0700/0600, so file permissions stop nothing: only
the sandbox does. After the run, nothing may have appeared or changed outside, and no secret may have been printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from forge_assets.evaluation import sandbox

NOBODY = 65534
SECRET = "forge-test-secret-" + "5d41402abc4b2a76b9719d911017c592"
ENV_SECRET = "forge-env-secret-" + "7c4a8d09ca3762af61e59520943dc264"


def _non_root_python() -> str | None:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                                   capture_output=True, text=True, user=NOBODY, group=NOBODY, extra_groups=[], cwd="/")
            if probe.stdout.strip() == "True":
                return candidate
    return None


HARNESS = r'''
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox
cases = json.load(sys.stdin)
out = {"isolation": sandbox.available_isolation(), "uid": os.geteuid(), "results": {}}
for case in cases:
    try:
        r = sandbox.run_program(case["source"], timeout_s=20, isolation=case["isolation"],
                                _audit_hook=case.get("hook", True))
        out["results"][case["id"]] = {"status": r.status, "stdout": r.stdout, "stderr": r.stderr[-3000:],
                                      "isolation": r.isolation}
    except sandbox.SandboxError as exc:
        out["results"][case["id"]] = {"status": "error", "stdout": "", "stderr": str(exc), "isolation": ""}
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def world():
    """A non-root user's world: its home with a 0600 key, a folder of its own outside the sandbox, a listener."""
    root = Path(tempfile.mkdtemp(prefix="forge-escape-", dir="/tmp"))
    os.chmod(root, 0o755)
    as_root = os.geteuid() == 0
    python = _non_root_python() if as_root else sys.executable
    if as_root and python is None:
        pytest.fail("no system Python runs as uid 65534 here: the non-root escape tests cannot run")
    home, out, tmp, code = root / "home", root / "out", root / "tmp", root / "code"
    for d in (home, home / ".ssh", out, tmp, code):
        d.mkdir(mode=0o700)
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    (out / "target.txt").write_text("original")
    for f in (home / ".ssh" / "id_rsa", out / "target.txt"):
        os.chmod(f, 0o600)
    shutil.copy(sandbox.__file__, code / "sandbox.py")
    (code / "harness.py").write_text(HARNESS)
    os.chmod(code, 0o755)
    for f in code.iterdir():
        os.chmod(f, 0o644)
    if as_root:
        for d in (home, home / ".ssh", home / ".ssh" / "id_rsa", out, out / "target.txt", tmp):
            os.chown(d, NOBODY, NOBODY)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    yield {"root": root, "home": home, "out": out, "tmp": tmp, "code": code, "python": python, "as_root": as_root,
           "port": listener.getsockname()[1], "listener": listener}
    listener.close()
    shutil.rmtree(root, ignore_errors=True)


def _cases(w) -> dict[str, str]:
    out, secret_file, port = str(w["out"]), str(w["home"] / ".ssh" / "id_rsa"), w["port"]
    target = str(w["out"] / "target.txt")
    report = ("\ndef attempt(what, fn):\n    try:\n        fn()\n        print('DONE', what)\n"
              "    except BaseException as exc:\n        print('REFUSED', what, type(exc).__name__, exc)\n")
    return {
        "dir_fd_write": report + "import os\n"
        f"attempt('dirfd', lambda: os.open('dirfd_escape', os.O_CREAT | os.O_WRONLY, dir_fd=os.open({out!r}, os.O_RDONLY)))\n"
        f"attempt('dirfd-path', lambda: os.open('dirfd_escape2', os.O_CREAT | os.O_WRONLY, dir_fd=os.open({out!r}, os.O_RDONLY | os.O_DIRECTORY)))\n",
        "hard_link": report + "import os\n"
        f"def go():\n    os.link({target!r}, 'l')\n    with open('l', 'a') as f:\n        f.write('pwned')\n"
        "attempt('link', go)\n",
        "symlink": report + "import os\n"
        f"def go():\n    os.symlink({out!r}, 'ln')\n    open('ln/via_symlink', 'w').write('pwned')\n"
        "attempt('symlink', go)\n",
        "mkfifo_mknod": report + "import os\n"
        f"attempt('mkfifo', lambda: os.mkfifo({out + '/fifo'!r}))\n"
        f"attempt('mknod', lambda: os.mknod({out + '/node'!r}))\n"
        "import posix\n"
        f"attempt('posix.mkfifo', lambda: posix.mkfifo({out + '/fifo2'!r}))\n",
        "sqlite_attach": report +
        "def go():\n    import sqlite3\n    c = sqlite3.connect(':memory:')\n"
        f"    c.execute(\"ATTACH '{out}/attached.db' AS x\")\n    c.execute('CREATE TABLE x.t(a)')\n    c.commit()\n"
        "attempt('attach', go)\n",
        "sqlite_vacuum_into": report +
        "def go():\n    import sqlite3\n    c = sqlite3.connect(':memory:')\n    c.execute('CREATE TABLE t(a)')\n"
        f"    c.execute(\"VACUUM INTO '{out}/vacuumed.db'\")\n"
        "attempt('vacuum', go)\n",
        "sqlite_extension": report +
        "def go():\n    import sqlite3\n    c = sqlite3.connect(':memory:')\n    c.enable_load_extension(True)\n"
        "    c.load_extension('./evil')\n"
        "attempt('extension', go)\n",
        "native_code_from_folder": report + "import importlib.machinery, importlib.util, shutil, _json\n"
        "def go():\n    shutil.copy(_json.__file__, 'evil.so')\n"
        "    loader = importlib.machinery.ExtensionFileLoader('_json', 'evil.so')\n"
        "    spec = importlib.util.spec_from_file_location('_json', 'evil.so', loader=loader)\n"
        "    importlib.util.module_from_spec(spec)\n    print('LOADED native code')\n"
        "attempt('native', go)\n",
        "read_private_file": report +
        f"attempt('read', lambda: print(open({secret_file!r}).read()))\n"
        f"attempt('list', lambda: print(__import__('os').listdir({str(w['home'])!r})))\n",
        "environment": report + "import os\nprint(sorted(os.environ.items()))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] if os.path.isdir('/proc') else []:\n"
        "    attempt('environ ' + pid, lambda: print(open('/proc/' + pid + '/environ').read()))\n"
        "attempt('parent environ', lambda: print(open('/proc/%d/environ' % os.getppid()).read()))\n",
        "network": report + "import socket\n"
        f"attempt('connect', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'hello'))\n",
        "plain_write_outside": report +
        f"attempt('write', lambda: open({out + '/plain.txt'!r}, 'w').write('pwned'))\n"
        f"attempt('append', lambda: open({target!r}, 'a').write('pwned'))\n",
    }


# Native code that slips past the audit hook (a fresh posix module from _imp has mkfifo again): only the OS
# boundary stands, so this one runs in boundary mode only.
def _kernel_only_cases(w) -> dict[str, str]:
    out = str(w["out"])
    return {"hook_bypass_mkfifo": "import _imp, importlib.util\n"
            "p = _imp.create_builtin(importlib.util.find_spec('posix'))\n"
            f"try:\n    p.mkfifo({out + '/bypass_fifo'!r})\n    print('DONE bypass')\n"
            "except OSError as exc:\n    print('REFUSED bypass', type(exc).__name__, exc)\n"}


def _run_harness(w, cases: list[dict]) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(w["home"]), "TMPDIR": str(w["tmp"]), "FORGE_TEST_SECRET": ENV_SECRET}
    kwargs = dict(user=NOBODY, group=NOBODY, extra_groups=[]) if w["as_root"] else {}
    proc = subprocess.run([w["python"], "-I", str(w["code"] / "harness.py")], input=json.dumps(cases),
                          capture_output=True, text=True, env=env, cwd=str(w["tmp"]), timeout=600, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def outcome(world):
    cases = [{"id": f"{mode}:{name}", "source": src, "isolation": mode}
             for mode in ("boundary", "hook-only") for name, src in _cases(world).items()]
    cases += [{"id": f"kernel-only:{name}", "source": src, "isolation": "boundary", "hook": False}
              for name, src in _cases(world).items()]
    cases += [{"id": f"boundary:{name}", "source": src, "isolation": "boundary"}
              for name, src in _kernel_only_cases(world).items()]
    return _run_harness(world, cases)


def _leftovers(w) -> list[str]:
    found = sorted(str(p.relative_to(w["root"])) for p in w["out"].rglob("*"))
    return [f for f in found if f != "out/target.txt"]


def test_the_harness_is_not_root_and_has_the_os_boundary(outcome):
    assert outcome["uid"] != 0
    iso = outcome["isolation"]
    assert iso["boundary"] == "namespaces", iso["boundary_problem"]
    assert iso["mount_view"] and iso["pid_namespace"] and iso["network_isolation"] == "netns"


ESCAPES = ["dir_fd_write", "hard_link", "symlink", "mkfifo_mknod", "sqlite_attach", "sqlite_vacuum_into",
           "sqlite_extension", "native_code_from_folder", "read_private_file", "environment", "network",
           "plain_write_outside"]


MODES = ["boundary", "hook-only", "kernel-only"]  # both layers (HumanEval's), the hook alone, the boundary alone


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ESCAPES)
def test_each_escape_is_refused_and_leaves_nothing_outside(world, outcome, mode, name):
    result = outcome["results"][f"{mode}:{name}"]
    assert result["status"] != "error", result["stderr"]
    assert result["isolation"] == ("hook-only" if mode == "hook-only" else "namespaces")
    stdout = result["stdout"]
    # /proc/<pid>/environ: a process may read its own; in the pid namespace only the sandbox's own processes exist
    # (its init holds the same few variables). What matters is that the caller's environment never shows (below),
    # and that the hook refuses the parent's where it is the caller's.
    if name == "environment":
        assert mode != "hook-only" or "REFUSED parent environ" in stdout, stdout
    else:
        assert "DONE" not in stdout, (stdout, result["stderr"])
    assert "LOADED" not in stdout
    assert SECRET not in stdout and SECRET not in result["stderr"]
    assert ENV_SECRET not in stdout and ENV_SECRET not in result["stderr"]
    assert _leftovers(world) == []
    assert (world["out"] / "target.txt").read_text() == "original"
    readable, _, _ = __import__("select").select([world["listener"]], [], [], 0)
    assert readable == []


def test_every_escape_was_attempted_and_refused(outcome):
    """The programs ran to their attempts (a crash before them would prove nothing)."""
    for mode in MODES:
        for name in ESCAPES:
            stdout = outcome["results"][f"{mode}:{name}"]["stdout"]
            assert "REFUSED" in stdout or name == "environment", (mode, name, stdout)


def test_the_environment_holds_only_what_python_needs(outcome):
    for mode in MODES:
        first = outcome["results"][f"{mode}:environment"]["stdout"].splitlines()[0]
        keys = {k for k, _ in eval(first)}  # the program printed sorted(os.environ.items())
        assert keys <= {"HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LC_ALL"}, keys


def test_the_kernel_holds_when_the_hook_is_bypassed(world, outcome):
    result = outcome["results"]["boundary:hook_bypass_mkfifo"]
    assert "REFUSED bypass" in result["stdout"], (result["stdout"], result["stderr"])
    assert _leftovers(world) == []


def test_without_a_boundary_nothing_runs_unless_asked(monkeypatch):
    monkeypatch.setattr(sandbox, "_boundary", lambda: (None, "no namespaces here. Fix: install util-linux"))
    with pytest.raises(sandbox.SandboxUnavailable, match="Fix: install util-linux"):
        sandbox.run_program("print('hi')\n")
    result = sandbox.run_program("print('hi')\n", isolation="boundary-or-hook")
    assert result.status == "passed" and result.isolation == "hook-only" and result.stdout == "hi\n"


def test_the_macos_profile_denies_by_default_and_allows_writes_only_in_the_folder():
    profile = sandbox.seatbelt_profile("/private/var/folders/x/forge-sandbox-1/box", "/usr/bin/python3",
                                       ["/Library/Frameworks/Python.framework/Versions/3.11"], allow_spawn=False)
    lines = profile.splitlines()
    assert lines[:2] == ["(version 1)", "(deny default)"]
    writes = [line for line in lines if line.startswith("(allow file-write")]
    assert writes == ['(allow file-write* (subpath "/private/var/folders/x/forge-sandbox-1/box") (literal "/dev/null"))']
    assert "(deny network*)" in lines and not any("network" in line and "allow" in line for line in lines)
    assert not any("/Users" in line for line in lines) and "(allow process-fork)" not in lines
    assert '(allow process-exec (literal "/usr/bin/python3"))' in lines
