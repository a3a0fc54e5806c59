"""`forge service install|uninstall|status`: the endpoint supervisor as a per-user service that survives a reboot.

Linux: a systemd **user** unit, ``~/.config/systemd/user/forge-endpoint.service`` (``$XDG_CONFIG_HOME`` if set);
macOS: a launchd agent, ``~/Library/LaunchAgents/dev.forge.endpoint.plist``. Both run

    <this Python> -m forge_assets.deploy.supervisor --state-dir <artifact_root>/deployment/_endpoint

and restart it when it fails. The render_* functions are pure; install() writes the file atomically and, when the
user's service manager is reachable, enables and starts it; otherwise it says the exact commands to run (and, on
Linux, ``loginctl enable-linger`` so that it starts at boot without a login).
"""

from __future__ import annotations

import contextlib
import json
import os
import plistlib
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from forge_assets.deploy import llama_server, supervisor
from forge_assets.files import atomic_write, atomic_write_json
from forge_assets.private import ensure_private_dir

UNIT = "forge-endpoint.service"
LABEL = "dev.forge.endpoint"
RESTART_SEC = 5
STOP_TIMEOUT_S = 60  # the supervisor stops the router and the model server (up to 10 s each), then SIGKILL
LIVE_STATES = ("running", "degraded", "starting", "initializing", "maintenance", "stopping")


class ServiceError(RuntimeError):
    """The service cannot be installed here; the message says why and, after `Fix:`, what to do."""


def platform_of(platform: str | None = None) -> str:
    """"linux" (systemd) or "darwin" (launchd)."""
    p = platform or sys.platform
    if p.startswith("linux"):
        return "linux"
    if p == "darwin":
        return "darwin"
    raise ServiceError(f"Forge installs its endpoint service with systemd (Linux) or launchd (macOS), not on {p}. Fix: run "
                       "`python -m forge_assets.deploy.supervisor --state-dir <artifact_root>/deployment/_endpoint` "
                       "with your system's service manager.")


def command(state_dir: Path, python: str | None = None) -> list[str]:
    """The supervisor's command line."""
    return [python or sys.executable, "-m", supervisor.MODULE, "--state-dir", str(Path(state_dir).absolute())]


def unit_path(platform: str | None = None, home: Path | None = None) -> Path:
    """Where the unit (Linux) or the agent's plist (macOS) is installed."""
    if platform_of(platform) == "darwin":
        return Path(home or Path.home()) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    config = Path(home) / ".config" if home is not None else Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "systemd" / "user" / UNIT


# ----------------------------------------------------------------------------------------------------------------
# systemd


