"""Which programming languages a session, and each exchange in it, is about: multi-label, weighted,
from what the agent did.

Signals, strongest first: files the agent edited (tool `filePath`, `apply_patch` headers, patch
parts), build and test commands it ran (`cargo`, `pytest`, `go test`, …), what those tools printed
(`error[E0308]`, `TS2322`, `3 passed`, `--- FAIL`, `file.py:12`), files it read or searched,
fenced code blocks in the conversation, and file names mentioned in the text. Each signal adds
points to a language; a session belongs to every language holding at least THRESHOLD of its points.
Shell scripts and project files (Cargo.toml, package.json…) count half: every project has some.
A session with no signal is `general`. A subagent session (parent set) inherits its parent's
labels besides its own; a parent with no signal of its own (it only delegated) is classified by
its subagents' work.

An exchange (one user turn and the assistant steps answering it) is scored by the same code
(`evidence_of` over its messages) and classified by `classify_exchange`: with a decisive signal
of its own (at least MIN_POINTS, and a language holding THRESHOLD of them) it gets the languages
its own weights select, whatever its session's are; with none (e.g. "thanks, now explain") it
inherits its session's weights and labels, and `decided_by` is INHERITED. npm-style evidence in an
exchange that shows neither TypeScript nor JavaScript files goes to the session's choice of the two.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from forge_assets.languages import EXTENSIONS, language_of_fence, language_of_path

from .model import LoadResult, Message, Session
from .patches import patch_files

GENERAL = "general"
INHERITED = "session"  # decided_by of an exchange without a decisive signal of its own
THRESHOLD = 0.2  # share of a session's points a language needs to be one of its labels
MIN_POINTS = 1.0  # fewer points than this in total and the session is `general`
_JS = "javascript|typescript"  # npm & co.: resolved to typescript or javascript per session

POINTS: dict[str, float] = {
    "edit": 3.0, "command": 1.5, "output": 1.5, "read": 1.0, "patch": 1.0, "fence": 1.0, "mention": 0.5,
}
EDIT_TOOLS = frozenset({"edit", "write", "multiedit", "apply_patch", "patch", "notebookedit"})
# Fenced blocks of shell are how agents show any command; they say nothing about the project.
_FENCE_SKIP = frozenset({"shell"})

# Files that name a project's language without being written in it (weighted half).
PROJECT_FILES: dict[str, str] = {
    "Cargo.toml": "rust", "Cargo.lock": "rust", "rust-toolchain.toml": "rust",
    "pyproject.toml": "python", "requirements.txt": "python", "setup.cfg": "python", "Pipfile": "python",
    "uv.lock": "python", "poetry.lock": "python", "tox.ini": "python", "pytest.ini": "python",
    "package.json": _JS, "package-lock.json": _JS, "pnpm-lock.yaml": _JS, "yarn.lock": _JS, "bun.lock": _JS, "bun.lockb": _JS,
    "tsconfig.json": "typescript", "go.mod": "go", "go.sum": "go", "Gemfile.lock": "ruby", ".rubocop.yml": "ruby",
    "pom.xml": "java", "build.gradle": "java", "build.gradle.kts": "kotlin", "CMakeLists.txt": "cpp", "composer.json": "php",
}
_PROJECT_SUFFIXES: dict[str, str] = {".gemspec": "ruby", ".csproj": "csharp"}

_COMMANDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:cargo|rustc|rustup|rustfmt|clippy-driver)\b"), "rust"),
    (re.compile(r"\b(?:tsc|ts-node|tsx|deno)\b"), "typescript"),
    (re.compile(r"(?<![\w-])(?:npm|pnpm|yarn|npx|bun|bunx|node|vitest|jest|eslint|prettier|vite)(?![\w-])"), _JS),
    (re.compile(r"(?<![\w-])(?:pip3?|uv|uvx|pytest|python3?(?:\.\d+)?|poetry|ruff|mypy|tox|pipx|conda|black|pyright)(?![\w-])"), "python"),
    (re.compile(r"\bgo\s+(?:build|test|run|mod|vet|get|install|generate|fmt|work)\b|\b(?:gofmt|golangci-lint|gopls)\b"), "go"),
    (re.compile(r"(?<![\w-])(?:bundle|rails|rake|rspec|gem|irb|rubocop|ruby)(?![\w-])"), "ruby"),
    (re.compile(r"\bswift\s+(?:build|test|run|package)\b|\b(?:swiftc|xcodebuild|swiftlint)\b"), "swift"),
    (re.compile(r"(?<![\w-])(?:mvn|gradlew?|javac)(?![\w-])"), "java"),
    (re.compile(r"\bkotlinc\b"), "kotlin"),
    (re.compile(r"(?<![\w+-])(?:g\+\+|clang\+\+|cmake)(?![\w+-])"), "cpp"),
    (re.compile(r"(?<![\w+-])gcc(?![\w+-])"), "c"),
    (re.compile(r"\bdotnet\b"), "csharp"),
    (re.compile(r"(?<![\w-])(?:composer|php|phpunit)(?![\w-])"), "php"),
]

_OUTPUTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"error\[E\d{4}\]|^\s*Compiling \S+ v\d|test result: (?:ok|FAILED)\.|Finished `?(?:dev|test|release)|panicked at ", re.M), "rust"),
    (re.compile(r"\bTS\d{4}\b"), "typescript"),
    (re.compile(r"Traceback \(most recent call last\)|=+ test session starts =+|\b\d+ (?:passed|failed)(?:, \d+ \w+)* in [\d.]+s\b|ModuleNotFoundError"), "python"),
    (re.compile(r"^--- (?:FAIL|PASS):|^(?:ok|FAIL)\s+\S+\s+[\d.]+s$|^go: downloading|^panic: ", re.M), "go"),
    (re.compile(r"npm ERR!|npm error|\bTests:\s+\d+ (?:passed|failed)|node_modules/"), _JS),
    (re.compile(r"\b\d+ examples?, \d+ failures?|\.rb:\d+:in "), "ruby"),
    (re.compile(r"\.swift:\d+:\d+: (?:error|warning)|Build complete!|Test Suite '.*' (?:passed|failed)"), "swift"),
]

_EXT_ALT = "|".join(sorted((re.escape(e[1:]) for e in EXTENSIONS), key=len, reverse=True))
_PATH_IN_TEXT = re.compile(rf"(?<![\w/.-])((?:[\w.-]+/)*[\w-][\w.-]*\.(?:{_EXT_ALT}))(?![\w])")
_PATH_WITH_LINE = re.compile(rf"(?<![\w/.-])((?:[\w.-]+/)*[\w-][\w.-]*\.(?:{_EXT_ALT})):\d+")
_SCAN_CHARS = 20_000  # a huge tool output is scanned at its head and tail only, keeping classification linear and fast
_FENCE = re.compile(r"^\s*(?:```+|~~~+)[ \t]*([^\s`~]+)", re.M)


@dataclass
class Evidence:
    """Points per language, split by the kind of signal that gave them."""

    points: dict[str, Counter] = field(default_factory=dict)  # kind → Counter(language → points)

    def add(self, kind: str, language: str | None, scale: float = 1.0) -> None:
        if language:
            self.points.setdefault(kind, Counter())[language] += POINTS[kind] * scale

    def __iadd__(self, other: "Evidence") -> "Evidence":
        for kind, counts in other.points.items():
            self.points.setdefault(kind, Counter()).update(counts)
        return self

    def totals(self) -> Counter:
        """Points per language over all kinds."""
        out: Counter = Counter()
        for counts in self.points.values():
            out.update(counts)
        return out

    def resolved(self, prefer: str | None = None) -> "Evidence":
        """A copy where npm-style evidence goes to typescript when this evidence shows more of it than of
        javascript, to javascript when it shows more javascript, and on a tie to `prefer` (default javascript)."""
        totals = self.totals()
        ts, js = totals["typescript"], totals["javascript"]
        target = "typescript" if ts > js else "javascript" if js > ts else prefer or "javascript"
        out = Evidence()
        for kind, counts in self.points.items():
            c = Counter()
            for lang, pts in counts.items():
                c[target if lang == _JS else lang] += pts
            out.points[kind] = c
        return out


@dataclass
class Classification:
    """A session's (or an exchange's) languages: normalised weights, the labels kept, and which signals decided."""

    weights: dict[str, float]
    signals: Counter  # kind of signal → points it gave (all languages)
    languages: frozenset[str]
    decided_by: str  # the signal kind that gave the labels most points; "parent", "none" or (exchanges) INHERITED otherwise

    def __contains__(self, language: str) -> bool:
        return language in self.languages


def path_language(path: str) -> tuple[str | None, float]:
    """The language a path points to and how much it counts (shell scripts and project files such as
    Cargo.toml count half)."""
    lang = language_of_path(path)
    if lang:
        return lang, 0.5 if lang == "shell" else 1.0
    p = PurePosixPath(path.replace("\\", "/"))
    lang = PROJECT_FILES.get(p.name) or _PROJECT_SUFFIXES.get(p.suffix.lower())
    return lang, 0.5


def _add_path(ev: Evidence, seen: set[tuple[str, str]], kind: str, path: Any) -> None:
    if not isinstance(path, str) or not path or (kind, path) in seen:
        return
    seen.add((kind, path))
    lang, scale = path_language(path)
    ev.add(kind, lang, scale)


def _add_command(ev: Evidence, seen: set[tuple[str, str]], command: str) -> None:
    for pattern, lang in _COMMANDS:
        if pattern.search(command):
            ev.add("command", lang)
    for m in _PATH_IN_TEXT.finditer(_clip(command)):
        _add_path(ev, seen, "mention", m.group(1))


def _clip(text: str) -> str:
    """The head and tail of a long text: where compilers and test runners print what matters."""
    return text if len(text) <= 2 * _SCAN_CHARS else text[:_SCAN_CHARS] + "\n" + text[-_SCAN_CHARS:]


def _add_output(ev: Evidence, text: str) -> None:
    text = _clip(text)
    langs = {lang for pattern, lang in _OUTPUTS if pattern.search(text)}
    langs |= {language_of_path(m.group(1)) for m in _PATH_WITH_LINE.finditer(text)} - {None}
    for lang in langs:
        ev.add("output", lang)


def _add_text(ev: Evidence, seen: set[tuple[str, str]], text: str) -> None:
    text = _clip(text)
    for m in _FENCE.finditer(text):
        lang = language_of_fence(m.group(1))
        if lang not in _FENCE_SKIP:
            ev.add("fence", lang)
    for m in _PATH_IN_TEXT.finditer(text):
        _add_path(ev, seen, "mention", m.group(1))


def _add_tool(ev: Evidence, seen: set[tuple[str, str]], part: dict[str, Any]) -> None:
    tool = str(part.get("tool") or "").lower()
    state = part.get("state") if isinstance(part.get("state"), dict) else {}
    inp = state.get("input") if isinstance(state.get("input"), dict) else {}
    kind = "edit" if tool in EDIT_TOOLS else "read"
    for key in ("filePath", "path", "file"):
        _add_path(ev, seen, kind, inp.get(key))
    for edit in inp.get("edits") or []:
        if isinstance(edit, dict):
            _add_path(ev, seen, "edit", edit.get("filePath"))
    if isinstance(inp.get("patchText"), str):
        for f in patch_files(inp["patchText"]):
            _add_path(ev, seen, "edit", f)
    # File filters such as **/*.rs (a grep `pattern` is a regex, not a path).
    for key in ("pattern",) if tool == "glob" else ("include", "glob") if tool == "grep" else ():
        _add_path(ev, seen, "read", inp.get(key))
    if isinstance(inp.get("command"), str):
        _add_command(ev, seen, inp["command"])
    out = state.get("output") if state.get("output") is not None else state.get("error")
    if isinstance(out, str) and out:
        _add_output(ev, out)


def evidence_of(messages: Iterable[Message]) -> Evidence:
    """Every language signal in some messages: a whole session's, or one exchange's."""
    ev = Evidence()
    seen: set[tuple[str, str]] = set()
    for message in messages:
        for part in message.parts:
            ptype = part.get("type")
            if ptype == "tool":
                _add_tool(ev, seen, part)
            elif ptype == "patch":
                for f in part.get("files") or []:
                    _add_path(ev, seen, "patch", f)
            elif ptype == "text" and not part.get("synthetic") and isinstance(part.get("text"), str):
                _add_text(ev, seen, part["text"])
            elif ptype == "file":
                _add_path(ev, seen, "read", part.get("filename") or part.get("url"))
    return ev


def evidence(session: Session) -> Evidence:
    """Every language signal in one session's own messages."""
    return evidence_of(session.messages)


