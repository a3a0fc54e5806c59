"""Run untrusted, model-generated Python programs in a throw-away sandbox. Imports no Dagster and no torch.

Two layers, each tested on its own against the same hostile programs (forge_assets_tests/test_evaluation/test_sandbox_escapes.py,
run as uid 65534):

1. **An OS boundary** (``available_isolation()["boundary"]``), which needs no root:
   - Linux, "namespaces": ``unshare`` (util-linux) puts the program in new mount, pid and network namespaces (plus
     a user namespace when not root, mapping the caller to root there). A setup step (``_NS_SETUP``) builds its
     filesystem on a tmpfs: /usr, /bin, /lib* and the interpreter's own install read-only, /etc/ld.so.cache and
     /etc/localtime read-only, five device nodes, a fresh /proc of the new pid namespace, and the program's folder,
     writable but nosuid/nodev/noexec; then the tmpfs goes read-only and the step chroots into it. The home folder,
     the artifact store, other users' files, the host's /tmp and /proc and every socket path are simply absent; the
     network namespace has only a downed loopback (127.0.0.1 is unreachable); the setup step stays as the pid
     namespace's init and reports the program's wait status, and when it dies the kernel kills every process left
     in the namespace. As root the program also runs as a fresh unprivileged uid (the kill sweep then covers
     processes that left the group). ``bubblewrap`` would do the same; it is not installed on the machines Forge is
     tested on, while util-linux is on every distribution, so Forge does these steps itself.
   - macOS, "sandbox-exec": a deny-by-default Seatbelt profile (``seatbelt_profile``): no network, file writes only
     in the program's folder, file reads only of the system's libraries, the interpreter's install and that
     folder (metadata stays readable for path lookups), exec of the interpreter only. Written against Apple's
     SBPL; not run by CI, which has no Mac.
   - Neither available: ``run_program`` raises ``SandboxUnavailable`` with the reason and the fix, and HumanEval is
     reported as skipped, unless the user opts in (``eval.humaneval.allow_hook_only: true``, isolation
     "boundary-or-hook"), which runs with the second layer alone (plus a separate uid and a network namespace where
     those work without the rest).
2. **A ``sys.addaudithook`` policy** installed by the bootstrap inside the child before the untrusted code (it cannot
   be removed; its state lives only in default arguments of functions whose code it refuses to let anyone replace).
   It refuses: writes, creation, removal, renames, chmod/chown/utime/truncate outside the folder (symlinks resolved;
   a relative path is judged from the cwd and from the folder's root, since the ``open`` event carries no dir_fd);
   opening a folder outside (so no dir_fd can point outside); ``os.link``, ``os.symlink`` (and ``os.mkfifo`` /
   ``os.mknod`` are deleted: no audit event covers them); importing sqlite3 (ATTACH and VACUUM INTO open files
   inside SQLite, with no audit event) and its extension loading; loading native code from anywhere but the
   interpreter's own folders; ctypes; spawning unless ``allow_spawn``; reading the caller's home folder and /root
   (unless it holds the interpreter) and another process's /proc entry; gc introspection; setrlimit; signalling
   other processes without a separate uid; and, without a network namespace, every ``socket.*`` event. The hook
   is defense in depth: native code the interpreter already has can get round it (a fresh ``posix`` module from
   ``_imp.create_builtin`` has mkfifo again), which is why it never runs alone unless asked.

The bootstrap also sets rlimits (CPU: SIGXCPU then SIGKILL a second later; address space; processes; file size;
no core; 256 fds), a 077 umask, and an environment of HOME/TMPDIR/TMP/TEMP (inside the folder) and LANG/LC_ALL
only; it closes a private status pipe (so the parent can tell setup failures from program failures) and runs the
program as ``__main__``. ``subprocess.Popen`` starts it without ``preexec_fn`` (safe from a threaded orchestrator),
in its own session and process group, which is SIGKILLed when the program ends or times out.

Cost: 0.14 s per HumanEval program here (0.09 s before the namespaces), measured on 20 canonical solutions.
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

__all__ = ["SandboxError", "SandboxResult", "SandboxUnavailable", "available_isolation", "run_program",
           "seatbelt_profile"]

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
    isolation: str = ""  # "namespaces" | "sandbox-exec" | "hook-only"


# --------------------------------------------------------------------------------------------------
# Code that runs inside the child.  The policy is compiled under _POLICY_FILENAME so the hook can
# recognise (and refuse changes to) its own functions.  No globals are used inside the functions:
# everything they need is bound as a default argument, which the program cannot rebind.
_POLICY = r'''
import posix as _posix
import stat as _stat


def resolve(path, dir_fd, follow, base=None, _lstat=_posix.lstat, _readlink=_posix.readlink, _getcwd=_posix.getcwd,
            _fspath=_posix.fspath, _islnk=_stat.S_ISLNK, _isinstance=isinstance, _int=int, _str=str,
            _bytes=bytes, _errors=(OSError, ValueError, TypeError)):
    """Absolute path with symlinks resolved (the last component only when follow); None for an fd.
    A relative path is taken from ``base`` when given, else from dir_fd (via /proc/self/fd), else from the cwd."""
    if path is None or _isinstance(path, _int):
        return None
    try:
        path = _fspath(path)
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            if base is not None:
                path = base + "/" + path
            elif _isinstance(dir_fd, _int) and dir_fd >= 0:
                    path = _readlink("/proc/self/fd/" + _str(dir_fd)) + "/" + path
            else:
                path = _getcwd() + "/" + path
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


def outside(path, dir_fd, follow, root, prefix, devices, base=None, _resolve=resolve):
    real = _resolve(path, dir_fd, follow, base)
    return real is not None and real != root and not real.startswith(prefix) and real not in devices


def under(real, prefixes, _startswith=str.startswith):
    for p in prefixes:
        if real == p or _startswith(real, p + "/"):
            return True
    return False


def private(real, own_pid, private_prefixes, readable, _under=under, _str=str):
    """Whether reading ``real`` is refused: the caller's home and Forge's data (unless part of the Python
    install or the sandbox), and another process's /proc entry (its environment, its open files)."""
    if real is None:
        return False
    if real.startswith("/proc/"):
        head = real[6:].split("/", 1)[0]
        if head.isdigit() and head != _str(own_pid):
            return True
    return _under(real, private_prefixes) and not _under(real, readable)


