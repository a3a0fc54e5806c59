"""Run untrusted, model-generated Python programs in a throw-away sandbox. Imports no Dagster and no torch.

``run_program(source)`` writes the program into a fresh temporary directory and starts
``[unshare --net --] <python> -I -c BOOTSTRAP <config>`` with ``subprocess.Popen`` (no ``preexec_fn``,
so it is safe to call from a threaded orchestrator; ``start_new_session=True`` puts the child in its own
session and process group).  The bootstrap runs *inside* the child, before the untrusted code, and:

1. sets its own rlimits: RLIMIT_CPU (SIGXCPU, then SIGKILL one second later), RLIMIT_AS (so a huge
   allocation raises MemoryError), RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_CORE=0, RLIMIT_NOFILE;
2. when the caller is root, drops to a fresh unprivileged uid/gid (a random uid in
   ``[1_700_000_000, 1_701_000_000)`` that no process is using, supplementary groups cleared).
   As root RLIMIT_NPROC is not enforced by the kernel; as that uid it is, and because the uid is unique
   to this run the count covers exactly the sandbox's own processes.  The uid is also what really keeps
   the program from writing or deleting anything outside its directory (the directory is chowned to it;
   everything else it sees is owned by root or by other users and is not writable by "others").
   After the run every process of that uid is killed (``kill(-1)`` from a helper running as the uid, then
   a /proc sweep with pidfds), so a child that escaped the process group with ``setsid`` does not survive.
   Side effect: a root-only interpreter (pyenv under /root, mode 0700) cannot import its stdlib as that
   uid, so ``available_isolation()`` probes the candidates (sys.executable, /usr/bin/python3, ...) and
   uses the first that works as the sandbox uid: on a root container whose Python lives in /root, the
   sandbox runs the system ``/usr/bin/python3``;
3. installs a ``sys.addaudithook`` policy (cannot be removed once installed; its state lives only in
   default arguments of functions whose code the hook refuses to let anyone replace): it refuses
   opening for writing, creating, removing, renaming, chmod/chown/utime/truncate of paths outside the
   sandbox directory (symlinks resolved), spawning (os.fork/forkpty/exec*/posix_spawn/spawn*/system,
   subprocess.Popen and importing _posixsubprocess) unless ``allow_spawn``, ctypes (import and events),
   gc.get_objects/get_referrers/get_referents, resource.setrlimit/prlimit, signalling other processes
   when no separate uid is in use, and, when there is no network namespace, every ``socket.*`` event
   (creation, connect, bind, DNS lookups: this covers ``socket.socket``, ``create_connection`` and
   ``_socket`` alike, which replacing module attributes would not);
4. closes a private status pipe (so the parent can tell setup failures from program failures) and runs
   the program as ``__main__``.

Network isolation, in order of preference: a new, empty network namespace (``unshare --net``, or
``unshare --user --map-root-user --net`` when not root; it has only a downed loopback, so even
127.0.0.1 is unreachable) -> ``network_isolation="netns"``; otherwise the audit-hook socket block ->
``"socket-blocked"``.

What works on the machine this was written on (root in a Firecracker container, kernel 6.18, cgroup v1):
``unshare --net`` works (netns); switching to an unused uid works (separate uid), but the pyenv Python under
/root cannot run as that uid, so the sandbox uses /usr/bin/python3 (3.11.2); a pids cgroup
(/sys/fs/cgroup/pids) is writable too and is reported by ``available_isolation()``, but is not used:
the unique uid + RLIMIT_NPROC already bounds and lets us reap every process of a run, without
touching cgroups that other tenants of the machine may manage.

The audit hook is defense in depth, not a security boundary on its own (CPython audit hooks can be
evaded by native code); the kernel-enforced parts are the uid, the netns and the rlimits.  Without root
(no separate uid) the write/spawn protection rests on the audit hook alone.
With ``allow_spawn`` (only offered with netns + separate uid) child processes run without the hook, so only
the uid protects the filesystem: they can still create files in world-writable places such as /tmp.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

__all__ = ["SandboxError", "SandboxResult", "available_isolation", "run_program"]

_UID_BASE = 1_700_000_000
_UID_SPAN = 1_000_000
_POLICY_FILENAME = "<forge-sandbox-policy>"


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a failure of the program under test)."""


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "killed"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    network_isolation: str  # "netns" | "socket-blocked"
    uid: int | None = None  # the unprivileged uid the program ran as, None when it ran as the caller
    pid: int | None = None  # the sandbox's session / process-group leader
    truncated: bool = False  # stdout or stderr was cut at max_output bytes


