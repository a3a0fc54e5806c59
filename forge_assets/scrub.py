"""Secret scrubbing: every text bound for a dataset or a session record passes through here first.

Two layers, both in-process and fast enough to run over every mined file (docs/scrubbing.md lists
what is covered, checked against gitleaks' rules and detect-secrets' plugins):

1. High-signal patterns over the whole text (so a 20,000+ character minified line is covered too):
   - private key blocks; vendor token formats: AWS, GitHub, GitLab, OpenAI, Anthropic, Slack (and
     ``xapp-``), Stripe (``sk_/rk_/pk_`` live/test, ``whsec_``), Google API keys and OAuth tokens
     (``ya29.``, ``1//0``), Hugging Face (``hf_``, ``api_org_``), npm, PyPI, SendGrid, JWT, Shopify
     (``shpat_ shpss_ shpca_ shppa_`` + 32 hex), DigitalOcean (``dop_v1_ doo_v1_ dor_v1_`` + 64 hex),
     Grafana (``glsa_``, ``glc_``, legacy ``eyJrIjoi``), HashiCorp Vault (``hvs. hvb. hvr.`` + 24 or
     more; legacy ``s.`` + 24 only after the word vault on its line), Databricks (``dapi`` + 32 hex),
     Sentry (``sntrys_``/``sntryu_``, DSN keys ``https://<32 hex>@...``), Azure (``AccountKey=``,
     ``SharedAccessKey=``, SAS ``sig=`` query parameters, URL-encoded base64 included);
   - credentials in URLs (``scheme://user:password@host``, the user may be empty and the password may
     hold ``@``) and connection strings (``...;Password=...;``);
   - Authorization headers with a literal credential anywhere (``Bearer <token>``, ``Basic <base64 of
     user:password>``, ``Authorization: token <t>``; ``Bearer {token}``/``${TOKEN}``/``<token>`` and
     f-strings stay) and secret-named ``curl -H`` headers;
   - passwords on command lines: ``--password=...``, ``mysql -p<pw>`` (``mysql -p`` prompts and
     stays), ``docker|podman|helm registry... login -p <pw>``, ``sshpass -p <pw>``, ``curl -u user:<pw>``
     (``"$USER:$PASS"`` stays);
   - YAML ``!!binary`` payloads under a secret-sounding key, or holding a secret or raw key bytes;
   - secret-named assignments in code, config and .env files (``DB_PASSWORD=...``, ``api_key: "..."``)
     and upper-case shell assignments mid-command (``SSHPASS=pw sshpass -e ...``, ``PGPASSWORD=pw psql``).
   Every pattern opens with a literal, so re skips ahead to it; the few that cannot run only when one
   of their literal needles occurs. Tokens with a vendor prefix (``ghp_ gho_ ghu_ ghs_ ghr_ github_pat_
   glpat- sk- sk-proj- sk-ant- hf_ npm_``) are caught at any length once 16 of the vendor's token
   characters follow the prefix, provided the prefix starts a token (no letter, digit or ``_`` before
   it) and the run looks machine-made (8+ letters/digits with a digit or both cases): ``task-list``,
   ``hf_hub_download`` and ``npm_config_cache`` stay. AWS key ids (``AKIA``/``ASIA``... + 16 or
   more of ``[A-Z0-9]``), Slack tokens (``xox[abposr]-`` + 10 or more) and webhook URLs
   (``hooks.slack.com/services|workflows|triggers/`` + 16 or more) need no such test.
2. detect-secrets 1.5.0's plugins, run line by line on the candidate lines cheap scans flag (a
   secret-sounding word, a long token, a URL with credentials, a quoted high-entropy string),
   with its heuristic false-positive filters. Its entropy plugins count only on lines that name a
   key (token, secret, password, ...): a bare hash or test vector is not a secret. Lines over 20,000
   characters are left to layer 1.

Every secret is replaced by ``[REDACTED_<TYPE>]`` and counted by type; the original never leaves.
``scrub_field`` also judges a value by the key it is stored under (``{"password": "hunter2"}`` in a
tool call's arguments, where the key is not part of the text). ``scrub_path`` scrubs a file path or
repository name (or URL) shown in a sample's header.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from itertools import pairwise
from typing import Callable, Iterable

REDACTED = "[REDACTED_"

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only, so offsets into the result are offsets into the text."""
    if text.isascii():
        return text.lower()
    try:  # bytes.lower() touches ASCII only and keeps UTF-8 intact: far faster than str.translate
        return text.encode("utf-8").lower().decode("utf-8")
    except UnicodeError:  # lone surrogates
        return text.translate(_ASCII_LOWER)


# Credentials with a known vendor prefix (ghp_, github_pat_, glpat-, sk-, sk-proj-, hf_, npm_, ...):
# the prefix must start a token (no letter, digit or "_" right before it: not "task-", "pnpm_"), be
# followed by at least MIN_TOKEN_BODY of the vendor's token characters (group "body"; the whole run
# is redacted, however long), and that run must look random (_random_body): a vendor's real token
# of any length qualifies, an identifier such as hf_hub_download or npm_config_cache does not.
MIN_TOKEN_BODY = 16
_RANDOM_SEGMENT = re.compile(r"[A-Za-z0-9]{8,}")