def make_hook(root, allow_spawn, block_network, guard_kill, private_prefixes, readable, native):
    spawn_events = frozenset(("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                              "subprocess.Popen", "os.startfile", "pty.spawn"))
    # sqlite3 as a whole: ATTACH and VACUUM INTO write files SQLite opens itself (no audit event), and extensions
    # are native code. ctypes: native code. _posixsubprocess: spawning without the os.* events.
    blocked = ("ctypes", "_ctypes", "sqlite3", "_sqlite3")
    blocked_imports = frozenset(blocked if allow_spawn else blocked + ("_posixsubprocess",))
    always_refused = frozenset(("resource.setrlimit", "resource.prlimit", "gc.get_objects", "gc.get_referrers",
                                "gc.get_referents", "sys.remote_exec", "os.link", "os.symlink",
                                "sqlite3.enable_load_extension", "sqlite3.load_extension"))
    path_names = frozenset(name for name, _ in _PATH_EVENTS)
    write_flags = _posix.O_WRONLY | _posix.O_RDWR | _posix.O_APPEND | _posix.O_CREAT | _posix.O_TRUNC
    dir_flags = getattr(_posix, "O_DIRECTORY", 0) | getattr(_posix, "O_PATH", 0)

    def hook(event, args, _root=root, _prefix=root + "/", _devices=frozenset(("/dev/null",)),
             _spawn=(None if allow_spawn else spawn_events), _imports=blocked_imports, _always=always_refused,
             _block_network=block_network, _guard_kill=guard_kill, _path_names=path_names, _path_events=_PATH_EVENTS,
             _write_flags=write_flags, _dir_flags=dir_flags, _outside=outside, _resolve=resolve, _private=private,
             _under=under, _private_prefixes=tuple(private_prefixes), _readable=tuple(readable), _native=tuple(native),
             _stat=_posix.stat, _isdir=_stat.S_ISDIR, _getpid=_posix.getpid, _isinstance=isinstance, _str=str,
             _int=int, _len=len, _type=type, _function=type(resolve), _refuse=PermissionError,
             _policy_file=_POLICY_FILENAME, _errors=(OSError, ValueError, TypeError)):
        if event == "open":
            path, mode, flags = args
            if path is None or _isinstance(path, _int):
                return  # an fd the program already holds
            if mode is None:  # os.open: flags tell
                writing = _isinstance(flags, _int) and (flags & _write_flags) != 0
                directory = _isinstance(flags, _int) and (flags & _dir_flags) != 0
            else:
                mode = _str(mode)
                writing = "w" in mode or "a" in mode or "x" in mode or "+" in mode
                directory = False
            # The event has no dir_fd: a relative path is judged from the cwd and from the sandbox's root, and a
            # dir_fd can only name a folder inside (opening a folder outside is refused below), so a relative path
            # that stays inside from the root stays inside from any folder within it.
            if writing:
                if (_outside(path, -1, True, _root, _prefix, _devices)
                        or _outside(path, -1, True, _root, _prefix, _devices, _root)):
                    raise _refuse("forge sandbox: writing outside the sandbox directory is not allowed: " + _str(path))
                return
            real = _resolve(path, -1, True)
            if _outside(path, -1, True, _root, _prefix, _devices):
                if not directory:
                    try:
                        directory = _isdir(_stat(real).st_mode)
                    except _errors:
                        directory = False
                if directory:
                    raise _refuse("forge sandbox: opening a folder outside the sandbox directory is not allowed "
                                  "(its fd would let dir_fd reach outside): " + _str(path))
            if _private(real, _getpid(), _private_prefixes, _readable):
                raise _refuse("forge sandbox: reading private files is not allowed: " + _str(path))
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
        elif event == "os.listdir" or event == "os.scandir":
            if args and _private(_resolve(args[0], -1, True), _getpid(), _private_prefixes, _readable):
                raise _refuse("forge sandbox: listing private folders is not allowed: " + _str(args[0]))
        elif event == "import":
            if args[0] in _imports:
                raise _refuse("forge sandbox: importing " + _str(args[0]) + " is not allowed")
            if _len(args) > 1 and args[1] is not None:  # native code: only the interpreter's own extension modules
                real = _resolve(args[1], -1, True)
                if real is None or not _under(real, _native):
                    raise _refuse("forge sandbox: loading native code from " + _str(args[1]) + " is not allowed")
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
    os.chdir(workdir)
    # The interpreter's own folders (before the sandbox folder joins sys.path): the only place native code may
    # be loaded from, and readable even where it lies under a private folder (a pyenv Python in the home).
    native = sorted({os.path.realpath(p) for p in sys.path if p})
    readable = native + sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
                                os.path.realpath(workdir)})
    if cfg["hook"]:  # off only in the tests that prove the OS boundary holds on its own
        import posix
        for name in ("mkfifo", "mknod"):  # no audit event covers them: they are taken away
            for module in (os, posix):
                if hasattr(module, name):
                    delattr(module, name)
        policy = {"__name__": "forge_sandbox_policy", "_POLICY_FILENAME": cfg["policy_filename"]}
        exec(compile(cfg["policy"], cfg["policy_filename"], "exec"), policy)
        sys.addaudithook(policy["make_hook"](os.path.realpath(workdir), cfg["allow_spawn"], cfg["block_network"],
                                             cfg["guard_kill"], cfg["private"], readable, native))
        del policy, posix
    del native, readable
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