def _weights(ev: Evidence) -> dict[str, float]:
    totals = ev.totals()
    total = sum(totals.values())
    if total < MIN_POINTS:
        return {}
    return {lang: pts / total for lang, pts in totals.most_common() if pts > 0}


def _decider(ev: Evidence, languages: Iterable[str]) -> str:
    langs = set(languages)
    scored = {kind: sum(c[l] for l in langs) for kind, c in ev.points.items()}
    best = max(scored.items(), key=lambda kv: kv[1], default=("none", 0.0))
    return best[0] if best[1] > 0 else "none"


def _signals(ev: Evidence) -> Counter:
    return Counter({kind: round(sum(c.values()), 3) for kind, c in ev.points.items() if sum(c.values()) > 0})


def from_evidence(ev: Evidence, parent: Classification | None = None) -> Classification:
    """A Classification from a session's evidence, merged with its parent session's when it has one."""
    ev = ev.resolved()
    own = _weights(ev)
    labels = {lang for lang, w in own.items() if w >= THRESHOLD}
    if parent is not None and parent.languages - {GENERAL}:
        if not own:
            return Classification(dict(parent.weights), Counter(), parent.languages, "parent")
        merged = {l: (own.get(l, 0.0) + parent.weights.get(l, 0.0)) / 2 for l in set(own) | set(parent.weights)}
        languages = frozenset(labels | (parent.languages - {GENERAL}))
        return Classification(dict(sorted(merged.items(), key=lambda kv: -kv[1])), _signals(ev), languages, _decider(ev, labels) if labels else "parent")
    if not labels:
        return Classification({GENERAL: 1.0}, _signals(ev), frozenset({GENERAL}), "none")
    return Classification(own, _signals(ev), frozenset(labels), _decider(ev, labels))