def _random_body(body: str) -> bool:
    """Whether a token body looks machine-made: a run of 8+ letters/digits (between "-"/"_") that holds
    a digit or both upper- and lower-case letters. Words ("learn-compatibility-shim") do not."""
    for m in _RANDOM_SEGMENT.finditer(body):
        seg = m.group(0)
        if any(c.isdigit() for c in seg) or (any(c.isupper() for c in seg) and any(c.islower() for c in seg)):
            return True
    return False


def _starts_token(lead: str, before: str = "A-Za-z0-9_") -> str:
    """``lead`` (a fixed-width regex) with no [before] character right before it. The literal comes
    first and the look-behind after it, so re can skip ahead to the literal: a pattern that opens
    with a look-behind is tried at every offset, some 20 times slower on a megabyte."""
    return rf"{lead}(?<![{before}]{lead})"


def _prefixed(lead: str, alphabet: str, rest: str = "") -> re.Pattern[str]:
    return re.compile(rf"(?P<secret>{_starts_token(lead)}{rest}(?P<body>[{alphabet}]{{{MIN_TOKEN_BODY},}}))")


def _vendor(lead: str, body: str, after: str = r"(?![A-Za-z0-9])") -> re.Pattern[str]:
    """A fixed-format vendor token: lead (fixed width, starting a token) + body, the whole of it the secret."""
    return re.compile(rf"(?P<secret>{_starts_token(lead)}{body}){after}")


# A command-line value: single-quoted, double-quoted or bare (groups sq, dq, secret; one is set).
_CLI_VALUE = r"""(?:'(?P<sq>[^'\n]+)'|"(?P<dq>[^"\n]+)"|(?P<secret>[^\s"';|&()`]+))"""
# The rest of a shell command on its line (or its backslash-continued lines), lazily.
_SAME_COMMAND = r"(?:[^\n;&|`)]|\\\n)*?"
# An Authorization value: RFC 6750's token68 characters.
_TOKEN68 = r"[A-Za-z0-9\-._~+/]{16,}=*(?![A-Za-z0-9\-._~+/=])"


def _scheme(word: str, value: str) -> re.Pattern[str]:
    """An Authorization scheme word (Bearer, Basic) starting a token, blanks, then its credential."""
    return re.compile(rf"{_starts_token(word)}[ \t]+(?P<secret>{value})")


_BASIC_VALUE = r"[A-Za-z0-9+/]{6,}={0,2}(?![A-Za-z0-9+/=\-_.])"
_AUTHORIZATION_VALUE = r"""["']?\s*[:=,]\s*["']?(?i:token|bot|sso-key|apikey|key)[ \t]+(?P<secret>""" + _TOKEN68 + ")"
_MYSQL_TAIL = r"(?:dump|admin|import|check|pump|show|sh|slap|binlog)?(?=[ \t])" + _SAME_COMMAND + r"[ \t]-p" + _CLI_VALUE

