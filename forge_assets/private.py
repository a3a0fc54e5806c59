"""Private by default: what Forge writes is its user's alone, and credentials in repository URLs are never shown.

**Modes.** Everything Forge writes (clones, the artifact store under ``artifact_root``, the shared base GGUFs, the
deployment state with its logs and client configs, ``~/.cache/forge``) is created 0700 (folders) / 0600 (files),
whatever umask the process was started with. Two mechanisms, both needed:

- ``private_umask()`` makes the process's umask at least 077. ``forge_assets/__init__.py`` calls it, so every process
  that runs Forge code (the ``forge`` CLI, the Dagster code location and its run workers, step subprocesses, the
  endpoint supervisor, the model server) has it before anything is written, and so does every child Forge spawns (git,
  llama.cpp, the server: a child inherits the umask). It only ever tightens the umask (``old | 077``), so one thread
  cannot loosen it under another. The helpers that create Forge's folders call it again (``ensure_private_dir``), so
  a process that changed its umask after importing Forge (a test under ``umask 022``) still writes privately.
- ``ensure_private_dir(path)`` creates a Forge root 0700 (parents included) and chmods an existing one to 0700, so a
  tree written by an earlier Forge (0755 folders, 0644 files) is locked too: nothing below a 0700 folder can be reached
  by another user, even a stray 0644 file. Only the root itself is chmodded, never the folders above it, never ``/``
  or the home folder, and never a folder another user owns.

Files that git writes read-only (pack and object files, 0444 & ~077 = 0400) and executables (0700) keep those
modes; neither has a group or other bit.

**Credentials in repository URLs** (``https://user:token@host/…``, ``https://oauth2:glpat-…@gitlab…``, a lone token as
the user ``https://ghp_…@github.com/…``). ``redact_url`` replaces the secret with ``***`` for anything shown (logs,
Dagster metadata, manifests, error messages); ``redact_text`` does the same to every URL in a free text (git's stderr).
For git itself, ``git_remote`` splits a URL into the URL without the secret and the credentials, and
``git_credential_env`` hands them to git *at fetch time* through an inline credential helper that reads them from the
git child's environment:

- the clone is made from the URL without the secret, so ``.git/config``'s ``remote.origin.url`` never holds the token
  (a clone made by an earlier Forge has its remote URL rewritten on the next fetch);
- the token is never on a command line (``ps`` shows other users every command line, and GitPython puts the command
  line in its exceptions), only in the environment of the git process (readable by the same user only);
- the user's own credential helpers are reset for that one git call (``credential.helper=`` first), so a keychain
  helper neither answers instead nor stores the token; the helper answers only for the URL's own host (a redirect to
  another host gets no credentials);
- a later incremental fetch works the same way: the token comes from forge.yaml each time, so rotating it there is
  enough. A manual ``git fetch`` in the clone asks for the password, as for any URL without one.

It needs git 2.31 or newer (``GIT_CONFIG_COUNT``); URLs without credentials (local paths, ``file://``, ssh with keys)
do not use it.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from urllib.parse import unquote

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
MASK = "***"

_umask_lock = threading.Lock()


def private_umask() -> int:
    """Make the process's umask at least 077 (group and others get no bits on anything created from now on, by this
    process or the children it starts); returns the umask now in force. Never loosens a stricter umask."""
    with _umask_lock:
        old = os.umask(PRIVATE_UMASK)
        new = old | PRIVATE_UMASK
        if new != PRIVATE_UMASK:
            os.umask(new)
        return new


def _never_chmod(path: Path) -> bool:
    """Folders Forge must never lock even if a setting points a root at them: / and the home folder (and above)."""
    try:
        resolved = path.resolve()
        home = Path.home().resolve()
    except (OSError, RuntimeError):
        return True
    return resolved == Path(resolved.anchor) or resolved == home or resolved in home.parents


def ensure_private_dir(path: Path | str) -> Path:
    """Create `path` (and missing parents) 0700 and make an existing one 0700, after private_umask(); returns it.

    For Forge's roots (the artifact root, the clone root, ``~/.cache/forge``): a root made by an earlier Forge, or by
    a process with a looser umask, is locked, so nothing below it is reachable by another user.
    """
    private_umask()
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        st = path.stat()
    except OSError:
        return path
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid() and not _never_chmod(path):
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077 | DIR_MODE)
    return path


def make_private(path: Path | str) -> None:
    """chmod one file 0600 (or folder 0700) that may have been created before the umask was set; symlinks left alone."""
    p = Path(path)
    try:
        st = p.lstat()
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        os.chmod(p, mode & ~0o077)


# ---------------------------------------------------------------------------------------------------------------
# credentials in URLs

_TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "gloas-", "glptt-", "gldt-", "glrt-",
                   "glcbt-", "glft-", "glimt-", "hf_", "ATBB", "ATCTT", "xoxb-", "xoxp-", "sk-", "npm_", "pypi-")
_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/?#]*)(?P<rest>.*)", re.S)
_SCP = re.compile(r"(?P<userinfo>[^@/:\s]+(?::[^@/\s]*)?)@(?P<rest>[^:/\s]+:.*)", re.S)
# in free text: scheme://userinfo@ (up to the authority's last @: a password may hold an unencoded one), and scp-like
# user:password@host: (ssh)
_TEXT_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"<>`]+)@")
_TEXT_SCP = re.compile(r"(?<![\w/.:@-])(?P<user>[A-Za-z0-9._-]+):(?P<password>[^\s@/'\"<>`]+)@(?P<host>[A-Za-z0-9.-]+:)")
_SECRET_PARAMS = (r"(?:access_token|private_token|token|api_key|apikey|key|secret|password|passwd|pwd|auth|sig|signature|credential"
                  r"|X-Amz-Signature|X-Amz-Credential)")
_QUERY_SECRET = re.compile(r"(?P<name>[?&;]" + _SECRET_PARAMS + r"=)(?P<value>[^&;#\s'\"<>`]+)", re.I)


def looks_like_token(user: str) -> bool:
    """Whether a URL's user (no password given) is really a token: a known token prefix, or a long string of letters
    and digits (``https://ghp_…@github.com``). Plain user names (git, oauth2, x-access-token, forge-user) are not."""
    u = unquote(user)
    if u.startswith(_TOKEN_PREFIXES):
        return True
    return len(u) >= 20 and re.fullmatch(r"[A-Za-z0-9_\-.~+/=]+", u) is not None and any(c.isdigit() for c in u) \
        and any(c.isalpha() for c in u)


def _redact_userinfo(userinfo: str) -> str:
    user, sep, _password = userinfo.partition(":")
    if user and looks_like_token(user):
        user = MASK
    if sep:
        return f"{user}:{MASK}" if user and user != MASK else MASK
    return user


def _redact_query(rest: str) -> str:
    return _QUERY_SECRET.sub(lambda m: m.group("name") + MASK, rest)


def redact_url(url: str) -> str:
    """The URL as it may be shown: a password (and a token given as the user) replaced by ``***``, secret query
    parameters (``?private_token=…``) too. Anything else (paths, ssh users, URLs without credentials) is unchanged.

    >>> redact_url("https://oauth2:glpat-abc@gitlab.com/g/p.git")
    'https://oauth2:***@gitlab.com/g/p.git'
    """
    if not isinstance(url, str) or not url:
        return url
    m = _SCHEME.fullmatch(url)
    if m:
        authority = m.group("authority")
        if "@" in authority:
            userinfo, host = authority.rsplit("@", 1)
            authority = f"{_redact_userinfo(userinfo)}@{host}"
        return m.group("scheme") + authority + _redact_query(m.group("rest"))
    m = _SCP.fullmatch(url)  # scp-like ssh: [user[:password]@]host:path
    if m:
        return f"{_redact_userinfo(m.group('userinfo'))}@{m.group('rest')}"
    return url


def redact_text(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with the credentials of every URL in it replaced by ``***`` (see redact_url), and each of `secrets` (as
    written, and percent-decoded) too: for git's stderr and exceptions, which quote URLs and command lines."""
    if not isinstance(text, str) or not text:
        return text
    out = _TEXT_USERINFO.sub(lambda m: m.group("scheme") + _redact_userinfo(m.group("userinfo")) + "@", text)
    out = _TEXT_SCP.sub(lambda m: f"{m.group('user')}:{MASK}@{m.group('host')}", out)
    out = _redact_query(out)
    for s in sorted({x for s in secrets if s for x in (s, unquote(s))}, key=len, reverse=True):
        if len(s) >= 4:  # a 1-3 character "secret" would mangle ordinary words; such a secret protects nothing anyway
            out = out.replace(s, MASK)
    return out


class GitCredentials:
    """A URL's credentials for git: user and password percent-decoded, the host (with port) they belong to."""

    def __init__(self, username: str, password: str, host: str, raw: tuple[str, ...]):
        self.username, self.password, self.host, self.raw = username, password, host, raw

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be shown: the password, and the user when it is a token (raw and decoded forms)."""
        return tuple(s for s in self.raw if s)

    def __repr__(self) -> str:  # never the secret itself, in a traceback or a debugger
        return f"GitCredentials(username={self.username if not looks_like_token(self.username) else MASK!r}, password={MASK!r}, host={self.host!r})"


def git_remote(url: str) -> tuple[str, GitCredentials | None]:
    """(the URL to give git and to store in the clone's config, the credentials to pass at fetch time or None).

    For http(s) URLs with a password or a token as the user, the URL keeps a plain user name (``oauth2@``) and loses
    the secret; everything else (ssh, file, local paths, URLs without credentials) is returned as it is, except that
    a password in an ssh URL (ssh never uses it) is dropped.
    """
    m = _SCHEME.fullmatch(url or "")
    if not m or "@" not in m.group("authority"):
        m2 = _SCP.fullmatch(url or "") if not m else None
        if m2 and ":" in m2.group("userinfo"):
            return f"{m2.group('userinfo').partition(':')[0]}@{m2.group('rest')}", None
        return url, None
    userinfo, host = m.group("authority").rsplit("@", 1)
    user, sep, password = userinfo.partition(":")
    token_user = looks_like_token(user)
    if not sep and not token_user:
        return url, None  # a plain user name, no secret
    scheme = m.group("scheme").lower()
    keep_user = "" if token_user else user
    clean = m.group("scheme") + (f"{keep_user}@" if keep_user else "") + host + m.group("rest")
    if not scheme.startswith(("http://", "https://")):
        return clean, None  # ssh://user:pw@ and the like: ssh authenticates with keys, not with a URL's password
    return clean, GitCredentials(unquote(user), unquote(password), host, (password, user if token_user else ""))


# git runs a helper given as "!<shell>" with `sh -c '<shell> get'`; it answers only `get`, and only for its own host
_HELPER = ('!f() { test "$1" = get || return 0; h=; while IFS= read -r l; do test -z "$l" && break; '
           'case "$l" in host=*) h="${l#host=}";; esac; done; test "$h" = "$FORGE_GIT_HOST" || return 0; '
           "printf 'username=%s\\npassword=%s\\n' \"$FORGE_GIT_USERNAME\" \"$FORGE_GIT_PASSWORD\"; }; f")


def git_credential_env(creds: GitCredentials | None, environ: dict | None = None) -> dict[str, str]:
    """Environment variables for one git child process that give it `creds` through an inline credential helper
    (GIT_CONFIG_COUNT/KEY/VALUE: nothing on the command line, nothing in a config file); {} for no credentials.
    Config that `environ` (default os.environ) already passes this way is kept."""
    if creds is None:
        return {}
    environ = os.environ if environ is None else environ
    try:
        n = int(environ.get("GIT_CONFIG_COUNT", "0") or 0)
    except ValueError:
        n = 0
    return {
        "GIT_CONFIG_COUNT": str(n + 2),
        f"GIT_CONFIG_KEY_{n}": "credential.helper", f"GIT_CONFIG_VALUE_{n}": "",  # reset the user's helpers: none stores it
        f"GIT_CONFIG_KEY_{n + 1}": "credential.helper", f"GIT_CONFIG_VALUE_{n + 1}": _HELPER,
        "FORGE_GIT_HOST": creds.host, "FORGE_GIT_USERNAME": creds.username, "FORGE_GIT_PASSWORD": creds.password,
        "GIT_TERMINAL_PROMPT": "0",  # wrong credentials fail at once instead of waiting for a terminal
    }