def classify(session: Session, parent: Classification | None = None) -> Classification:
    """A single session's languages from its own signals (and its parent's classification, if given).

    Use `classify_all` to classify sessions together with their subagents.
    """
    return from_evidence(evidence(session), parent)


def classify_exchange(messages: Iterable[Message], session: Classification) -> Classification:
    """One exchange's languages (a user message and the assistant steps answering it), given its session's.

    With a decisive signal of its own the exchange gets the labels its own weights select (THRESHOLD,
    MIN_POINTS as for sessions); without one it inherits the session's weights and labels
    (`decided_by` = INHERITED, `signals` still its own, weak, ones).
    """
    w = session.weights
    ev = evidence_of(messages).resolved("typescript" if w.get("typescript", 0.0) > w.get("javascript", 0.0) else "javascript")
    own = _weights(ev)
    labels = {lang for lang, weight in own.items() if weight >= THRESHOLD}
    if labels:
        return Classification(own, _signals(ev), frozenset(labels), _decider(ev, labels))
    return Classification(dict(session.weights), _signals(ev), session.languages, INHERITED)


def classify_all(sessions: Iterable[Session]) -> dict[str, Classification]:
    """Every session's classification, subagent sessions attributed through their parents.

    A child merges its own evidence with its parent's result and keeps the parent's labels. A
    session without evidence of its own (it only delegated) is classified by its descendants'
    evidence instead, since their work was done for it.
    """
    by_id = {s.id: s for s in sessions}
    own = {sid: evidence(s) for sid, s in by_id.items()}
    children: dict[str, list[str]] = {}
    for s in by_id.values():
        if s.parent_id and s.parent_id in by_id and s.parent_id != s.id:
            children.setdefault(s.parent_id, []).append(s.id)
    subtree: dict[str, Evidence] = {}

    def tree(sid: str, path: frozenset[str]) -> Evidence:
        if sid not in subtree:
            ev = Evidence()
            ev += own[sid]
            for child in children.get(sid, []):
                if child not in path:  # a parent cycle in broken data must not recurse forever
                    ev += tree(child, path | {child})
            subtree[sid] = ev
        return subtree[sid]

    def basis(sid: str) -> Evidence:
        mine = own[sid]
        return mine if sum(mine.totals().values()) >= MIN_POINTS else tree(sid, frozenset({sid}))

    out: dict[str, Classification] = {}
    roots = [sid for sid, s in by_id.items() if not (s.parent_id and s.parent_id in by_id and s.parent_id != s.id)]
    stack: list[tuple[str, Classification | None]] = [(sid, None) for sid in roots]
    while stack:
        sid, parent = stack.pop()
        if sid in out:
            continue
        out[sid] = from_evidence(basis(sid), parent)
        stack.extend((child, out[sid]) for child in children.get(sid, []))
    for sid in by_id:  # sessions only reachable through a cycle
        out.setdefault(sid, from_evidence(own[sid]))
    return out


def classifications(result: LoadResult) -> dict[str, Classification]:
    """Classifications of a LoadResult's sessions, computed once and cached on the result."""
    cached = result.cache.get("classifications")
    if cached is None or cached[0] != len(result.sessions):
        cached = (len(result.sessions), classify_all(result.sessions))
        result.cache["classifications"] = cached
    return cached[1]


def languages_seen(result: LoadResult) -> set[str]:
    """The languages at least one loaded session is classified as (`general` excluded)."""
    return {lang for c in classifications(result).values() for lang in c.languages} - {GENERAL}