# (type, literal needles, pattern): the pattern runs only when a needle occurs in the text; its
# group "secret" (or "sq"/"dq" for a quoted command-line value, or the whole match) is what gets
# replaced, and _CHECKS[type], where there is one, must accept it. Every pattern opens with a
# literal (see _starts_token): most cost a substring test, the rest a fast skip to that literal.
PATTERNS: list[tuple[str, tuple[str, ...], re.Pattern[str]]] = [
    ("private_key", ("PRIVATE KEY",), re.compile(
        r"-{4,5} ?BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}"
        r"(?:[\s\S]*?-{4,5} ?END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}|[A-Za-z0-9+/=\s\\:,\-\"']*)")),
    ("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"), re.compile(
        r"(?P<secret>" + _starts_token("A", "A-Za-z0-9") + r"(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[0-9A-Z]{16,})(?![A-Za-z0-9])")),
    ("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), _prefixed(r"gh[pousr]_", "A-Za-z0-9")),
    ("github_token", ("github_pat_",), _prefixed(r"github_pat_", "A-Za-z0-9_")),
    ("gitlab_token", ("glpat-", "gldt-", "glrt-", "glptt-"), _prefixed(r"gl", r"A-Za-z0-9_\-", r"(?:pat|dt|rt|ptt)-")),
    ("anthropic_key", ("sk-ant-",), _prefixed(r"sk-ant-", r"A-Za-z0-9_\-")),
    ("openai_key", ("sk-",), _prefixed(r"sk-", r"A-Za-z0-9_\-", r"(?:proj-|svcacct-|admin-)?")),
    ("stripe_key", ("_live_", "_test_"), re.compile(r"(?P<secret>(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,})")),
    ("stripe_key", ("whsec_",), _vendor(r"whsec_", r"[A-Za-z0-9]{24,}")),
    ("slack_token", ("xox",), re.compile(r"(?P<secret>xox[abposr]-[A-Za-z0-9\-]{10,})")),
    ("slack_token", ("xapp-",), _vendor(r"xapp-", r"\d-[A-Z0-9]+-\d+-[a-z0-9]{32,}")),
    ("slack_webhook", ("hooks.slack.com",), re.compile(
        r"(?P<secret>https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]{16,})")),
    ("google_api_key", ("AIza",), re.compile(r"(?P<secret>AIza[0-9A-Za-z_\-]{35})")),
    # Google OAuth: access tokens (ya29.) and refresh tokens (1//0...).
    ("gcp_oauth_token", ("ya29.",), _vendor(r"ya29\.", r"[0-9A-Za-z_\-]{20,}", r"(?![0-9A-Za-z_\-])")),
    ("gcp_oauth_token", ("1//0",), re.compile(r"(?P<secret>" + _starts_token("1//0", r"\w/") + r"[0-9A-Za-z_\-]{30,})")),
    ("huggingface_token", ("hf_",), _prefixed(r"hf_", "A-Za-z0-9")),
    ("huggingface_token", ("api_org_",), _prefixed(r"api_org_", "A-Za-z0-9")),
    ("npm_token", ("npm_",), _prefixed(r"npm_", "A-Za-z0-9")),
    ("pypi_token", ("pypi-",), re.compile(r"(?P<secret>pypi-AgE[A-Za-z0-9_\-]{50,})")),
    ("sendgrid_key", ("SG.",), re.compile(r"(?P<secret>SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})")),
    ("shopify_token", ("shp",), _vendor(r"shp(?:at|ss|ca|pa)_", r"[a-fA-F0-9]{32}")),
    ("digitalocean_token", ("_v1_",), _vendor(r"do[por]_v1_", r"[a-f0-9]{64}")),
    ("grafana_token", ("glsa_",), _vendor(r"glsa_", r"[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}")),
    ("grafana_token", ("glc_",), _vendor(r"glc_", r"[A-Za-z0-9+/]{32,}={0,2}", r"(?![A-Za-z0-9+/=])")),
    ("grafana_token", ("eyJrIjoi",), _vendor(r"eyJrIjoi", r"[A-Za-z0-9+/]{60,}={0,2}", r"(?![A-Za-z0-9+/=])")),
    ("vault_token", ("hv",), _vendor(r"hv[sbr]\.", r"[A-Za-z0-9_\-]{24,}", r"(?![A-Za-z0-9_\-])")),
    # Vault's legacy s.<24> tokens look like too many other things: only after the word vault on a line.
    ("vault_token", ("vault", "Vault", "VAULT"), re.compile(
        r"(?i:vault)[^\n]{0,80}?(?<![A-Za-z0-9_.\-/])(?P<secret>s\.(?P<body>[A-Za-z0-9]{24}))(?![A-Za-z0-9])")),
    ("databricks_token", ("dapi",), _vendor(r"dapi", r"[a-f0-9]{32}(?:-\d)?")),
    ("sentry_token", ("sntry",), _vendor(r"sntry[su]_", r"[A-Za-z0-9+/=_]{40,}", r"(?![A-Za-z0-9+/=_])")),
    ("jwt", ("eyJ",), re.compile(r"(?P<secret>eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})")),
    # Azure: storage / Service Bus keys in connection strings, and SAS signatures in URL queries.
    ("azure_key", ("AccountKey=",), re.compile(r"AccountKey=(?P<secret>[A-Za-z0-9+/]{20,}={0,2})(?![A-Za-z0-9+/=])")),
    ("azure_key", ("SharedAccessKey=",), re.compile(r"SharedAccessKey=(?P<secret>[A-Za-z0-9+/]{20,}={0,2})(?![A-Za-z0-9+/=])")),
    ("azure_sas_signature", ("sig=",), re.compile(r"sig=(?<=[?&;]sig=)(?P<secret>[A-Za-z0-9%+/=]{16,})(?![A-Za-z0-9%+/=])")),
    # A DSN whose user is a 32-hex key (Sentry: https://<key>@o1.ingest.sentry.io/2; legacy <key>:<secret>).
    ("sentry_dsn", ("://",), re.compile(r"://(?P<secret>[0-9a-f]{32}(?::[0-9a-f]{32})?)@")),
    # scheme://user:password@host: the password goes, the user and host stay. The user may be empty
    # (redis://:pw@host) and the password may hold "@" (the last "@" before a host name ends it).
    ("url_credentials", ("://",), re.compile(
        r"://[^\s:/@\"'<>]*:(?P<secret>[^\s/\"'<>]+?)@(?=(?:[A-Za-z0-9.\-_]+|\[[0-9A-Fa-f:.]+\])(?::\d+)?(?:[/?#\s\"'<>;,)\]}`]|$))")),
    # Connection strings: "Server=...;User Id=...;Password=...;" (the key after ";", "; " or a quote).
    ("connection_string_password", ("assword=", "wd=", "ASSWORD=", "WD="), re.compile(
        r"(?:assword|ASSWORD|wd|WD)=(?P<secret>[^;\"'\s()]+)")),
    # Authorization headers, in any text: Bearer / Basic / token schemes with a literal credential.
    ("bearer_token", ("Bearer",), _scheme("Bearer", _TOKEN68)),
    ("bearer_token", ("bearer",), _scheme("bearer", _TOKEN68)),
    ("bearer_token", ("BEARER",), _scheme("BEARER", _TOKEN68)),
    ("basic_auth", ("Basic",), _scheme("Basic", _BASIC_VALUE)),
    ("basic_auth", ("basic",), _scheme("basic", _BASIC_VALUE)),
    ("basic_auth", ("BASIC",), _scheme("BASIC", _BASIC_VALUE)),
    ("bearer_token", ("uthorization",), re.compile(r"uthorization(?<=[Aa]uthorization)" + _AUTHORIZATION_VALUE)),
    ("bearer_token", ("AUTHORIZATION",), re.compile(r"AUTHORIZATION" + _AUTHORIZATION_VALUE)),
    # curl -H "X-Api-Key: <literal>" and other secret-named headers on a command line.
    ("http_header_secret", ("-H",), re.compile(
        r"-H(?<=\s-H)[ \t]*[\"'](?i:[\w\-]*(?:key|token|secret|auth|pass)[\w\-]*):[ \t]*(?P<secret>[^\s\"']{8,})[\"']")),
    ("http_header_secret", ("--header",), re.compile(
        r"--header[ \t=]*[\"'](?i:[\w\-]*(?:key|token|secret|auth|pass)[\w\-]*):[ \t]*(?P<secret>[^\s\"']{8,})[\"']")),
    # Passwords on command lines: --password=..., mysql -p<pw>, docker login -p <pw>, sshpass -p <pw>,
    # curl -u user:<pw>.
    ("cli_password", ("-pass",), re.compile(
        r"--(?<![\w\-]--)(?!no-)(?:[a-z]+-)?pass(?:word|wd)?(?:=|[ \t]+)" + _CLI_VALUE)),
    ("cli_password", ("mysql",), re.compile(_starts_token("mysql", r"\w\-./") + _MYSQL_TAIL)),
    ("cli_password", ("mariadb",), re.compile(_starts_token("mariadb", r"\w\-./") + r"(?:-dump|-admin)?" + _MYSQL_TAIL)),
    ("cli_password", ("login",), re.compile(r"login(?=[ \t])" + _SAME_COMMAND + r"[ \t]-p[ \t]+" + _CLI_VALUE)),
    ("cli_password", ("sshpass",), re.compile(_starts_token("sshpass", r"\w\-") + r"(?=[ \t])" + _SAME_COMMAND + r"[ \t]-p[ \t]*" + _CLI_VALUE)),
    ("cli_password", ("curl",), re.compile(
        _starts_token("curl", r"\w\-") + r"(?=[ \t])" + _SAME_COMMAND
        + r"[ \t](?:-u[ \t]*|--user(?:=|[ \t]+))[\"']?[^\s:\"']*:(?P<secret>[^\s\"';|&]+)")),
]
# The commands whose "login ... -p <password>" counts (the text before "login" must end with one).
_LOGIN_COMMAND = re.compile(
    r"(?:^|[^\w\-])(?:docker|podman|buildah|skopeo|nerdctl|oras|helm[ \t]+registry|crane[ \t]+auth|cf|oc)[ \t]+$")
