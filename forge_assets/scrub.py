"""Secret scrubbing: every text bound for a dataset or a session record passes through here first.

Two layers, both in-process:

1. High-signal patterns over the whole text (private key blocks, vendor token formats, credentials
   in URLs and connection strings, secret-named assignments in code, config and .env files).
2. detect-secrets 1.5.0 plugins run line by line on the lines a cheap gate regex flags, with its
   heuristic false-positive filters; its entropy plugins count only on lines naming a key.

Every secret is replaced by ``[REDACTED_<TYPE>]`` and counted by type; the original never leaves.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Callable, Iterable

REDACTED = "[REDACTED_"

# Names a value is a credential under (matched case-insensitively, at the end of a key name).
_KEY_WORDS = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|"
    r"private[_\-]?key|secret[_\-]?key|signing[_\-]?key|encryption[_\-]?key|client[_\-]?secret|"
    r"credentials?|auth|authorization|bearer|contrase[nñ]a"
)
_PASSWORD_WORDS = re.compile(r"(?i)pass|pwd|contrase")

# (type, pattern); a pattern's group "secret" (or the whole match) is what gets replaced.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("private_key", re.compile(
        r"-{4,5} ?BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-? ?-{3,5}"
        r"(?:[\s\S]*?-{4,5} ?END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}|[A-Za-z0-9+/=\s\\:,\-\"']*)")),
    ("aws_access_key", re.compile(r"\b(?P<secret>(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})\b")),
    ("github_token", re.compile(r"\b(?P<secret>(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}))\b")),
    ("gitlab_token", re.compile(r"\b(?P<secret>glpat-[A-Za-z0-9_\-]{20,})")),
    ("anthropic_key", re.compile(r"\b(?P<secret>sk-ant-[A-Za-z0-9_\-]{20,})")),
    ("openai_key", re.compile(r"\b(?P<secret>sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,})")),
    ("stripe_key", re.compile(r"\b(?P<secret>(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,})")),
    ("slack_token", re.compile(r"\b(?P<secret>xox[abposr]-[A-Za-z0-9\-]{10,})")),
    ("slack_webhook", re.compile(r"(?P<secret>https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]{20,})")),
    ("google_api_key", re.compile(r"\b(?P<secret>AIza[0-9A-Za-z_\-]{35})")),
    ("huggingface_token", re.compile(r"\b(?P<secret>hf_[A-Za-z0-9]{30,})\b")),
    ("npm_token", re.compile(r"\b(?P<secret>npm_[A-Za-z0-9]{36})\b")),
    ("pypi_token", re.compile(r"\b(?P<secret>pypi-AgE[A-Za-z0-9_\-]{50,})")),
    ("sendgrid_key", re.compile(r"\b(?P<secret>SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})")),
    ("jwt", re.compile(r"\b(?P<secret>eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})")),
    # scheme://user:password@host — the password goes, the user and host stay.
    ("url_credentials", re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@\"'<>]+:(?P<secret>[^\s@/\"'<>]+)@")),
]

# key = value in code, config and .env files; the value is judged by _assignment_secret.
_ASSIGNMENT = re.compile(
    r"(?i)(?P<key>(?<![\w])[\w.\-]*?(?:" + _KEY_WORDS + r"))(?![\w])"
    r"[\"'\]]{0,2}(?:\s*:\s*[A-Za-z_][\w\[\]., |]*?)?"  # optional type annotation (password: str = ...)
    r"\s*(?P<op>=>|:=|===|==|!==|!=|=|:)\s*"
    r"(?:(?P<q>[\"'`])(?P<quoted>[^\"'`\n]{1,300}?)(?P=q)|(?P<bare>[^\s\"'`,;#&()\[\]{}<>]+))"
)
# Connection strings: "Server=...;User Id=...;Password=...;".
_CONN_PASSWORD = re.compile(r"(?i)(?:(?<=;)|(?<=; )|(?<=[\"']))(?:password|pwd)=(?P<secret>[^;\"'\s()]+)")
_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*(?:(?:\.|::|->)[A-Za-z_$][\w$]*)*(?:\(\)?)?")
_TYPE_WORDS = frozenset("str string bytes int bool float none null nil true false undefined optional any object secretstr string? &str".split())
_LITERAL_LINE = re.compile(r"^\s*(?:export\s+|-\s+)?[\"']?[\w.\-]+[\"']?\s*(?:=|:)\s*[^\s].*$")

# Lines worth running detect-secrets' plugins on: key-like words, URLs, or a long token.
_GATE = re.compile(
    r"(?i:pass|pwd|secret|key|token|auth|cred|bearer|contrase|account)|://|"
    r"[A-Za-z0-9+/=_\-]{20,}|\d{8,10}:[A-Za-z0-9_\-]{30,}")
_KEYLIKE_LINE = re.compile(r"(?i)pass|pwd|secret|key|token|auth|cred|bearer|signature|salt")

# detect-secrets types Forge does not treat as secrets (public IPs are not credentials).
_DS_SKIP = frozenset({"Public IP (ipv4)"})
_DS_ENTROPY = frozenset({"Base64 High Entropy String", "Hex High Entropy String"})
_DS_NAMES = {
    "AWS Access Key": "aws_access_key", "Basic Auth Credentials": "url_credentials",
    "GitHub Token": "github_token", "GitLab Token": "gitlab_token", "JSON Web Token": "jwt",
    "OpenAI Token": "openai_key", "Private Key": "private_key", "Secret Keyword": "password",
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
        not v or REDACTED in v or low in _TYPE_WORDS or len(set(v)) == 1
        or v[0] in "$%{<[*" or "${" in v or "{{" in v or "%(" in v or "%s" in v
        or low.startswith(("your", "env:", "os.environ", "process.env", "getenv", "<"))
    )


def _assignment_secret(key: str, value: str, quoted: bool, line_is_literal: bool) -> bool:
    """Whether a value assigned to a secret-sounding key is a credential worth redacting."""
    if _is_placeholder(value) or " " in value.strip() and not quoted:
        return False
    password = bool(_PASSWORD_WORDS.search(key))
    if not quoted and not line_is_literal:
        # Bare values in code are expressions (password = get_password()); only literal-looking ones count.
        if _IDENTIFIER.fullmatch(value) or value.replace(".", "").replace("_", "").isdigit():
            return False
    if not quoted and line_is_literal and _IDENTIFIER.fullmatch(value) and value.lower() in _TYPE_WORDS:
        return False
    if password:
        return len(value) >= 3
    if len(value) < 8 or " " in value:
        return False
    # A token / key value is mixed: not a plain lower-case word or identifier (token = "input_ids").
    return not re.fullmatch(r"[a-z_.\-]+|[A-Z_.\-]+", value)


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else len(text)]


def _apply_patterns(text: str, counts: Counter) -> str:
    for kind, pattern in PATTERNS:
        if kind == "private_key" and "PRIVATE KEY" not in text:
            continue  # the block pattern is the only multi-line one; skip it cheaply
        def _sub(m: re.Match[str], kind: str = kind) -> str:
            if "secret" in m.groupdict() and m.group("secret") is not None:
                secret = m.group("secret")
                if REDACTED in secret or secret.startswith("REDACTED"):
                    return m.group(0)
                counts[kind] += 1
                s, e = m.span("secret")
                return m.group(0)[: s - m.start()] + placeholder(kind) + m.group(0)[e - m.start():]
            counts[kind] += 1
            return placeholder(kind)
        text = pattern.sub(_sub, text)

    def _conn(m: re.Match[str]) -> str:
        secret = m.group("secret")
        if _is_placeholder(secret):
            return m.group(0)
        counts["connection_string_password"] += 1
        s, e = m.span("secret")
        return m.group(0)[: s - m.start()] + placeholder("connection_string_password") + m.group(0)[e - m.start():]
    if ";" in text:
        text = _CONN_PASSWORD.sub(_conn, text)

    def _assign(m: re.Match[str]) -> str:
        quoted = m.group("quoted") is not None
        value = m.group("quoted") if quoted else m.group("bare")
        key = m.group("key")
        literal = bool(_LITERAL_LINE.match(_line_at(m.string, m.start())))
        if m.group("op") in ("==", "===", "!=", "!==") and not quoted:
            return m.group(0)
        if not _assignment_secret(key, value, quoted, literal):
            return m.group(0)
        kind = "password" if _PASSWORD_WORDS.search(key) else "secret_assignment"
        counts[kind] += 1
        group = "quoted" if quoted else "bare"
        s, e = m.span(group)
        return m.group(0)[: s - m.start()] + placeholder(kind) + m.group(0)[e - m.start():]
    return _ASSIGNMENT.sub(_assign, text)


class _Plugin:
    """One detect-secrets plugin, adapted to return raw secret values from a line."""

    def __init__(self, plugin: object, name: str, analyze: Callable[[str], Iterable[str]]):
        self.plugin, self.name, self.analyze = plugin, name, analyze


@lru_cache(maxsize=1)
def _plugins() -> tuple[_Plugin, ...]:
    """detect-secrets' plugins, built once; verification (network) is never called."""
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
        elif isinstance(plugin, KeywordDetector):
            analyze = plugin.analyze_string  # quotes required: the code flavour; bare config values are layer 1's
        else:
            analyze = plugin.analyze_string
        out.append(_Plugin(plugin, secret_type, analyze))
    return tuple(out)