# Runs first inside the new namespaces (as root there: real root, or the caller mapped to root in a user namespace),
# with the host's filesystem still in view. It builds the sandbox's filesystem on a tmpfs: the system's program and
# library folders and the interpreter's install read-only, a few device nodes, a fresh /proc (of the new pid namespace),
# and the program's folder, writable but noexec; then the tmpfs itself goes read-only, the process chroots into it and
# execs the sandboxed interpreter (nothing of this setup, ctypes included, survives the exec).
_NS_SETUP = r"""
import ctypes, json, os, sys
cfg = json.loads(sys.argv[1])
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
ST_FLAGS = ((1, MS_RDONLY), (2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, 1024), (2048, 2048), (4096, 1 << 21))
libc = ctypes.CDLL(None, use_errno=True)


def fail(message):
    try:
        os.write(cfg["status_fd"], ("error: the sandbox's filesystem view: " + message).encode("utf-8", "replace"))
    finally:
        os._exit(121)


def mount(source, target, fstype, flags, data=None):
    enc = lambda v: None if v is None else v.encode("utf-8", "surrogateescape")
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (source, target, os.strerror(err)))


def locked(path):
    # a bind mount made in a user namespace must keep its source's nosuid/nodev/noexec/ro/atime flags on remount
    have = os.statvfs(path).f_flag
    return sum(ms for st, ms in ST_FLAGS if have & st)


def bind(source, target, extra):
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | extra | locked(source))


try:
    os.umask(0o022)
    new = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates back to the host
    mount("forge-sandbox", new, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m,nr_inodes=4096")
    for kind, path, target in cfg["view"]:
        dest = new + path
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if kind == "link":
            os.symlink(target, dest)
        elif kind == "dir":
            os.makedirs(dest, exist_ok=True)
            bind(path, dest, MS_RDONLY | MS_NOSUID)
        else:  # "file" (read-only) or "dev" (a device node: writable, as /dev/null must be)
            open(dest, "w").close()
            bind(path, dest, MS_NOSUID | MS_NOEXEC | (MS_RDONLY if kind == "file" else 0))
    box = cfg["box"]
    os.makedirs(new + box, exist_ok=True)
    bind(box, new + box, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(new + "/proc", exist_ok=True)
    mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount(None, new, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(new)
    os.chdir("/")
    os.set_inheritable(cfg["status_fd"], True)
except BaseException as exc:
    fail(repr(exc))
# This process stays as the pid namespace's init: it reaps, and reports the program's wait status on exit_fd
# (unshare cannot pass on a death by signal). When it dies, the kernel kills everything left in the namespace.
argv, exit_fd = cfg["argv"], cfg["exit_fd"]
child = os.fork()
if child == 0:
    try:
        os.close(exit_fd)
        os.execve(argv[0], argv, dict(os.environ))
    finally:
        os._exit(127)
os.close(cfg["status_fd"])
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        os._exit(120)
    except InterruptedError:
        continue
    if pid == child:
        os.write(exit_fd, str(status).encode())
        os._exit(0)
"""