# A connection-string key follows ";", "; " or a quote.
_CONN_KEY_START = re.compile(r"(?:[;\"']|; )$")


def _decodes_to_credentials(value: str) -> bool:
    """Whether a Basic value is base64 of printable "user:password"."""
    import base64
    import binascii

    if len(value.rstrip("=")) % 4 == 1:
        return False
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    return len(text) >= 3 and ":" in text and text.isprintable()


def _credential_like(value: str) -> bool:
    """A literal token rather than a word, name or template: a digit, or mixed case that changes often."""
    if _is_placeholder(value) or len(value) < 8:
        return False
    if any(c.isdigit() for c in value):  # a run that looks random, or letters and digits well mixed
        return _random_body(value) or (sum(c.isdigit() for c in value) >= 4 and sum(c.isalpha() for c in value) >= 4)
    changes = sum(1 for a, b in pairwise(value) if a.isalpha() and b.isalpha() and a.isupper() != b.isupper())
    return changes >= 4


def _cli_secret(value: str, lead: str) -> bool:
    """A password given on a command line: not a placeholder, a metavar (PASSWORD) or another flag.
    After ``--password`` and a space it must not be a lower-case name either: mysql's --password takes
    no separate value (``mysql --password app_db`` prompts, app_db is the database)."""
    v = value.strip()
    if len(v) < 3 or _is_placeholder(v) or v.startswith("-") or re.fullmatch(r"[A-Z_]+", v):
        return False
    return not (_SPACED_PASSWORD_FLAG.search(lead) and re.fullmatch(r"[a-z][a-z0-9_\-]*", v))


_SPACED_PASSWORD_FLAG = re.compile(r"--[\w\-]*pass\w*[ \t]+$")


def _lead(m: re.Match[str], group: str) -> str:
    """The match's text before the value."""
    return m.string[m.start():m.start(group)]


def _before(m: re.Match[str], width: int = 80) -> str:
    """Up to width characters of the match's line before the match."""
    line_start = m.string.rfind("\n", max(0, m.start() - width), m.start()) + 1
    return m.string[max(line_start, m.start() - width):m.start()]


def _cli_check(v: str, m: re.Match[str], group: str) -> bool:
    if m.group(0).startswith("login") and not _LOGIN_COMMAND.search(_before(m)):
        return False  # "login" of some other command
    return _cli_secret(v, _lead(m, group))


def _conn_check(v: str, m: re.Match[str], group: str) -> bool:
    """Password=/Pwd= (any of P/p, all-caps) right after ";", "; " or a quote, its value no placeholder."""
    at = m.start() - 1
    if at < 0 or m.string[at] not in ("P" if m.group(0)[0].isupper() else "Pp"):
        return False
    return bool(_CONN_KEY_START.search(m.string[max(0, at - 2):at])) and not _is_placeholder(v)


# kind -> check(value, match, value's group): False keeps the match as it is.
_CHECKS: dict[str, Callable[[str, re.Match[str], str], bool]] = {
    "bearer_token": lambda v, m, g: _credential_like(v),
    "http_header_secret": lambda v, m, g: _credential_like(v),
    "basic_auth": lambda v, m, g: _decodes_to_credentials(v),
    "cli_password": _cli_check,
    "url_credentials": lambda v, m, g: not _is_placeholder(v),
    "connection_string_password": _conn_check,
    "azure_sas_signature": lambda v, m, g: "%" in v or any(c.isdigit() for c in v),
}


