"""Drive the real OpenCode client (`opencode-ai` from npm) in tests.

    binary = install()                       # npm-installs opencode-ai@1.18.33 once into a persistent cache
    result = run(binary, project, config, "Write a Python function that adds two numbers.", timeout=120)
    assert result.returncode == 0
    answers = assistant_answers(result.db)   # [{"id", "text", "finish", "error", "tokens", ...}]

Isolation: every run gets fresh HOME, XDG_DATA_HOME, XDG_CONFIG_HOME and XDG_STATE_HOME folders, and
the environment loses every OPENCODE_* variable, the usual provider API keys and PWD, so the machine's
own OpenCode config, sessions and credentials are neither read nor touched. XDG_CACHE_HOME and npm's
cache are kept in persistent folders beside the install (`cache_root()`). `opencode run` retries
without end when the server answers with a 5xx (or a stream without finish_reason), so it always runs
under a timeout (and an optional `stop_when`), its whole process group killed when the time is up.

Facts about opencode-ai 1.18.33 this module relies on (checked against the real client):
- the npm package's postinstall hard-links the platform binary to `node_modules/opencode-ai/bin/opencode.exe`
  (`node_modules/.bin/opencode`); when install scripts are disabled the platform package's own
  `bin/opencode` is used instead;
- `@ai-sdk/openai-compatible` is built into the binary (nothing is fetched for it). In the background
  OpenCode npm-installs `@opencode-ai/plugin` into its config folder; `run` abandons that when it exits,
  and a failure (offline) is only logged;
- `opencode run` takes its working directory from $PWD (before the process's cwd);
- the database is `$XDG_DATA_HOME/opencode/opencode.db` (WAL mode; the -wal file is left un-checkpointed
  at exit, so readers must replay it: `assistant_answers` works on a private copy).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from forge_assets.files import locked

DEFAULT_VERSION = "1.18.33"
PACKAGE = "opencode-ai"
# Environment variables never passed to OpenCode: its own settings, and credentials of hosted providers.
_DROP_PREFIXES = ("OPENCODE", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_", "OPENROUTER_", "GROQ_", "MISTRAL_", "XAI_",
                  "DEEPSEEK_", "AWS_", "AZURE_", "GITHUB_TOKEN", "GH_TOKEN", "XDG_")


class OpenCodeUnavailable(RuntimeError):
    """OpenCode cannot be installed here (no npm, or npm/the registry failed)."""


def cache_root() -> Path:
    """The persistent cache of the test helpers: $FORGE_TEST_CACHE, else ~/.cache/forge-tests."""
    return Path(os.environ.get("FORGE_TEST_CACHE") or Path.home() / ".cache" / "forge-tests").expanduser()


def _platform_packages() -> list[str]:
    """The optional-dependency packages of opencode-ai that may hold this machine's binary, best first."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), platform.machine())
    return [f"opencode-{system}-{arch}{suffix}" for suffix in ("", "-baseline", "-musl", "-baseline-musl")]


def binary_version(binary: Path, timeout: float = 60) -> str | None:
    """What `opencode --version` prints (stripped), or None when it does not run."""
    with tempfile.TemporaryDirectory(prefix="opencode-version-") as tmp:
        try:
            proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, env=isolated_env(Path(tmp), Path(tmp) / "cache"))
        except (OSError, subprocess.TimeoutExpired):
            return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _find_binary(prefix: Path, version: str) -> Path | None:
    """The installed opencode binary under an npm prefix that reports `version`, or None."""
    candidates = [prefix / "node_modules" / ".bin" / "opencode"]
    candidates += [prefix / "node_modules" / pkg / "bin" / "opencode" for pkg in _platform_packages()]
    for c in candidates:
        if c.exists() and binary_version(c) == version:
            return c
    return None


