"""Secret scrubbing: every text bound for a dataset or a session record passes through here first.

Two layers, both in-process and fast enough to run over every mined file:

1. High-signal patterns over the whole text: private key blocks, vendor token formats (AWS,
   GitHub, GitLab, OpenAI, Anthropic, Slack, Stripe, Google, Hugging Face, npm, PyPI, SendGrid,
   JWT), credentials in URLs and connection strings, and secret-named assignments in code,
   config and .env files (``DB_PASSWORD=...``, ``api_key: "..."``). Each pattern is skipped
   unless one of its literal needles occurs in the text, so most patterns cost a substring test.
   Tokens with a vendor prefix (``ghp_ gho_ ghu_ ghs_ ghr_ github_pat_ glpat- sk- sk-proj- sk-ant-
   hf_ npm_``) are caught at any length once 16 of the vendor's token characters follow the
   prefix, provided the prefix starts a token (no letter, digit or ``_`` before it) and the run
   looks machine-made (8+ letters/digits with a digit or both cases): ``task-list``,
   ``hf_hub_download`` and ``npm_config_cache`` stay. AWS key ids (``AKIA``/``ASIA``... + 16 or
   more of ``[A-Z0-9]``), Slack tokens (``xox[abposr]-`` + 10 or more) and webhook URLs
   (``hooks.slack.com/services|workflows|triggers/`` + 16 or more) need no such test.
2. detect-secrets 1.5.0's plugins, run line by line on the candidate lines cheap scans flag (a
   secret-sounding word, a long token, a URL with credentials, a quoted high-entropy string),
   with its heuristic false-positive filters. Its entropy plugins count only on lines that name a
   key (token, secret, password, ...): a bare hash or test vector is not a secret.

Every secret is replaced by ``[REDACTED_<TYPE>]`` and counted by type; the original never leaves.
``scrub_field`` also judges a value by the key it is stored under (``{"password": "hunter2"}`` in a
tool call's arguments, where the key is not part of the text).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
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


def _prefixed(prefix: str, alphabet: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9_])(?P<secret>(?:{prefix})(?P<body>[{alphabet}]{{{MIN_TOKEN_BODY},}}))")


# (type, literal needles, pattern): the pattern runs only when a needle occurs in the text; its
# group "secret" (or the whole match) is what gets replaced. Literal-first patterns keep re fast.
PATTERNS: list[tuple[str, tuple[str, ...], re.Pattern[str]]] = [
    ("private_key", ("PRIVATE KEY",), re.compile(
        r"-{4,5} ?BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}"
        r"(?:[\s\S]*?-{4,5} ?END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}|[A-Za-z0-9+/=\s\\:,\-\"']*)")),
    ("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"), re.compile(
        r"(?<![A-Za-z0-9])(?P<secret>(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[0-9A-Z]{16,})(?![A-Za-z0-9])")),
    ("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), _prefixed(r"gh[pousr]_", "A-Za-z0-9")),
    ("github_token", ("github_pat_",), _prefixed(r"github_pat_", "A-Za-z0-9_")),
    ("gitlab_token", ("glpat-", "gldt-", "glrt-", "glptt-"), _prefixed(r"gl(?:pat|dt|rt|ptt)-", r"A-Za-z0-9_\-")),
    ("anthropic_key", ("sk-ant-",), _prefixed(r"sk-ant-", r"A-Za-z0-9_\-")),
    ("openai_key", ("sk-",), _prefixed(r"sk-(?:proj-|svcacct-|admin-)?", r"A-Za-z0-9_\-")),
    ("stripe_key", ("_live_", "_test_"), re.compile(r"(?P<secret>(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,})")),
    ("slack_token", ("xox",), re.compile(r"(?P<secret>xox[abposr]-[A-Za-z0-9\-]{10,})")),
    ("slack_webhook", ("hooks.slack.com",), re.compile(
        r"(?P<secret>https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]{16,})")),
    ("google_api_key", ("AIza",), re.compile(r"(?P<secret>AIza[0-9A-Za-z_\-]{35})")),
    ("huggingface_token", ("hf_",), _prefixed(r"hf_", "A-Za-z0-9")),
    ("npm_token", ("npm_",), _prefixed(r"npm_", "A-Za-z0-9")),
    ("pypi_token", ("pypi-",), re.compile(r"(?P<secret>pypi-AgE[A-Za-z0-9_\-]{50,})")),
    ("sendgrid_key", ("SG.",), re.compile(r"(?P<secret>SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})")),
    ("jwt", ("eyJ",), re.compile(r"(?P<secret>eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})")),
    # scheme://user:password@host: the password goes, the user and host stay.
    ("url_credentials", ("://",), re.compile(r"://[^\s:/@\"'<>]+:(?P<secret>[^\s@/\"'<>]+)@")),
    # Connection strings: "Server=...;User Id=...;Password=...;".
    ("connection_string_password", ("assword=", "wd=", "ASSWORD=", "WD="), re.compile(
        r"(?:(?<=;)|(?<=; )|(?<=[\"']))(?:[Pp]assword|PASSWORD|[Pp]wd|PWD)=(?P<secret>[^;\"'\s()]+)")),
]

# key = value in code, config and .env files, matched on ASCII-lower-cased text starting at the
# keyword (fast); the key's full name is read backwards and the value judged by _assignment_secret.
_KEY_WORDS = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|"
    r"(?:secret|api|access|private|signing|encryption|master|client|auth|app|account|service)[_\-]?key|"
    r"credentials?|auth|authorization|contrase(?:n|ñ)a"
)
_ASSIGNMENT = re.compile(
    r"(?:" + _KEY_WORDS + r")(?![\w])"
    r"[\"'\]]{0,2}(?P<ann>\s*:\s*[a-z_][\w\[\]., |]*?)?"  # optional type annotation (password: str = ...)
    r"\s*(?P<op>=>|:=|===|==|!==|!=|=|:)\s*"
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


def _apply_patterns(text: str, counts: Counter) -> str:
    """Layer 1a: vendor formats, private key blocks, URL and connection-string credentials."""
    for kind, needles, pattern in PATTERNS:
        if not any(n in text for n in needles):
            continue

        def _sub(m: re.Match[str], kind: str = kind) -> str:
            group = "secret" if m.groupdict().get("secret") is not None else None
            if group is None:
                counts[kind] += 1
                return placeholder(kind)
            secret = m.group(group)
            body = m.groupdict().get("body")
            if body is not None and not _random_body(body):
                return m.group(0)  # an identifier that happens to start like a token
            if "REDACTED" in secret or (kind in ("url_credentials", "connection_string_password") and _is_placeholder(secret)):
                return m.group(0)
            counts[kind] += 1
            return _replace_group(m, group, kind)
        text = pattern.sub(_sub, text)
    return text


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