# --------------------------------------------------------------------------------------------------
_iso_lock = threading.Lock()
_iso_cache: tuple | None = None
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


_SBIN_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SANDBOX_EXEC = "/usr/bin/sandbox-exec"
_ALLOW_HOOK_ONLY_FIX = ("or, accepting that only Python's audit hook then stands between the program and your files, "
                        "set eval.humaneval.allow_hook_only: true in forge.yaml")
_hook_lock = threading.Lock()
_hook_cache: dict | None = None


def _base_python() -> str:
    """The interpreter the sandbox runs: this one's base (a virtualenv's python is a link to it), links resolved."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe if os.path.exists(exe) else sys.executable)


def _python_dirs(python: str) -> list[str]:
    """Folders the interpreter's install needs in view: its prefix, and its own folder when outside that."""
    dirs: list[str] = []
    for d in (os.path.realpath(sys.base_prefix), os.path.dirname(python)):
        if not any(d == x or d.startswith(x + "/") for x in dirs):
            dirs = [x for x in dirs if not x.startswith(d + "/")] + [d]
    return dirs


def _private_prefixes(extra=()) -> list[str]:
    """Folders whose files the audit hook refuses to read (the namespaces and sandbox-exec hide them anyway)."""
    out: list[str] = []
    for p in (os.path.expanduser("~"), "/root", *extra):
        real = os.path.realpath(str(p))
        if real != "/" and real not in out:
            out.append(real)
    return out