# key = value in code, config and .env files, matched on ASCII-lower-cased text starting at the
# keyword (fast); the key's full name is read backwards and the value judged by _assignment_secret.
_KEY_WORDS = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|"
    r"(?:secret|api|access|private|signing|encryption|master|client|auth|app|account|service)[_\-]?key|"
    r"credentials?|auth|authorization|contrase(?:n|ñ)a"
)
_ASSIGNMENT = re.compile(
    r"(?:" + _KEY_WORDS + r")(?![\w])"
    r"[\"'\]]{0,2}(?P<ann>\s*:\s*[a-z_][\w\[\]., |]*?(?=[ \t]*=(?![=>])[ \t]*\S))?"  # optional type annotation (password: str = ...)
    r"\s*(?P<op>=>|:=|===|==|!==|!=|=|:)[ \t]*"  # the value on the same line as its operator
    r"(?:(?P<q>[\"'`])(?P<quoted>[^\"'`\n]{1,300}?)(?P=q)|(?P<bare>[^\s\"'`,;#&()\[\]{}<>]+))"
)
_ASSIGN_NEEDLES = ("pass", "pwd", "secret", "token", "key", "cred", "auth", "contrase")
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_PASSWORD_WORDS = re.compile(r"(?i)pass|pwd|contrase")
_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*(?:(?:\.|::|->)[A-Za-z_$][\w$]*)*")
_TYPE_WORDS = frozenset(
    "str string bytes int bool boolean float none null nil true false undefined optional any object "
    "secretstr string? &str &'static password secret token".split())
_TOKEN_VALUE = re.compile(r"[A-Za-z0-9+/=_\-.~:!@#%^*]{8,}")
# A whole line that is configuration, not code: KEY=value (.env) or key: value (YAML), value to the end.
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_.\-]*=[^\s=]")
_YAML_LINE = re.compile(r"^\s*(?:-\s+)?[\"']?[\w.\-]+[\"']?:\s+[^\s]")

# Candidate lines for detect-secrets: its keyword list (and the vendor plugins keyed on words) ...
_DS_KEYWORDS = (
    "pass", "pwd", "secret", "contrase", "api_key", "apikey", "api-key", "auth_key", "authkey",
    "service_key", "account_key", "accountkey", "db_key", "database_key", "priv_key", "private_key",
    "privatekey", "client_key", "cloudant", "ibm", "softlayer", "credential",
)
# ... and literal-first hints of the vendor formats layer 1 does not cover (Artifactory, Azure,
# Discord, Mailchimp, Square, Telegram, Twilio), private keys and URLs with credentials.
_VENDOR_HINTS = tuple(re.compile(p) for p in (
    r"AKC[a-zA-Z0-9]{10}", r"AP(?<![A-Za-z0-9]AP)[\dA-F][a-zA-Z0-9]{8}", r"PRIVATE KEY", r"PuTTY-User-Key",
    r"://[^\s/@]*@", r":[0-9A-Za-z_\-]{35}", r"AccountKey=", r"-us\d", r"sq0csp-", r"AC[a-z0-9]{32}",
    r"SK[a-z0-9]{32}", r"\.[a-zA-Z\d_\-]{6}\.[a-zA-Z\d_\-]{27}",
))
# Quoted strings long enough for the entropy plugins to fire (base64 needs ~23 chars, hex ~9).
_QUOTED = re.compile(r"[\"'`][A-Za-z0-9+/=_\-]{9,}[\"'`]")
# A key-like name right before a quoted value: the only place a high-entropy string counts.
_KEY_BEFORE_WORDS = ("pass", "pwd", "secret", "key", "token", "auth", "cred", "bearer", "sig", "salt", "api", "private")
_KEY_BEFORE = re.compile(
    r"(?<![a-z0-9])(?:pass|pwd|secret|key|token|auth|cred|bearer|signature|salt|sig|api|private)[\w\-]*[\"'\]]*\s*(?:=>|:=|[:=(,]|\s)\s*[\[{(]?\s*@?[\"'`]$")

_DS_SKIP = frozenset({"Public IP (ipv4)"})  # public IPs are not credentials
_DS_NAMES = {
    "AWS Access Key": "aws_access_key", "Basic Auth Credentials": "url_credentials",
    "GitHub Token": "github_token", "GitLab Token": "gitlab_token", "JSON Web Token": "jwt",
    "OpenAI Token": "openai_key", "Private Key": "private_key", "Secret Keyword": "secret_keyword",
    "Slack Token": "slack_token", "Stripe Access Key": "stripe_key", "NPM tokens": "npm_token",
    "PyPI Token": "pypi_token", "SendGrid API Key": "sendgrid_key",
    "Base64 High Entropy String": "high_entropy_secret", "Hex High Entropy String": "high_entropy_secret",
}


def placeholder(kind: str) -> str:
    """The text a redacted secret is replaced with."""
    return f"[REDACTED_{kind.upper()}]"


def _is_placeholder(value: str) -> bool:
    """True for values that stand for a secret rather than being one (templates, env lookups, masks)."""
    v = value.strip()
    low = v.lower()
    return (
        not v or "REDACTED" in v or low in _TYPE_WORDS or len(set(v)) == 1
        or v[0] in "$%{<[*" or "${" in v or "{{" in v or "%(" in v or "%s" in v
        or low.startswith(("your", "env:", "os.environ", "process.env", "getenv", "<"))
    )