# --------------------------------------------------------------------------------------------------
# Code that runs inside the child.  The policy is compiled under _POLICY_FILENAME so the hook can
# recognise (and refuse changes to) its own functions.  No globals are used inside the functions:
# everything they need is bound as a default argument, which the program cannot rebind.
_POLICY = r'''
import posix as _posix
import stat as _stat


def resolve(path, dir_fd, follow, _lstat=_posix.lstat, _readlink=_posix.readlink, _getcwd=_posix.getcwd,
            _fspath=_posix.fspath, _islnk=_stat.S_ISLNK, _isinstance=isinstance, _int=int, _str=str,
            _bytes=bytes, _errors=(OSError, ValueError, TypeError)):
    """Absolute path with symlinks resolved (the last component only when follow); None for an fd."""
    if path is None or _isinstance(path, _int):
        return None
    try:
        path = _fspath(path)
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            if _isinstance(dir_fd, _int) and dir_fd >= 0:
                base = _readlink("/proc/self/fd/" + _str(dir_fd))
            else:
                base = _getcwd()
            path = base + "/" + path
    except _errors:
        return "/"  # unresolvable: treat as outside
    todo = path.split("/")
    todo.reverse()
    out = []
    hops = 0
    while todo:
        name = todo.pop()
        if name == "" or name == ".":
            continue
        if name == "..":
            if out:
                out.pop()
            continue
        if not follow and not [p for p in todo if p != "" and p != "."]:
            out.append(name)
            break
        candidate = "/" + "/".join(out + [name])
        try:
            st = _lstat(candidate)
        except _errors:
            out.append(name)
            continue
        if _islnk(st.st_mode):
            hops += 1
            if hops > 40:
                return "/"
            try:
                target = _readlink(candidate)
            except _errors:
                return "/"
            if target.startswith("/"):
                out = []
            more = target.split("/")
            more.reverse()
            todo.extend(more)
        else:
            out.append(name)
    return "/" + "/".join(out)


_PATH_EVENTS = (
    # event, ((path arg index, dir_fd arg index or -1, follow symlinks), ...)
    ("os.remove", ((0, 1, False),)),
    ("os.rmdir", ((0, 1, False),)),
    ("os.mkdir", ((0, 2, False),)),
    ("os.rename", ((0, 2, False), (1, 3, False))),
    ("os.link", ((1, 3, False),)),
    ("os.symlink", ((1, 2, False),)),
    ("os.chmod", ((0, 2, True),)),
    ("os.chown", ((0, 3, True),)),
    ("os.utime", ((0, 3, True),)),
    ("os.truncate", ((0, -1, True),)),
    ("os.setxattr", ((0, -1, True),)),
    ("os.removexattr", ((0, -1, True),)),
    ("shutil.rmtree", ((0, -1, False),)),
    ("shutil.move", ((0, -1, False), (1, -1, False))),
    ("shutil.copyfile", ((1, -1, True),)),
    ("shutil.copymode", ((1, -1, True),)),
    ("shutil.copystat", ((1, -1, True),)),
    ("shutil.copytree", ((1, -1, True),)),
    ("shutil.unpack_archive", ((1, -1, True),)),
    ("sqlite3.connect", ((0, -1, True),)),
)


def outside(path, dir_fd, follow, root, prefix, devices, _resolve=resolve):
    real = _resolve(path, dir_fd, follow)
    return real is not None and real != root and not real.startswith(prefix) and real not in devices


def make_hook(root, allow_spawn, block_network, guard_kill):
    spawn_events = frozenset(("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                              "subprocess.Popen", "os.startfile", "pty.spawn"))
    blocked_imports = frozenset(("ctypes", "_ctypes") if allow_spawn else ("ctypes", "_ctypes", "_posixsubprocess"))
    always_refused = frozenset(("resource.setrlimit", "resource.prlimit", "gc.get_objects", "gc.get_referrers",
                                "gc.get_referents", "sys.remote_exec"))
    path_names = frozenset(name for name, _ in _PATH_EVENTS)
    write_flags = _posix.O_WRONLY | _posix.O_RDWR | _posix.O_APPEND | _posix.O_CREAT | _posix.O_TRUNC

    def hook(event, args, _root=root, _prefix=root + "/", _devices=frozenset(("/dev/null",)),
             _spawn=(None if allow_spawn else spawn_events), _imports=blocked_imports, _always=always_refused,
             _block_network=block_network, _guard_kill=guard_kill, _path_names=path_names, _path_events=_PATH_EVENTS,
             _write_flags=write_flags, _outside=outside, _getpid=_posix.getpid, _isinstance=isinstance, _str=str,
             _int=int, _len=len, _type=type, _function=type(resolve), _refuse=PermissionError,
             _policy_file=_POLICY_FILENAME):
        if event == "open":
            path, mode, flags = args
            if mode is None:
                writing = _isinstance(flags, _int) and (flags & _write_flags) != 0
            else:
                mode = _str(mode)
                writing = "w" in mode or "a" in mode or "x" in mode or "+" in mode
            if writing and _outside(path, -1, True, _root, _prefix, _devices):
                raise _refuse("forge sandbox: writing outside the sandbox directory is not allowed: " + _str(path))
        elif event in _path_names:
            for name, specs in _path_events:
                if name == event:
                    for index, fd_index, follow in specs:
                        if index < _len(args):
                            dir_fd = args[fd_index] if 0 <= fd_index < _len(args) else None
                            if _outside(args[index], dir_fd, follow, _root, _prefix, _devices):
                                raise _refuse("forge sandbox: " + event + " outside the sandbox directory is not "
                                              "allowed: " + _str(args[index]))
                    break
        elif event == "import":
            if args[0] in _imports:
                raise _refuse("forge sandbox: importing " + _str(args[0]) + " is not allowed")
        elif event in _always or event.startswith("ctypes."):
            raise _refuse("forge sandbox: " + event + " is not allowed")
        elif _spawn is not None and event in _spawn:
            raise _refuse("forge sandbox: starting processes (" + event + ") is not allowed")
        elif _block_network and event.startswith("socket."):
            raise _refuse("forge sandbox: network access (" + event + ") is not allowed")
        elif _guard_kill and (event == "os.kill" or event == "os.killpg"):
            if args[0] != _getpid():
                raise _refuse("forge sandbox: signalling other processes is not allowed")
        elif event == "object.__setattr__":
            target = args[0]
            if _type(target) is _function and target.__code__.co_filename == _policy_file:
                raise _refuse("forge sandbox: the sandbox policy cannot be changed")

    return hook
'''