def install(version: str = DEFAULT_VERSION, cache_dir: Path | None = None, timeout: float = 600) -> Path:
    """The `opencode` binary of opencode-ai@<version>, npm-installed (pinned, exact version) into
    `<cache>/npm/opencode-ai-<version>` unless it is there already; `opencode --version` is checked.

    Raises OpenCodeUnavailable when npm is missing or the install fails (the caller decides between
    skip and fail).
    """
    root = (cache_dir or cache_root()) / "npm"
    prefix = root / f"{PACKAGE}-{version}"
    with locked(root / f"{PACKAGE}-{version}.lock"):  # parallel test workers wait for each other
        found = _find_binary(prefix, version)
        if found is not None:
            return found
        npm = shutil.which("npm")
        if npm is None:
            raise OpenCodeUnavailable("npm is not installed (OpenCode is installed from the npm registry with npm).")
        # Install into a fresh folder and move it into place, so a killed install leaves no half tree.
        staging = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}-{version}-", dir=root))
        try:
            (staging / "package.json").write_text(json.dumps({"name": "forge-tests-opencode", "private": True}))
            proc = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--save-exact", "--no-package-lock", "--prefix", str(staging), f"{PACKAGE}@{version}"],
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
            if proc.returncode != 0:
                raise OpenCodeUnavailable(f"npm install {PACKAGE}@{version} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            if _find_binary(staging, version) is None:
                raise OpenCodeUnavailable(f"npm installed {PACKAGE}@{version} but no opencode binary in it prints {version!r} for --version.")
            if prefix.exists():
                shutil.rmtree(prefix)
            staging.chmod(0o755)
            staging.rename(prefix)
        except subprocess.TimeoutExpired:
            raise OpenCodeUnavailable(f"npm install {PACKAGE}@{version} took more than {timeout:.0f} s.") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        found = _find_binary(prefix, version)
        if found is None:  # the binary path moved with the folder: look it up again
            raise OpenCodeUnavailable(f"{prefix}: opencode binary missing after install.")
        return found


# -------------------------------------------------------------------------------------------------
# Running


@dataclass
class Result:
    """One `opencode run`: exit code (None when it was killed at the timeout), output, and where it wrote."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    db: Path  # $XDG_DATA_HOME/opencode/opencode.db (it may not exist if OpenCode failed early)
    home: Path  # the run's folder holding home/, data/, config/, state/, stdout.txt, stderr.txt
    command: list[str] = field(default_factory=list)
    stopped: bool = False  # killed because stop_when() became true

    @property
    def log_file(self) -> Path | None:
        """OpenCode's own log of this run ($XDG_DATA_HOME/opencode/log/*.log), when it wrote one."""
        logs = sorted((self.home / "data" / "opencode" / "log").glob("*.log"))
        return logs[-1] if logs else None

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file else ""

    def describe(self) -> str:
        """A report for assertion messages: exit, time, the tail of stdout/stderr and of OpenCode's log."""
        status = "timed out" if self.timed_out else "stopped (stop_when)" if self.stopped else f"exit {self.returncode}"
        return (f"opencode {status} after {self.seconds:.1f} s\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-3000:]}"
                f"\n--- log\n{self.log_text()[-4000:]}")


def _base_env(home: Path | None = None) -> dict[str, str]:
    # PWD/OLDPWD are dropped too: OpenCode takes its working directory from $PWD before the process's
    # cwd, so an inherited PWD would make it work (and run tools) in the caller's folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)
           and k not in ("PWD", "OLDPWD") and k.lower() != "npm_config_cache"}
    if home is not None:
        env["HOME"] = str(home)
    return env