def _linux_view(python: str) -> list[list[str]]:
    """What the program's filesystem holds besides its folder: [kind, path, link target]."""
    view: list[list[str]] = []
    bound: list[str] = []
    for top in _SYSTEM_DIRS:
        if os.path.islink(top):
            view.append(["link", top, os.readlink(top)])
        elif os.path.isdir(top):
            view.append(["dir", top, ""])
            bound.append(top)
    for d in _python_dirs(python):
        if not any(d == b or d.startswith(b + "/") for b in bound) and os.path.isdir(d):
            view.append(["dir", d, ""])
            bound.append(d)
    view += [["file", f, ""] for f in _SYSTEM_FILES if os.path.isfile(f)]
    view += [["dev", d, ""] for d in _DEVICES if os.path.exists(d)]
    return view


def _namespace_plan() -> tuple[dict | None, str | None]:
    """Linux: unshare (util-linux) into new user (unless root), mount, pid and network namespaces; probed by running
    a program through the whole chain. Returns (plan, None) or (None, the reason with the fix)."""
    unshare = shutil.which("unshare", path=_SBIN_PATH)
    if unshare is None:
        return None, ("util-linux's `unshare` is not installed, so the sandbox has no namespaces. Fix: install "
                      "util-linux (apt install util-linux, dnf install util-linux), " + _ALLOW_HOOK_ONLY_FIX)
    root = os.geteuid() == 0
    python = _base_python()
    flags = ["--net", "--mount", "--pid", "--fork", "--kill-child"]
    plan = {
        "kind": "namespaces", "command": [unshare, *flags] if root else [unshare, "--user", "--map-root-user", *flags],
        "setup_python": python, "python": python, "view": _linux_view(python), "separate_uid": root,
        "kill_python": None, "netns_command": None, "network_isolation": "netns", "netns": True,
    }
    probe = ("import json, os\n"
             "print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid(), 'net': os.stat('/proc/self/ns/net').st_ino, "
             "'top': sorted(os.listdir('/')), 'uid': os.getuid()}))\n")
    try:
        result = _execute(probe, plan, timeout_s=30, cpu_s=10, memory_mb=1024, max_procs=64, max_output=65536,
                          file_mb=1, allow_spawn=False, private=[])
        seen = json.loads(result.stdout) if result.status == "passed" else None
    except (SandboxError, ValueError, OSError) as exc:
        text = str(exc).strip()
        detail = text.splitlines()[-1][:400] if text else type(exc).__name__
        hint = ("Fix: run Forge where namespaces are permitted (a container's default seccomp profile refuses "
                "unshare), " if root else
                "unprivileged user namespaces look disabled (kernel.unprivileged_userns_clone=0, or Ubuntu's "
                "kernel.apparmor_restrict_unprivileged_userns=1). Fix: allow them (sudo sysctl -w "
                "kernel.apparmor_restrict_unprivileged_userns=0), ")
        return None, f"the namespace sandbox could not start ({detail}): {hint}{_ALLOW_HOOK_ONLY_FIX}"
    if seen is None:
        return None, (f"the namespace sandbox's probe program failed ({result.stderr.strip()[-300:]}). "
                      f"Fix: report this as a Forge bug, {_ALLOW_HOOK_ONLY_FIX}")
    expected = sorted({p.split("/")[1] for _, p, _ in plan["view"]} | {"proc", _tmp_top()})
    problems = []
    if (seen["pid"], seen["ppid"]) != (2, 1):  # the namespace's init (pid 1) started the program
        problems.append(f"pid {seen['pid']} (parent {seen['ppid']}) is not 2 (parent 1): no pid namespace")
    if seen["net"] == _netns_inode():
        problems.append("the network namespace is the host's")
    if seen["top"] != expected:
        problems.append(f"the root folder holds {seen['top']}, not {expected}")
    if root and seen["uid"] == 0:
        problems.append("the program ran as root")
    if problems:
        return None, ("the namespace sandbox did not isolate: " + "; ".join(problems)
                      + ". Fix: report this as a Forge bug, " + _ALLOW_HOOK_ONLY_FIX)
    return plan, None