_BOOTSTRAP = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
status_fd = cfg["status_fd"]


def fail(message):
    try:
        os.write(status_fd, ("error: " + message).encode("utf-8", "replace"))
    finally:
        os._exit(121)


try:
    os.umask(0o077)
    for name, soft, hard in cfg["rlimits"]:
        res = getattr(resource, name)
        cur_soft, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
        resource.setrlimit(res, (min(soft, hard), hard))
    uid = cfg["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid) or os.getgroups():
            fail("could not switch to uid %d" % uid)
    if cfg["netns_inode"] is not None and os.stat("/proc/self/ns/net").st_ino == cfg["netns_inode"]:
        fail("the network namespace was not replaced")
    workdir = cfg["workdir"]
    policy = {"__name__": "forge_sandbox_policy", "_POLICY_FILENAME": cfg["policy_filename"]}
    exec(compile(cfg["policy"], cfg["policy_filename"], "exec"), policy)
    sys.addaudithook(policy["make_hook"](os.path.realpath(workdir), cfg["allow_spawn"], cfg["block_network"],
                                         cfg["guard_kill"]))
    del policy
    with open(os.path.join(workdir, "main.py"), "rb") as f:
        source = f.read()
    import types
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(workdir, "main.py")
    main.__builtins__ = __builtins__
    sys.argv[:] = [main.__file__]
    sys.path.insert(0, workdir)
    os.write(status_fd, b"ok")
    os.close(status_fd)
except BaseException as exc:
    fail(repr(exc))
del cfg, status_fd, fail
sys.modules["__main__"] = main
exec(compile(source, main.__file__, "exec"), main.__dict__)
'''

_PROBE_UID_SNIPPET = r'''
import os, sys
uid = int(sys.argv[1])
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
import hashlib, json, decimal, fractions, statistics, heapq, bisect, itertools, functools, collections, re, math
import string, typing, random, datetime, copy, types, traceback, tempfile, io
print("ok", sys.version_info[0], sys.version_info[1])
'''

_KILL_UID_SNIPPET = r'''
import os, signal, sys
uid = int(sys.argv[1])
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
try:
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass
'''

# --------------------------------------------------------------------------------------------------
_iso_lock = threading.Lock()
_iso_cache: dict | None = None
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _netns_inode() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None


def _probe_netns(python: str) -> list[str] | None:
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    own = _netns_inode()
    if unshare is None or own is None:
        return None
    prefixes = [[unshare, "--net", "--"]] if os.geteuid() == 0 else []
    prefixes.append([unshare, "--user", "--map-root-user", "--net", "--"])
    code = "import os; print(os.stat('/proc/self/ns/net').st_ino)"
    for prefix in prefixes:
        try:
            out = subprocess.run(prefix + [python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=20,
                                 cwd="/", env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout.strip()) != own:
            return prefix
    return None


def _probe_uid_python() -> str | None:
    """The first interpreter that can run (and import its stdlib) as an unprivileged uid, or None."""
    if os.geteuid() != 0 or not hasattr(os, "setresuid"):
        return None
    candidates = []
    for path in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3",
                 f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"):
        if path and os.path.exists(path) and os.path.realpath(path) not in [os.path.realpath(c) for c in candidates]:
            candidates.append(path)
    uid = _allocate_uid()
    try:
        for path in candidates:
            try:
                out = subprocess.run([path, "-I", "-c", _PROBE_UID_SNIPPET, str(uid)], capture_output=True, text=True,
                                     timeout=30, cwd="/", env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError):
                continue
            if out.returncode == 0 and out.stdout.startswith("ok "):
                return path
    finally:
        _release_uid(uid)
    return None


def _probe_pids_cgroup() -> bool:
    v1 = "/sys/fs/cgroup/pids"
    if os.path.isdir(v1) and os.access(v1, os.W_OK):
        return True
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return "pids" in f.read().split() and os.access("/sys/fs/cgroup", os.W_OK)
    except OSError:
        return False


def available_isolation() -> dict:
    """Which isolation mechanisms work on this machine (probed once, then cached).

    Keys: ``root``, ``netns`` (bool), ``netns_command`` (the unshare prefix or None), ``separate_uid`` (bool),
    ``python`` (interpreter the sandbox runs), ``pids_cgroup`` (writable; reported, not used),
    ``network_isolation`` ("netns" or "socket-blocked").
    """
    global _iso_cache
    with _iso_lock:
        if _iso_cache is None:
            uid_python = _probe_uid_python()
            python = uid_python or sys.executable
            netns_command = _probe_netns(python)
            _iso_cache = {
                "root": os.geteuid() == 0,
                "netns": netns_command is not None,
                "netns_command": netns_command,
                "separate_uid": uid_python is not None,
                "python": python,
                "pids_cgroup": _probe_pids_cgroup(),
                "network_isolation": "netns" if netns_command is not None else "socket-blocked",
            }
        return {k: (list(v) if isinstance(v, list) else v) for k, v in _iso_cache.items()}


# --------------------------------------------------------------------------------------------------
def _proc_entries():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _uid_and_state(pid: int) -> tuple[int | None, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            uid, state = None, "?"
            for line in f:
                if line.startswith("State:"):
                    state = line.split()[1]
                elif line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    break
            return uid, state
    except (OSError, ValueError, IndexError):
        return None, "?"


def processes_of_uid(uid: int, *, include_zombies: bool = False) -> list[int]:
    """Pids whose real uid is ``uid`` (zombies left out unless asked)."""
    found = []
    for pid in _proc_entries():
        owner, state = _uid_and_state(pid)
        if owner == uid and (include_zombies or state not in ("Z", "X")):
            found.append(pid)
    return found


def _allocate_uid() -> int:
    with _uid_lock:
        while True:
            uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
            if uid not in _uids_in_use and not processes_of_uid(uid, include_zombies=True):
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _kill_uid(uid: int, python: str, deadline_s: float = 10.0) -> None:
    """Kill every process that runs as ``uid``: kill(-1) as that uid (atomic against forks), then sweep /proc."""
    if not processes_of_uid(uid):
        return
    try:
        subprocess.run([python, "-I", "-S", "-c", _KILL_UID_SNIPPET, str(uid)], timeout=20, cwd="/",
                       env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        pass
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            _kill_pid_if_uid(pid, uid)
        time.sleep(0.01)


def _kill_pid_if_uid(pid: int, uid: int) -> None:
    pidfd = None
    try:
        if hasattr(os, "pidfd_open"):
            pidfd = os.pidfd_open(pid)  # pins the process: the uid check below cannot race with pid reuse
        if _uid_and_state(pid)[0] != uid:
            return
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _drain(fd: int, limit: int, keep: bytearray, flags: dict, key: str) -> None:
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            room = limit - len(keep)
            if room > 0:
                keep += chunk[:room]
            if len(chunk) > max(room, 0):
                flags[key] = True
    except OSError:
        pass
    finally:
        os.close(fd)


def _world_traversable(path: str) -> bool:
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _force_rmtree(path: str) -> None:
    def onerror(func, target, _exc):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass
    shutil.rmtree(path, onerror=onerror)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def run_program(source: str, *, timeout_s: float = 10.0, cpu_s: int = 10, memory_mb: int = 1024, max_procs: int = 64,
                max_output: int = 65536, file_mb: int = 64, allow_spawn: bool = False) -> SandboxResult:
    """Run ``source`` as a Python program in a sandbox and report how it ended (see the module docstring).

    ``allow_spawn`` lets the program start processes (which then run without the audit hook); it is only
    permitted when both a network namespace and a separate uid are available.
    """
    iso = available_isolation()
    if allow_spawn and not (iso["netns"] and iso["separate_uid"]):
        raise SandboxError("allow_spawn needs both a network namespace and a separate uid, and this machine lacks one")
    python = iso["python"]
    uid = _allocate_uid() if iso["separate_uid"] else None
    base = tempfile.gettempdir()
    if uid is not None and not _world_traversable(base):
        base = "/tmp"
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="forge-sandbox-", dir=base))
    status_r, status_w = os.pipe()
    out_r = err_r = None
    proc = None
    try:
        home, tmp = os.path.join(workdir, "home"), os.path.join(workdir, "tmp")
        os.mkdir(home)
        os.mkdir(tmp)
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(source)
        os.chmod(os.path.join(workdir, "main.py"), 0o644)
        if uid is not None:
            for path in (workdir, home, tmp):
                os.chown(path, uid, uid)
        cfg = {
            "status_fd": status_w,
            "workdir": workdir,
            "uid": uid,
            "netns_inode": _netns_inode() if iso["netns"] else None,
            "allow_spawn": allow_spawn,
            "block_network": not iso["netns"],
            "guard_kill": uid is None,
            "policy": _POLICY,
            "policy_filename": _POLICY_FILENAME,
            "rlimits": [
                ["RLIMIT_CPU", int(cpu_s), int(cpu_s) + 1],
                ["RLIMIT_AS", int(memory_mb) << 20, int(memory_mb) << 20],
                ["RLIMIT_NPROC", int(max_procs), int(max_procs)],
                ["RLIMIT_FSIZE", int(file_mb) << 20, int(file_mb) << 20],
                ["RLIMIT_CORE", 0, 0],
                ["RLIMIT_NOFILE", 256, 256],
            ],
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "TMP": tmp, "TEMP": tmp,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        cmd = list(iso["netns_command"] or []) + [python, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        started = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                    pass_fds=(status_w,), start_new_session=True, close_fds=True)
        finally:
            os.close(out_w)
            os.close(err_w)
            os.close(status_w)
            status_w = None
        out_buf, err_buf, truncated = bytearray(), bytearray(), {}
        readers = [threading.Thread(target=_drain, args=(out_r, max_output, out_buf, truncated, "out"), daemon=True),
                   threading.Thread(target=_drain, args=(err_r, max_output, err_buf, truncated, "err"), daemon=True)]
        out_r = err_r = None  # the readers own and close them
        for reader in readers:
            reader.start()

        timed_out = False
        deadline = started + timeout_s
        delay = 0.001
        while True:
            # WNOWAIT: the exited leader stays a zombie, so its pid (= the pgid) cannot be reused before killpg
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                break
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.02)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # everything still in the group (all of it on timeout)
        except (ProcessLookupError, PermissionError):
            pass
        returncode = proc.wait()
        seconds = time.monotonic() - started
        if uid is not None:
            _kill_uid(uid, python)
        for reader in readers:
            reader.join(timeout=10)
        status_msg = _read_all(status_r)
        status_r = None
    finally:
        for fd in (status_r, status_w, out_r, err_r):
            if fd is not None:
                os.close(fd)
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if uid is not None:
            _kill_uid(uid, python)
            _release_uid(uid)
        _force_rmtree(workdir)

    stdout = bytes(out_buf).decode("utf-8", "replace")
    stderr = bytes(err_buf).decode("utf-8", "replace")
    if not timed_out and status_msg != b"ok":
        detail = status_msg.decode("utf-8", "replace") or stderr.strip()[-2000:]
        raise SandboxError(f"the sandbox could not be set up (exit {returncode}): {detail}")
    if timed_out:
        status = "timeout"
    elif returncode == 0:
        status = "passed"
    elif returncode < 0:
        status = "killed"
    else:
        status = "failed"
    return SandboxResult(status=status, returncode=returncode, stdout=stdout, stderr=stderr, seconds=seconds,
                         network_isolation=iso["network_isolation"], uid=uid, pid=proc.pid,
                         truncated=bool(truncated))


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