def _assignment_secret(key: str, value: str, quoted: bool, literal_line: bool) -> bool:
    """Whether a value assigned to a secret-sounding key is a credential worth redacting."""
    if _is_placeholder(value):
        return False
    if not quoted:
        if value.startswith("!"):
            return False  # a YAML tag (!!binary, !vault, !Ref): the value follows it, if anywhere
        if not literal_line and (_IDENTIFIER.fullmatch(value) or re.fullmatch(r"[\d._]+", value)):
            return False  # bare values in code are expressions: password = get_password()
        if literal_line and value.lower() in _TYPE_WORDS:
            return False  # a type annotation shaped like YAML: `password: str`
    if _PASSWORD_WORDS.search(key):
        return len(value) >= 3 and "\n" not in value
    # A token / key value looks like one: a run of token characters, not a word (token = "input_ids").
    return bool(_TOKEN_VALUE.fullmatch(value)) and not re.fullmatch(r"[a-z_.\-]+|[A-Z_.\-]+|[\d.]+", value)


def _replace_group(m: re.Match[str], group: str, kind: str) -> str:
    s, e = m.span(group)
    return m.group(0)[: s - m.start()] + placeholder(kind) + m.group(0)[e - m.start():]


# Patterns whose source opens with a literal of 2+ characters: re skips ahead to that literal as fast as
# a substring test, so their needles are not tested first (one scan, not one per needle). The rest
# (a leading group, class or one-letter literal) run only when a needle occurs.
_OPENS_WITH_LITERAL = re.compile(r"(?:\(\?P<\w+>)?[A-Za-z0-9:/=_\-]{2}")
_NEEDS_GATE = tuple(not _OPENS_WITH_LITERAL.match(p.pattern) for _, _, p in PATTERNS)


def _apply_patterns(text: str, counts: Counter) -> str:
    """Layer 1a: vendor formats, private key blocks, URL and connection-string credentials."""
    for (kind, needles, pattern), gate in zip(PATTERNS, _NEEDS_GATE):
        if gate and not any(n in text for n in needles):
            continue

        def _sub(m: re.Match[str], kind: str = kind) -> str:
            found = m.groupdict()
            group = next((g for g in ("secret", "sq", "dq") if found.get(g) is not None), None)
            if group is None:
                counts[kind] += 1
                return placeholder(kind)
            secret = m.group(group)
            body = found.get("body")
            if body is not None and not _random_body(body):
                return m.group(0)  # an identifier that happens to start like a token
            check = _CHECKS.get(kind)
            if "REDACTED" in secret or (check is not None and not check(secret, m, group)):
                return m.group(0)
            counts[kind] += 1
            return _replace_group(m, group, kind)
        text = pattern.sub(_sub, text)
    return text


_SHELL_KEY = re.compile(r"[A-Z][A-Z0-9_]*=")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _shell_assignment(text: str, start: int, key: str, vs: int, ve: int) -> bool:
    """An upper-case VAR=value in a shell command or Dockerfile (``SSHPASS=pw sshpass -e ssh host``,
    ``PGPASSWORD=pw psql``, ``ENV MYSQL_PWD=pw``): the value is a literal string even mid-line.
    Not a call argument (``f(PASSWORD=pw)``), a call (``PASSWORD=get()``) or attribute (``PASS=cfg.pw``)."""
    if not _SHELL_KEY.fullmatch(key) or vs != start + len(key) or key[:-1].endswith(("BYPASS", "COMPASS", "SURPASS")):
        return False
    if start > 0 and text[start - 1] not in " \t\n;&|":
        return False
    if ve < len(text) and text[ve] not in " \t\r\n;&|":
        return False
    return not _DOTTED.fullmatch(text[vs:ve])


def _apply_assignments(text: str, counts: Counter) -> str:
    """Layer 1b: secret-named keys assigned a literal value in code, config or .env lines."""
    low = _ascii_lower(text)
    if not any(n in low for n in _ASSIGN_NEEDLES):
        return text
    out: list[str] = []
    last = 0
    for m in _ASSIGNMENT.finditer(low):
        start = m.start()
        while start > 0 and text[start - 1] in _KEY_CHARS:
            start -= 1
        key = text[start:m.end("op")]
        quoted = m.group("quoted") is not None
        group = "quoted" if quoted else "bare"
        vs, ve = m.span(group)
        value = text[vs:ve]
        if m.group("op") in ("==", "===", "!=", "!==") and not quoted:
            continue
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", ve)
        line = text[line_start:line_end if line_end >= 0 else len(text)]
        literal = False
        if not quoted:
            rest = line[ve - line_start:].strip()
            literal = (bool(_ENV_LINE.match(line)) or bool(_YAML_LINE.match(line))) and (not rest or rest.startswith("#"))
            literal = literal or _shell_assignment(text, start, key, vs, ve)
        if vs < last or not _assignment_secret(key, value, quoted, literal):
            continue
        kind = "password" if _PASSWORD_WORDS.search(key) else "secret_assignment"
        counts[kind] += 1
        out.append(text[last:vs])
        out.append(placeholder(kind))
        last = ve
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


# YAML's !!binary tag: base64 after it, inline or as an indented block scalar (key: !!binary |).
_YAML_BINARY = re.compile(
    r"!!binary[ \t]*(?:(?P<inline>[A-Za-z0-9+/=]{8,})[ \t]*(?=\n|$)"
    r"|[|>][-+0-9]*[ \t]*(?:#[^\n]*)?\n(?P<block>(?:[ \t]+[A-Za-z0-9+/=]+[ \t]*(?:\n|$))+))")