def _tmp_top() -> str:
    return os.path.realpath(tempfile.gettempdir()).split("/")[1]


def seatbelt_profile(workdir: str, python: str, read_dirs: list[str], allow_spawn: bool) -> str:
    """macOS sandbox-exec profile: deny by default, no network, writes only in ``workdir``, reads only the system's
    libraries, the interpreter's install and ``workdir`` (not the home folder; metadata of other paths stays readable
    for path lookups)."""
    def q(path: str) -> str:
        return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'

    reads = ["/System", "/usr/lib", "/usr/share", "/private/var/db/dyld", "/Library/Apple/usr/libexec/oah",
             *read_dirs, workdir]
    lines = [
        "(version 1)",
        "(deny default)",
        "(allow process-exec)" if allow_spawn else f"(allow process-exec (literal {q(python)}))",
        *(["(allow process-fork)"] if allow_spawn else []),
        "(allow signal (target self))",
        "(allow sysctl-read)",
        "(allow file-read-metadata)",
        "(allow file-read* " + " ".join(f"(subpath {q(p)})" for p in reads)
        + " " + " ".join(f"(literal {q(d)})" for d in _DEVICES) + ")",
        f"(allow file-write* (subpath {q(workdir)}) (literal \"/dev/null\"))",
        "(deny network*)",
    ]
    return "\n".join(lines) + "\n"


def _seatbelt_plan() -> tuple[dict | None, str | None]:
    if not os.path.exists(SANDBOX_EXEC):
        return None, f"{SANDBOX_EXEC} is missing. Fix: run on a stock macOS, {_ALLOW_HOOK_ONLY_FIX}"
    python = _base_python()
    plan = {"kind": "sandbox-exec", "python": python, "read_dirs": _python_dirs(python), "separate_uid": False,
            "kill_python": None, "netns_command": None, "network_isolation": "sandbox-exec", "netns": False}
    try:
        result = _execute("print('ok')\n", plan, timeout_s=30, cpu_s=10, memory_mb=1024, max_procs=64,
                          max_output=4096, file_mb=1, allow_spawn=False, private=[])
    except SandboxError as exc:
        return None, (f"sandbox-exec could not start Python ({str(exc)[-300:]}). Fix: report this as a Forge bug, "
                      f"{_ALLOW_HOOK_ONLY_FIX}")
    if result.stdout.strip() != "ok":
        return None, (f"sandbox-exec's probe failed ({result.stderr.strip()[-300:]}). Fix: report this as a Forge "
                      f"bug, {_ALLOW_HOOK_ONLY_FIX}")
    return plan, None


def _hook_only_plan() -> dict:
    """No OS boundary: the audit hook, plus a network namespace and a separate uid where those work alone."""
    global _hook_cache
    with _hook_lock:
        if _hook_cache is None:
            uid_python = _probe_uid_python()
            python = uid_python or sys.executable
            netns_command = _probe_netns(python) if sys.platform.startswith("linux") else None
            _hook_cache = {"kind": "hook-only", "python": python, "separate_uid": uid_python is not None,
                           "kill_python": uid_python, "netns_command": netns_command, "netns": netns_command is not None,
                           "network_isolation": "netns" if netns_command is not None else "socket-blocked"}
        return dict(_hook_cache)


def _boundary() -> tuple[dict | None, str | None]:
    global _iso_cache
    with _iso_lock:
        if _iso_cache is None:
            if sys.platform.startswith("linux"):
                _iso_cache = _namespace_plan()
            elif sys.platform == "darwin":
                _iso_cache = _seatbelt_plan()
            else:
                _iso_cache = (None, f"Forge knows no OS sandbox for {sys.platform}. Fix: run evaluation on Linux or "
                                    f"macOS, {_ALLOW_HOOK_ONLY_FIX}")
        return _iso_cache