def _ds_false_positive(secret: str, line: str, plugin: _Plugin) -> bool:
    """detect-secrets' own heuristic filters, plus Forge's placeholder rules."""
    from detect_secrets.filters import heuristic as h

    if "REDACTED" in secret.upper():
        return True
    if plugin.name == "Private Key":
        return False
    if plugin.name == "Secret Keyword" and (h.is_indirect_reference(line) or _is_placeholder(secret) or len(secret) < 3):
        return True
    return (
        h.is_sequential_string(secret) or h.is_potential_uuid(secret)
        or h.is_likely_id_string(secret, line, plugin.plugin) or h.is_templated_secret(secret)
        or h.is_prefixed_with_dollar_sign(secret) or h.is_not_alphanumeric_string(secret)
    )


def _scan_line(line: str, counts: Counter) -> str:
    keylike = None
    for plugin in _plugins():
        try:
            found = list(plugin.analyze(line))
        except Exception:  # a plugin bug must not stop scrubbing the rest of the line
            continue
        for secret in found:
            if not secret or secret not in line or _ds_false_positive(secret, line, plugin):
                continue
            if plugin.name in _DS_ENTROPY:
                if keylike is None:
                    keylike = bool(_KEYLIKE_LINE.search(line))
                if not keylike:
                    continue  # high entropy alone (hashes, test vectors) is not a secret
            kind = _DS_NAMES.get(plugin.name) or re.sub(r"\W+", "_", plugin.name).strip("_").lower()
            n = line.count(secret)
            counts[kind] += n
            line = line.replace(secret, placeholder(kind))
    return line


def scrub_text(text: str) -> tuple[str, Counter]:
    """The text with every secret found replaced by a placeholder, and counts by secret type."""
    counts: Counter = Counter()
    if not text:
        return text, counts
    text = _apply_patterns(text, counts)
    lines = text.splitlines(keepends=True)
    changed = False
    for i, line in enumerate(lines):
        if len(line) > 20_000 or not _GATE.search(line):
            continue  # very long lines are data, not config; the gate spares most code lines
        new = _scan_line(line, counts)
        if new != line:
            lines[i] = new
            changed = True
    return ("".join(lines) if changed else text), counts