_FILE_MAGIC = (b"GIF8", b"\x89PNG", b"\xff\xd8\xff", b"PK\x03\x04", b"%PDF", b"\x1f\x8b", b"BM", b"RIFF", b"\x00\x00\x01\x00")
_BINARY_KEY = re.compile(r"(?i)pass|pwd|secret|token|key|cred|auth|private|salt|seed|sign|cert|pem|p12|pfx|jks")


def _binary_secret(key: str, payload: str) -> bool:
    """Whether a YAML !!binary payload is to be redacted. Decided so: under a secret-sounding key
    (password, token, tls_key, keystore, cert...) always; under any other key when it decodes to text
    holding a secret (a PEM private key, a token) or to 16-64 bytes of non-text (raw key material);
    longer non-text blobs and known file formats (GIF, PNG, zip...) under neutral keys stay."""
    import base64
    import binascii

    if _BINARY_KEY.search(key):
        return True
    try:
        raw = base64.b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return len(payload) >= 40
    if raw.startswith(_FILE_MAGIC):
        return False  # an image, archive or document embedded in the YAML
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return 16 <= len(raw) <= 64
    if not all(c.isprintable() or c in "\r\n\t" for c in decoded):
        return 16 <= len(raw) <= 64
    return "PRIVATE KEY" in decoded or bool(sum(scrub_text(decoded)[1].values()))


def _apply_yaml_binary(text: str, counts: Counter) -> str:
    """Layer 1c: base64 payloads of YAML ``!!binary`` values that hold or are key material."""
    if "!!binary" not in text:
        return text

    def _sub(m: re.Match[str]) -> str:
        # The key is what precedes the tag on its line: "  private_key: !!binary", "- !!binary".
        key = text[text.rfind("\n", 0, m.start()) + 1:m.start()].strip().lstrip("-").strip().rstrip(":").strip().strip("\"'")
        group = "inline" if m.group("inline") is not None else "block"
        payload = "".join(m.group(group).split())
        if not _binary_secret(key, payload):
            return m.group(0)
        counts["yaml_binary_secret"] += 1
        if group == "inline":
            return _replace_group(m, "inline", "yaml_binary_secret")
        block = m.group("block")
        indent = block[: len(block) - len(block.lstrip(" \t"))]
        tail = "\n" if block.endswith("\n") else ""
        return m.group(0)[: m.start("block") - m.start()] + indent + placeholder("yaml_binary_secret") + tail

    return _YAML_BINARY.sub(_sub, text)


class _Plugin:
    """One detect-secrets plugin, adapted to return the raw secret values in a line."""

    def __init__(self, plugin: object, name: str, group: str, analyze: Callable[[str], Iterable[str]]):
        self.plugin, self.name, self.group, self.analyze = plugin, name, group, analyze


@lru_cache(maxsize=1)
def _plugins() -> tuple[_Plugin, ...]:
    """detect-secrets' plugins, built once. Only analyze_string is called: never verification (network)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin
    from detect_secrets.plugins.keyword import KeywordDetector

    out: list[_Plugin] = []
    for secret_type, cls in sorted(get_mapping_from_secret_type_to_class().items()):
        if secret_type in _DS_SKIP:
            continue
        if cls.__name__ == "Base64HighEntropyString":
            plugin = cls(limit=4.5)
        elif cls.__name__ == "HexHighEntropyString":
            plugin = cls(limit=3.0)
        else:
            plugin = cls()
        if isinstance(plugin, HighEntropyStringsPlugin):
            def analyze(line: str, p: HighEntropyStringsPlugin = plugin) -> Iterable[str]:
                return [s for s in p.analyze_string(line) if p.calculate_shannon_entropy(s) > p.entropy_limit]
            group = "entropy"
        else:
            # The keyword plugin's default (quotes-required) flavour: bare config values are layer 1b's.
            analyze = plugin.analyze_string
            group = "keyword" if isinstance(plugin, KeywordDetector) else "vendor"
        out.append(_Plugin(plugin, secret_type, group, analyze))
    return tuple(out)


def _ds_false_positive(secret: str, line: str, plugin: _Plugin) -> bool:
    """detect-secrets' own heuristic filters, plus Forge's placeholder rules."""
    from detect_secrets.filters import heuristic as h

    if "REDACTED" in secret.upper():
        return True
    if plugin.name == "Private Key":
        return False
    if plugin.group == "keyword" and (
        h.is_indirect_reference(line) or _is_placeholder(secret) or len(secret) < 3
        or " " in secret.strip()  # prose ("secret_name": "Dive Wilson"), not a credential
        or secret.lower() in line[: line.find(secret)].lower()  # apiKey = "apiKey": a name, not a value
    ):
        return True
    return (
        h.is_sequential_string(secret) or h.is_potential_uuid(secret)
        or h.is_likely_id_string(secret, line, plugin.plugin) or h.is_templated_secret(secret)
        or h.is_prefixed_with_dollar_sign(secret) or h.is_not_alphanumeric_string(secret)
    )


def _scan_line(line: str, groups: set[str], counts: Counter) -> str:
    """Run the detect-secrets plugins of the given groups over one line and redact what they find."""
    if "keyword" in groups and "'" not in line and '"' not in line and "`" not in line:
        groups = groups - {"keyword"}  # the keyword plugin (code flavour) needs a quoted value
    for plugin in _plugins():
        if plugin.group not in groups:
            continue
        try:
            found = list(plugin.analyze(line))
        except Exception:  # a plugin bug must not stop scrubbing the rest of the line
            continue
        for secret in found:
            if not secret or secret not in line or _ds_false_positive(secret, line, plugin):
                continue
            if plugin.group == "entropy":
                at = line.find(secret)
                if not _KEY_BEFORE.search(_ascii_lower(line[max(0, at - 60):at])):
                    continue  # high entropy alone (hashes, ids, test vectors) is not a secret
            kind = _DS_NAMES.get(plugin.name) or re.sub(r"\W+", "_", plugin.name).strip("_").lower()
            counts[kind] += line.count(secret)
            line = line.replace(secret, placeholder(kind))
    return line


def _candidate_lines(text: str) -> dict[int, set[str]]:
    """Start offsets of lines worth detect-secrets' plugins, with the plugin groups to run there."""
    starts: dict[int, set[str]] = {}
    low = _ascii_lower(text)

    def mark(pos: int, *groups: str) -> None:
        s = text.rfind("\n", 0, pos) + 1
        starts.setdefault(s, set()).update(groups)

    for word in _DS_KEYWORDS:
        if word in low:
            for m in re.finditer(re.escape(word), low):
                mark(m.start(), "keyword", "vendor")
    for pattern in _VENDOR_HINTS:
        for m in pattern.finditer(text):
            mark(m.start(), "vendor")
    for m in _QUOTED.finditer(text):
        window = low[max(0, m.start() - 60):m.start() + 1]
        if any(w in window for w in _KEY_BEFORE_WORDS) and _KEY_BEFORE.search(window):
            mark(m.start(), "entropy")
    return starts