def available_isolation() -> dict:
    """What the sandbox uses here (probed once, then cached).

    Keys: ``platform``; ``root``; ``boundary`` ("namespaces" on Linux, "sandbox-exec" on macOS, None when neither
    works); ``boundary_problem`` (why not, with the fix; None when there is one); ``python`` (the interpreter the
    sandbox runs); ``separate_uid`` (the program runs as a fresh uid: root only); ``netns`` (the network is cut by a
    namespace); ``network_isolation`` ("netns", "sandbox-exec" or, hook only, "socket-blocked"); ``mount_view`` and
    ``pid_namespace`` (the program sees only its folder and read-only system folders; its own pid namespace).
    Without a boundary the other keys describe the hook-only mode, which runs only when asked for.
    """
    plan, problem = _boundary()
    mode = plan or _hook_only_plan()
    return {
        "platform": sys.platform, "root": os.geteuid() == 0,
        "boundary": plan["kind"] if plan else None, "boundary_problem": problem,
        "python": mode["python"], "separate_uid": mode["separate_uid"], "netns": mode["netns"],
        "network_isolation": mode["network_isolation"],
        "mount_view": bool(plan and plan["kind"] == "namespaces"),
        "pid_namespace": bool(plan and plan["kind"] == "namespaces"),
    }


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


def _kill_uid(uid: int, python: str | None, deadline_s: float = 10.0) -> None:
    """Kill every process that runs as ``uid``: kill(-1) as that uid (atomic against forks; skipped without an
    interpreter that runs as that uid), then sweep /proc."""
    if not processes_of_uid(uid):
        return
    try:
        if python is None:
            raise OSError("no interpreter runs as the uid")
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


class SandboxUnavailable(SandboxError):
    """No OS boundary works on this machine, and running with the audit hook alone was not asked for."""


ISOLATION_MODES = ("boundary", "boundary-or-hook", "hook-only")


def run_program(source: str, *, timeout_s: float = 10.0, cpu_s: int = 10, memory_mb: int = 1024, max_procs: int = 64,
                max_output: int = 65536, file_mb: int = 64, allow_spawn: bool = False, isolation: str = "boundary",
                private_paths: tuple = (), _audit_hook: bool = True) -> SandboxResult:
    """Run ``source`` as a Python program in a sandbox and report how it ended (see the module docstring).

    ``isolation``: "boundary" (the default) needs the OS boundary (namespaces on Linux, sandbox-exec on macOS) and
    raises SandboxUnavailable, with the reason and the fix, where there is none; "boundary-or-hook" falls back to the
    audit hook alone (the user's explicit opt-in); "hook-only" skips the boundary (to test the second layer).
    ``allow_spawn`` lets the program start processes, which then run without the audit hook: only inside the
    namespaces, or hook-only with both a network namespace and a separate uid. ``private_paths``: folders, besides the
    home folder, whose files the audit hook refuses to read. ``_audit_hook=False`` (tests only, and only with the
    boundary) leaves the hook out, to prove the OS boundary holds on its own.
    """
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {ISOLATION_MODES}, not {isolation!r}")
    plan = None
    if isolation != "hook-only":
        plan, problem = _boundary()
        if plan is None and isolation == "boundary":
            raise SandboxUnavailable(f"no OS sandbox boundary on this machine: {problem}")
    if not _audit_hook and plan is None:
        raise SandboxError("the audit hook can only be left out inside the OS boundary")
    if plan is None:
        plan = _hook_only_plan()
        if allow_spawn and not (plan["netns"] and plan["separate_uid"]):
            raise SandboxError("allow_spawn without an OS boundary needs both a network namespace and a separate uid, "
                               "and this machine lacks one")
    return _execute(source, plan, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, max_procs=max_procs,
                    max_output=max_output, file_mb=file_mb, allow_spawn=allow_spawn,
                    private=_private_prefixes(private_paths), hook=_audit_hook)