def isolated_env(run_dir: Path, cache_home: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one run: fresh HOME/XDG_* folders under run_dir (created), XDG_CACHE_HOME
    persistent (default `<cache>/opencode-xdg-cache`), npm's cache persistent (`<cache>/npm-cache`:
    OpenCode npm-installs `@opencode-ai/plugin` into its config folder in the background, and would
    fetch it again into every fresh HOME), no OPENCODE_*/provider-key/PWD variables (run it with
    cwd= the project folder)."""
    dirs = {name: run_dir / name for name in ("home", "data", "config", "state")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    cache_home = cache_home or cache_root() / "opencode-xdg-cache"
    cache_home.mkdir(parents=True, exist_ok=True)
    env = _base_env(dirs["home"])
    env.update(XDG_DATA_HOME=str(dirs["data"]), XDG_CONFIG_HOME=str(dirs["config"]), XDG_STATE_HOME=str(dirs["state"]),
               XDG_CACHE_HOME=str(cache_home), npm_config_cache=str(cache_root() / "npm-cache"), NO_COLOR="1")
    env.update(extra or {})
    return env


def run(binary: Path, project_dir: Path, config: dict[str, Any], message: str, timeout: float = 120, *,
        run_dir: Path | None = None, cache_home: Path | None = None, env: dict[str, str] | None = None,
        args: tuple[str, ...] = (), stop_when: Callable[[], bool] | None = None) -> Result:
    """`opencode run <message>` in project_dir, with `config` written as the project's opencode.json.

    HOME and XDG_DATA/CONFIG/STATE_HOME are fresh folders under run_dir (default: a new temporary
    folder, kept so its database can be read), XDG_CACHE_HOME and npm's cache are persistent (see
    `isolated_env`); `env` adds variables. After `timeout` seconds, or as soon as `stop_when()` is
    true (polled twice a second: e.g. "the server answered with an error", which OpenCode would retry
    forever), the process group is killed and the Result says `timed_out` / `stopped`. `args` go
    before the message (e.g. ("--print-logs",) or ("--format", "json")).

    OpenCode's `run` quotes a message holding spaces: the user message it sends and stores is
    `"<message>"`, double quotes included.
    """
    project_dir = Path(project_dir).resolve()
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "opencode.json").write_text(json.dumps(config, indent=2) + "\n")
    run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="opencode-run-"))
    run_env = isolated_env(run_dir, cache_home, env)
    run_env["PWD"] = str(project_dir)  # see _base_env
    command = [str(binary), "run", *args, message]
    out_path, err_path = run_dir / "stdout.txt", run_dir / "stderr.txt"
    start = time.monotonic()
    timed_out = stopped = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(command, cwd=project_dir, env=run_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                if time.monotonic() - start > timeout:
                    timed_out = True
                    break
                if stop_when is not None and stop_when():
                    stopped = True
                    break
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            _kill_group(proc)  # on time-out, and children it left behind (e.g. the background npm install)
            proc.wait()
    killed = timed_out or stopped
    return Result(returncode=None if killed else proc.returncode, stdout=out_path.read_text(errors="replace"),
                  stderr=err_path.read_text(errors="replace"), seconds=time.monotonic() - start, timed_out=timed_out,
                  db=run_dir / "data" / "opencode" / "opencode.db", home=run_dir, command=command, stopped=stopped)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this module started for `proc` (it was made its own session's leader)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -------------------------------------------------------------------------------------------------
# Reading what it wrote


@contextmanager
def open_db_copy(db: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a private copy of an opencode.db with its -wal replayed (the original is not touched)."""
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no opencode database (did opencode start?)")
    with tempfile.TemporaryDirectory(prefix="opencode-db-") as tmp:
        copy = Path(tmp) / db.name
        shutil.copyfile(db, copy)
        for suffix in ("-wal",):
            side = db.with_name(db.name + suffix)
            if side.is_file():
                shutil.copyfile(side, copy.with_name(copy.name + suffix))
        conn = sqlite3.connect(copy)
        try:
            yield conn
        finally:
            conn.close()


def tables(db: Path) -> dict[str, int]:
    """Each table of an opencode.db with its row count."""
    with open_db_copy(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {n: conn.execute(f"SELECT count(*) FROM \"{n}\"").fetchone()[0] for n in names}


def assistant_answers(db: Path) -> list[dict[str, Any]]:
    """The assistant messages of an opencode.db (v1 `message`/`part` tables, as 1.18 writes them), in order:
    `{id, session_id, agent, model, finish, error, tokens, completed, text, parts}` where `text` joins
    the message's text parts and `parts` lists its part dicts (`{id, type, ...data}`)."""
    with open_db_copy(db) as conn:
        parts: dict[str, list[dict[str, Any]]] = {}
        for pid, mid, data in conn.execute("SELECT id, message_id, data FROM part ORDER BY message_id, id"):
            parts.setdefault(mid, []).append({"id": pid, **_loads(data)})
        out = []
        for mid, sid, data in conn.execute("SELECT id, session_id, data FROM message ORDER BY time_created, id"):
            d = _loads(data)
            if d.get("role") != "assistant":
                continue
            mine = parts.get(mid, [])
            out.append({
                "id": mid, "session_id": sid, "agent": d.get("agent") or d.get("mode"), "model": d.get("modelID"),
                "finish": d.get("finish"), "error": d.get("error"), "tokens": d.get("tokens"),
                "completed": (d.get("time") or {}).get("completed"),
                "text": "".join(p.get("text") or "" for p in mine if p.get("type") == "text"),
                "parts": mine,
            })
        return out


def _loads(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def provider_config(base_url: str, model: str, context: int = 8192, output: int = 256, provider: str = "forge",
                    tool_call: bool = True) -> dict[str, Any]:
    """An opencode.json for one local OpenAI-compatible model (the shape of the client notes' example)."""
    if not re.match(r"^https?://", base_url):
        raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {provider: {"npm": "@ai-sdk/openai-compatible", "name": "Forge", "options": {"baseURL": base_url},
                                "models": {model: {"name": model.split(":")[0], "tool_call": tool_call,
                                                   "limit": {"context": context, "output": output}}}}},
        "model": f"{provider}/{model}",
    }