def _apply_detect_secrets(text: str, counts: Counter) -> str:
    """Layer 2: detect-secrets plugins over the candidate lines."""
    candidates = _candidate_lines(text)
    if not candidates:
        return text
    out: list[str] = []
    last = 0
    for start in sorted(candidates):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end]
        if len(line) > 20_000:
            continue  # a line this long is data (embedded blobs), not configuration
        new = _scan_line(line, candidates[start], counts)
        if new != line:
            out.append(text[last:start])
            out.append(new)
            last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def scrub_text(text: str) -> tuple[str, Counter]:
    """The text with every secret found replaced by a placeholder, and counts by secret type."""
    counts: Counter = Counter()
    if not text:
        return text, counts
    text = _apply_patterns(text, counts)
    text = _apply_yaml_binary(text, counts)
    text = _apply_assignments(text, counts)
    text = _apply_detect_secrets(text, counts)
    return text, counts


def scrub_many(texts: Iterable[str]) -> tuple[list[str], Counter]:
    """scrub_text over several texts: the scrubbed texts and the summed counts."""
    total: Counter = Counter()
    out: list[str] = []
    for t in texts:
        s, c = scrub_text(t)
        out.append(s)
        total.update(c)
    return out, total


# scheme://<token>@host: a user name that is itself a token (GitHub's https://<token>@github.com/o/r.git).
_URL_TOKEN_USER = re.compile(r"://(?P<secret>[A-Za-z0-9_\-.~%]{16,})@")


@lru_cache(maxsize=65536)
def scrub_path(path: str) -> str:
    """A file path or repository name (or URL) as a sample shows it, with credentials redacted.

    The vendor token shapes and URL credentials of ``scrub_text``'s first layer apply to every
    segment (``deploy/ghp_.../run.sh``, ``https://user:tok@host/org/repo.git``); so does a URL user
    name that looks machine-made (``https://<40 hex>@github.com/...``). The assignment and entropy
    layers do not: a path is not code, and hashes and UUIDs in paths (caches, content-addressed
    stores) are not secrets. Ordinary paths come back unchanged (the same object).
    """
    if not path:
        return path
    out = _apply_patterns(path, Counter())
    if "://" in out:
        out = _URL_TOKEN_USER.sub(
            lambda m: _replace_group(m, "secret", "url_credentials") if _random_body(m.group("secret")) else m.group(0), out)
    return path if out == path else out


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_FIELD_KEY = re.compile(r"(?:^|[^a-z0-9])(?:" + _KEY_WORDS + r")$")
_AUTH_SCHEME = re.compile(r"(?i)^(?:bearer|basic|token|bot)\s+(?P<credential>\S+)$")


def scrub_field(key: str, value: str) -> tuple[str, Counter]:
    """A string stored under a key (a tool argument, a JSON or environment field), scrubbed.

    scrub_text over the value, and the whole value redacted when the key names a secret
    (``password``, ``DB_PASSWORD``, ``apiKey``, ``Authorization``...) and the value is a credential by
    the same test a ``key = "value"`` assignment gets in code.
    """
    text, counts = scrub_text(value)
    name = _CAMEL.sub("_", key).lower().strip()
    if not text or "\n" in text or not _FIELD_KEY.search(name):
        return text, counts
    scheme = _AUTH_SCHEME.match(text.strip())
    candidate = scheme.group("credential") if scheme else text.strip()
    if "REDACTED" not in candidate and _assignment_secret(name, candidate, quoted=True, literal_line=True):
        kind = "password" if _PASSWORD_WORDS.search(name) else "secret_assignment"
        counts[kind] += 1
        text = text.replace(candidate, placeholder(kind))
    return text, counts