def _execute(source: str, plan: dict, *, timeout_s: float, cpu_s: int, memory_mb: int, max_procs: int,
             max_output: int, file_mb: int, allow_spawn: bool, private: list[str], hook: bool = True) -> SandboxResult:
    kind = plan["kind"]
    python = plan["python"]
    uid = _allocate_uid() if plan["separate_uid"] else None
    base = tempfile.gettempdir()
    if uid is not None and kind == "hook-only" and not _world_traversable(base):
        base = "/tmp"
    outer = os.path.realpath(tempfile.mkdtemp(prefix="forge-sandbox-", dir=base))
    workdir = os.path.join(outer, "box")
    status_r, status_w = os.pipe()
    out_r = err_r = exit_r = exit_w = None
    proc = None
    try:
        home, tmp = os.path.join(workdir, "home"), os.path.join(workdir, "tmp")
        for path in (workdir, home, tmp):
            os.mkdir(path, 0o700)
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(source)
        os.chmod(os.path.join(workdir, "main.py"), 0o644)
        if uid is not None:
            for path in (workdir, home, tmp):
                os.chown(path, uid, uid)
            if kind == "hook-only":
                os.chmod(outer, 0o711)  # the uid must reach its folder through this one
        if kind == "namespaces":
            os.mkdir(os.path.join(outer, "root"), 0o700)
        cfg = {
            "status_fd": status_w,
            "workdir": workdir,
            "uid": uid,
            "netns_inode": _netns_inode() if plan["netns"] else None,
            "allow_spawn": allow_spawn,
            "block_network": not plan["netns"],
            "guard_kill": uid is None,
            "private": list(private),
            "hook": bool(hook),
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
        # Only what Python needs: no variable of the caller's environment reaches the program.
        env = {"HOME": home, "TMPDIR": tmp, "TMP": tmp, "TEMP": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if allow_spawn:
            env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        inner = [python, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)]
        if kind == "namespaces":
            exit_r, exit_w = os.pipe()
            setup = {"root": os.path.join(outer, "root"), "view": plan["view"], "box": workdir, "argv": inner,
                     "status_fd": status_w, "exit_fd": exit_w}
            cmd = plan["command"] + ["--", plan["setup_python"], "-I", "-S", "-c", _NS_SETUP, json.dumps(setup)]
        elif kind == "sandbox-exec":
            cmd = [SANDBOX_EXEC, "-p", seatbelt_profile(workdir, python, plan["read_dirs"], allow_spawn), *inner]
        else:
            cmd = list(plan["netns_command"] or []) + inner
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        started = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                    pass_fds=(status_w,) if exit_w is None else (status_w, exit_w),
                                    start_new_session=True, close_fds=True)
        finally:
            os.close(out_w)
            os.close(err_w)
            os.close(status_w)
            status_w = None
            if exit_w is not None:
                os.close(exit_w)
                exit_w = None
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
            # everything still in the group (all of it on timeout); in the namespaces, the death of the pid
            # namespace's first process takes every other process of the namespace with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        returncode = proc.wait()
        seconds = time.monotonic() - started
        if uid is not None:
            _kill_uid(uid, plan["kill_python"])
        for reader in readers:
            reader.join(timeout=10)
        status_msg = _read_all(status_r)
        status_r = None
        if exit_r is not None:  # the namespace's init reports the program's own wait status
            reported = _read_all(exit_r)
            exit_r = None
            if reported.strip().isdigit():
                raw = int(reported)
                returncode = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
    finally:
        for fd in (status_r, status_w, out_r, err_r, exit_r, exit_w):
            if fd is not None:
                os.close(fd)
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if uid is not None:
            _kill_uid(uid, plan["kill_python"])
            _release_uid(uid)
        _force_rmtree(outer)

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
                         network_isolation=plan["network_isolation"], uid=uid, pid=proc.pid,
                         truncated=bool(truncated), isolation=kind)


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