def _no_newline(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ServiceError(f"a systemd unit cannot name a path with a line break in it ({text!r}). Fix: move the artifact root "
                           "(artifact_root in forge.yaml) to a path without one.")
    return text


def systemd_word(arg: str, *, executable: bool = False, env: bool = False) -> str:
    """One word of an ExecStart= (or Environment=) line as systemd reads it back to `arg`: `%` is a specifier (`%%`),
    `$` expands a variable in an argument (`$$`; not in the executable, nor in Environment=), and a word with
    white space, quotes, backslashes or `;` is double-quoted with C escapes."""
    text = _no_newline(arg).replace("%", "%%")
    if not executable and not env:
        text = text.replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _words(value: str) -> list[str]:
    """Split a line written with systemd_word() back into its words (quotes and C escapes undone, specifiers not)."""
    lexer = shlex.shlex(value, posix=True)
    lexer.whitespace_split, lexer.commenters, lexer.escapedquotes = True, "", '"'
    return list(lexer)


def exec_start_argv(unit_text: str) -> list[str]:
    """The argv an installed unit's ExecStart= line runs (as render_unit wrote it)."""
    line = next((ln for ln in unit_text.splitlines() if ln.startswith("ExecStart=")), None)
    if line is None:
        return []
    words = _words(line[len("ExecStart="):])
    return [w.replace("%%", "%") if i == 0 else w.replace("%%", "%").replace("$$", "$") for i, w in enumerate(words)]


def unit_environment(unit_text: str) -> dict[str, str]:
    """The variables an installed unit's Environment= lines set."""
    env = {}
    for ln in unit_text.splitlines():
        if ln.startswith("Environment="):
            for word in _words(ln[len("Environment="):]):
                name, _, value = word.replace("%%", "%").partition("=")
                env[name] = value
    return env


def render_unit(state_dir: Path, *, python: str | None = None, pythonpath: str | None = None) -> str:
    """The systemd user unit that runs the supervisor for state_dir."""
    state_dir = Path(state_dir).absolute()
    argv = command(state_dir, python)
    exec_start = " ".join(systemd_word(a, executable=(i == 0)) for i, a in enumerate(argv))
    env = [f"Environment={systemd_word('PYTHONUNBUFFERED=1', env=True)}"]
    if pythonpath:
        env.append(f"Environment={systemd_word(f'PYTHONPATH={pythonpath}', env=True)}")
    where = _no_newline(str(state_dir)).replace("%", "%%")  # WorkingDirectory= takes the path as written (no quotes)
    return "\n".join([
        "# Written by `forge service install`; remove it with `forge service uninstall`.",
        "[Unit]",
        f"Description=Forge endpoint (router and model server) for {where}",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={where}",
        *env,
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "UMask=0077",  # what the supervisor and the servers it starts write (state, logs, configs) is the owner's alone
        "KillMode=mixed",  # SIGTERM to the supervisor, which stops the router first; SIGKILL for anything left after it
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


# ----------------------------------------------------------------------------------------------------------------
# launchd


def render_plist(state_dir: Path, *, python: str | None = None, pythonpath: str | None = None) -> bytes:
    """The launchd agent that runs the supervisor for state_dir (XML plist)."""
    state_dir = Path(state_dir).absolute()
    env = {"PYTHONUNBUFFERED": "1", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    log = str(state_dir / supervisor.LOG)
    return plistlib.dumps({
        "Label": LABEL,
        "ProgramArguments": command(state_dir, python),
        "WorkingDirectory": str(state_dir),
        "EnvironmentVariables": env,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restarted when it fails, not after a clean stop
        "ThrottleInterval": RESTART_SEC,
        "Umask": 0o077,  # 63: what the supervisor and its servers write (state, logs, configs) is the owner's alone
        "ExitTimeOut": STOP_TIMEOUT_S,
        "StandardOutPath": log,
        "StandardErrorPath": log,
    })


# ----------------------------------------------------------------------------------------------------------------
# install, uninstall, status


def pythonpath_for(python: str | None = None) -> str | None:
    """The PYTHONPATH the service needs so that `python -m forge_assets…` imports this Forge from any folder: None when
    the interpreter finds it on its own (an installed package), else this checkout's folder (and today's PYTHONPATH)."""
    import forge_assets

    python = python or sys.executable
    here = Path(forge_assets.__file__).resolve()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([python, "-c", "import forge_assets; print(forge_assets.__file__)"], cwd="/", env=env,
                             check=False, capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip() and Path(out.stdout.strip()).resolve() == here:
            return None
    extra = [p for p in (os.environ.get("PYTHONPATH") or "").split(os.pathsep) if p and Path(p).is_dir()]
    return os.pathsep.join(dict.fromkeys([str(here.parent.parent), *(str(Path(p).absolute()) for p in extra)]))


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _run(cmd: list[str], home: Path | None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if home is not None:
        env["HOME"] = str(home)
        env.pop("XDG_CONFIG_HOME", None)
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def manager(platform: str | None = None, home: Path | None = None) -> tuple[bool, str]:
    """Whether the user's service manager can be reached now (systemctl --user / launchctl), and what it said."""
    if platform_of(platform) == "darwin":
        if not shutil.which("launchctl"):
            return False, "launchctl is not on PATH"
        out = _run(["launchctl", "print", f"gui/{os.getuid()}"], home)
        said = ((out.stderr or out.stdout).strip().splitlines() or [f"exit code {out.returncode}"])[0]
        return out.returncode == 0, "launchctl reachable" if out.returncode == 0 else f"launchctl print gui/{os.getuid()}: {said}"
    if not shutil.which("systemctl"):
        return False, "systemctl is not on PATH"
    out = _run(["systemctl", "--user", "is-system-running"], home)
    said = (out.stdout.strip() or out.stderr.strip() or f"exit code {out.returncode}").splitlines()[0]
    return said in LIVE_STATES, f"systemctl --user is-system-running: {said}"


def _systemctl(*args: str) -> list[str]:
    return ["systemctl", "--user", *args]


def _text(cmd: list[str]) -> str:
    return shlex.join(cmd)


def _linger_note() -> str | None:
    user = _user()
    if Path("/var/lib/systemd/linger", user).exists():
        return None
    return (f"so that it starts at boot, before you log in (and keeps running after you log out), enable lingering once: "
            f"loginctl enable-linger {user}")


def install(state_dir: Path, *, platform: str | None = None, home: Path | None = None, activate: bool = True,
            python: str | None = None, log=print) -> dict:
    """Write the unit (or plist) for state_dir atomically and, with activate and a reachable manager, enable and start it;
    otherwise log the exact commands to run. Returns {path, platform, started, ran, commands, notes, replaced}."""
    plat = platform_of(platform)
    state_dir = Path(state_dir).absolute()
    path = unit_path(plat, home)
    pythonpath = pythonpath_for(python)
    text = render_plist(state_dir, python=python, pythonpath=pythonpath) if plat == "darwin" else \
        render_unit(state_dir, python=python, pythonpath=pythonpath).encode()
    old = path.read_bytes() if path.is_file() else None
    replaced = _installed_for(path) if old is not None else None
    ensure_private_dir(state_dir)  # the unit's working directory: 0700, and service.json below 0600
    atomic_write(path, text)  # 0600: the user's own service manager reads it as the user
    atomic_write_json(state_dir / supervisor.SERVICE, {"platform": plat, "path": str(path), "command": command(state_dir, python),
                                                       "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log(f"wrote {path}" + (" (unchanged)" if old == text else ""))
    if replaced and Path(replaced) != state_dir:
        log(f"it replaces the service that served {replaced}")
    notes, ran, commands = [], [], []
    if plat == "darwin":
        domain, target = f"gui/{os.getuid()}", f"gui/{os.getuid()}/{LABEL}"
        # bootout first: a loaded agent keeps running its old plist (it fails harmlessly when none is loaded)
        commands = [["launchctl", "bootout", target], ["launchctl", "enable", target], ["launchctl", "bootstrap", domain, str(path)]]
    else:
        user_wants = path.parent / "default.target.wants" / UNIT
        # restart (which also starts it) when the file changed, so that a running service runs the new one
        commands = [_systemctl("daemon-reload"), _systemctl("enable", UNIT),
                    _systemctl("restart" if old is not None and old != text else "start", UNIT)]
        if (note := _linger_note()) is not None:
            notes.append(note)
    reachable, why = manager(plat, home) if activate else (False, "not asked to start it")
    if plat == "darwin" and reachable and _run(["launchctl", "print", commands[0][2]], home).returncode != 0:
        commands = commands[1:]  # nothing loaded: nothing to boot out
    started = False
    if activate and reachable:
        for cmd in commands:
            out = _run(cmd, home)
            ran.append({"command": _text(cmd), "returncode": out.returncode, "output": (out.stderr or out.stdout).strip()})
            if out.returncode != 0:
                raise ServiceError(f"`{_text(cmd)}` failed ({ran[-1]['output'] or f'exit code {out.returncode}'}); {path} is written. "
                                   f"Fix: run it yourself and see `forge service status`.")
        started = True
        log(f"started: {' && '.join(c['command'] for c in ran)}")
    else:
        if plat == "linux" and activate and shutil.which("systemctl"):
            # `enable` only links the unit into default.target.wants: it works without a running manager, so the
            # service starts with the user's manager at the next boot (with lingering) or login.
            out = _run(_systemctl("enable", UNIT), home)
            ran.append({"command": _text(_systemctl("enable", UNIT)), "returncode": out.returncode, "output": (out.stderr or out.stdout).strip()})
            if out.returncode == 0 and (user_wants.is_symlink() or user_wants.exists()):
                log(f"enabled: {user_wants} (it starts with your user's systemd)")
        log(f"not started now ({why}). Start it with:\n  " + "\n  ".join(_text(c) for c in commands))
    for note in notes:
        log(note)
    return {"path": str(path), "platform": plat, "state_dir": str(state_dir), "started": started, "ran": ran,
            "commands": [_text(c) for c in commands], "notes": notes, "replaced": replaced, "manager": why}


def _installed_for(path: Path) -> str | None:
    """The state dir an installed unit or plist serves (the word after --state-dir), or None."""
    with contextlib.suppress(OSError, ValueError, plistlib.InvalidFileException):
        argv = (plistlib.loads(path.read_bytes()).get("ProgramArguments") or [] if path.suffix == ".plist"
                else exec_start_argv(path.read_text()))
        if "--state-dir" in argv and argv.index("--state-dir") + 1 < len(argv):
            return argv[argv.index("--state-dir") + 1]
    return None


def uninstall(state_dir: Path | None = None, *, platform: str | None = None, home: Path | None = None, activate: bool = True,
              log=print) -> dict:
    """Stop and disable the service (when the manager is reachable) and remove its file; the deployment record stays
    (the supervisor keeps server.json when it stops), so `forge run` serves it again as before the service."""
    plat = platform_of(platform)
    path = unit_path(plat, home)
    served = _installed_for(path) if path.is_file() else None
    reachable, why = manager(plat, home) if activate else (False, "not asked to stop it")
    ran, commands = [], []
    if plat == "darwin":
        commands = [["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"]]
    else:
        commands = [_systemctl("disable", "--now", UNIT)]
    if path.is_file() and activate and (reachable or plat == "linux" and shutil.which("systemctl")):
        # without a reachable systemd, `disable` still removes the default.target.wants link (no start at boot)
        cmd = commands[0] if reachable else _systemctl("disable", UNIT)
        out = _run(cmd, home)
        ran.append({"command": _text(cmd), "returncode": out.returncode, "output": (out.stderr or out.stdout).strip()})
    removed = path.is_file()
    path.unlink(missing_ok=True)
    if plat == "linux" and reachable and activate:
        out = _run(_systemctl("daemon-reload"), home)
        ran.append({"command": _text(_systemctl("daemon-reload")), "returncode": out.returncode, "output": out.stderr.strip()})
    for folder in {Path(p) for p in (served, state_dir) if p}:
        svc = folder / supervisor.SERVICE
        if svc.is_file() and (json.loads(svc.read_text() or "{}").get("path") == str(path)):
            svc.unlink()
    log(f"removed {path}" if removed else f"no service is installed ({path} does not exist)")
    if removed and not reachable and (state_dir is None or supervisor.running(state_dir)):
        log(f"the service manager cannot be reached from here ({why}); where it can, stop the running service with:\n  "
            + "\n  ".join(_text(c) for c in commands))
    return {"path": str(path), "platform": plat, "removed": removed, "served": served, "ran": ran,
            "commands": [_text(c) for c in commands], "manager": why}


def status(state_dir: Path, *, platform: str | None = None, home: Path | None = None) -> dict:
    """Whether the service is installed for state_dir (and up to date), enabled and running, and where its log is."""
    plat = platform_of(platform)
    state_dir = Path(state_dir).absolute()
    path = unit_path(plat, home)
    out: dict = {"platform": plat, "path": str(path), "installed": path.is_file(), "state_dir": str(state_dir)}
    if path.is_file():
        served = _installed_for(path)
        out["serves"] = served
        out["for_this_endpoint"] = served is not None and Path(served) == state_dir
        env: dict = {}
        with contextlib.suppress(OSError, ValueError, plistlib.InvalidFileException):
            env = (unit_environment(path.read_text()) if plat == "linux"
                   else plistlib.loads(path.read_bytes()).get("EnvironmentVariables") or {})
        pythonpath = (env if isinstance(env, dict) else {}).get("PYTHONPATH")
        argv = command(state_dir)
        rendered = render_plist(state_dir, pythonpath=pythonpath) if plat == "darwin" else render_unit(state_dir, pythonpath=pythonpath).encode()
        out["up_to_date"] = path.read_bytes() == rendered
        if not out["up_to_date"]:
            out["fix"] = f"run `forge service install` again (the installed file does not run {shlex.join(argv)} as this Forge would)"
    reachable, why = manager(plat, home)
    out["manager"] = why
    if plat == "linux" and shutil.which("systemctl"):
        out["enabled"] = _run(_systemctl("is-enabled", UNIT), home).stdout.strip() or "not-found"
        if reachable:
            out["active"] = _run(_systemctl("is-active", UNIT), home).stdout.strip()
        out["log"] = f"journalctl --user -u {UNIT}"
        if out["installed"] and (note := _linger_note()):
            out["linger"] = note
    elif plat == "darwin":
        if reachable:
            out["active"] = "loaded" if _run(["launchctl", "print", f"gui/{os.getuid()}/{LABEL}"], home).returncode == 0 else "not loaded"
        out["log"] = str(state_dir / supervisor.LOG)
    if (state_dir / llama_server.STATE).is_file():
        out["endpoint"] = llama_server.health(state_dir)["health"]
    rec = supervisor.record(state_dir)
    out["supervisor"] = {"running": supervisor.running(state_dir), "pid": (rec or {}).get("pid"),
                         "started_at": (rec or {}).get("started_at")}
    return out
