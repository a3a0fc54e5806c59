"""Markdown documentation as question -> answer samples.

A repository's Markdown is a documentation source attached to its code languages:

- an architecture decision record (ADR: a file under ``docs/adr/``, ``doc/architecture/decisions/``,
  ``decisions/``..., or one whose headings include Decision and one of Status / Context /
  Consequences) gives "In `repo`, what was decided about <title>, and why?" -> its Status,
  Decision, Rationale and Context, and "... what are the consequences of <title>?" -> its
  Consequences when it has them;
- a README or any other Markdown file gives one pair per section with real prose: the heading
  as a question ("how do I install it?" for Installation, else "what does the README say about
  <heading>?") -> the section's text, code fences kept.

YAML front matter, HTML comments and badge images are stripped; sections that are only links,
badges, a table of contents, or under MIN_WORDS words give nothing; answers are cut at a
paragraph boundary (never inside a code fence) to max_answer_chars. The Markdown splitter is a
small hand-written one: ATX headings ``#``..``######`` and setext headings, outside code fences.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from forge_assets.mining.instruct import chat_text
from forge_assets.scrub import scrub_path

MIN_WORDS = 20
MAX_SECTIONS_PER_FILE = 40
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx", ".mdown", ".mkd")

_ADR_DIRS = {"adr", "adrs", "decisions", "decision-records", "decision-log", "architecture-decisions",
             "architecture-decision-records", "architectural-decisions"}
_ADR_FILE = re.compile(r"(?i)^adr[-_ ]?\d+")

_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}(?=[^`]*$)|~{3,})(?P<info>.*)$")  # a backtick fence's info has no backtick
_ATX = re.compile(r"^ {0,3}(?P<hashes>#{1,6})(?:[ \t]+(?P<title>.*))?$")
_SETEXT = re.compile(r"^ {0,3}(?P<line>=+|-+)[ \t]*$")
_FRONT_MATTER = re.compile(r"\A(?:\ufeff)?---[ \t]*\r?\n(?P<body>.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)
# Link and image parts are bounded (alt text 300, URL 1,000 characters) so a line of brackets stays linear to scan.
_ALT, _URL = r"[^\]\n]{0,300}+", r"[^)\s]{0,1000}+"  # possessive: a failed match does not backtrack
_BADGE_URL = re.compile(r"(?i)badge|shields\.io|travis-ci|circleci|codecov|coveralls|/workflows/|pepy\.tech|readthedocs")
_LINKED_IMAGE = re.compile(rf"\[!\[{_ALT}\]\({_URL}\)\]\({_URL}\)|\[!\[{_ALT}\]\[{_ALT}\]\]\[{_ALT}\]")  # [![alt](img)](link)
_IMAGE = re.compile(rf"!\[({_ALT})\]\(({_URL})(?:[ \t]{{1,20}}\"[^\"\n]{{0,300}}\")?\)")
_IMG_TAG = re.compile(r"<img\b[^<>\n]{0,2000}>", re.I)
_EMPTY_ANCHOR = re.compile(r"<a\b[^<>\n]{0,2000}>[ \t]{0,100}</a>", re.I)
_LINK = re.compile(rf"\[({_ALT})\]\([^)\n]{{0,1000}}+\)|\[({_ALT})\]\[{_ALT}\]")
_TAG = re.compile(r"<[^<>\n]{1,300}>")
_WORD = re.compile(r"[^\W_][\w'-]*")
_TOC_TITLES = {"table of contents", "contents", "toc", "index", "navigation"}


@dataclass(frozen=True)
class Section:
    """A heading of a Markdown file and its place: lines [body_start, end) hold its own text (to the next heading)."""

    level: int
    title: str  # cleaned: emphasis, links and numbering removed
    line: int  # the heading's first line
    body_start: int
    end: int


def strip_markdown_noise(text: str) -> str:
    """The text without YAML front matter, HTML comments (outside code fences) and badge images."""
    text = _FRONT_MATTER.sub("", text, count=1)
    out, fence, in_comment = [], None, False
    for line in text.splitlines():
        if fence is None and not in_comment:
            m = _FENCE.match(line)
            if m:
                fence = m["fence"]
                out.append(line)
                continue
        elif fence is not None:
            if _closes(fence, line):
                fence = None
            out.append(line)
            continue
        kept = ""
        while line:
            if in_comment:
                end = line.find("-->")
                if end < 0:
                    line = ""
                    break
                line, in_comment = line[end + 3:], False
            else:
                start = line.find("<!--")
                if start < 0:
                    kept += line
                    break
                kept += line[:start]
                line, in_comment = line[start + 4:], True
        kept = _LINKED_IMAGE.sub("", kept)
        kept = _IMAGE.sub(lambda m: "" if _BADGE_URL.search(m[2]) else m[0], kept)
        kept = _IMG_TAG.sub(lambda m: "" if _BADGE_URL.search(m[0]) else m[0], kept)
        out.append(_EMPTY_ANCHOR.sub("", kept).rstrip())
    return "\n".join(out)


def _closes(fence: str, line: str) -> bool:
    """Whether line closes a code fence opened with fence (the same character, at least as many, nothing after)."""
    return re.match(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$", line) is not None


def _code_lines(lines: list[str]) -> list[bool]:
    """For each line, whether it is a code fence line or inside a fence."""
    out, fence = [], None
    for line in lines:
        if fence is not None:
            out.append(True)
            if _closes(fence, line):
                fence = None
            continue
        m = _FENCE.match(line)
        if m:
            fence = m["fence"]
        out.append(m is not None)
    return out


def front_matter(text: str) -> dict:
    """A file's YAML front matter as a mapping (empty when absent or unreadable)."""
    m = _FRONT_MATTER.match(text)
    if not m:
        return {}
    import yaml

    try:
        data = yaml.load(m["body"], Loader=getattr(yaml, "CBaseLoader", yaml.BaseLoader))  # noqa: S506 - str/list/dict only
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def clean_heading(title: str) -> str:
    """A heading's words: links, emphasis, trailing colons and list numbering removed ("1. **Context**:" -> "Context")."""
    title = _IMAGE.sub("", title)
    title = _LINK.sub(lambda m: m[1] if m[1] is not None else m[2], title)
    title = _TAG.sub("", title)
    title = re.sub(r"(\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w))", "", title)
    title = re.sub(r"^\s*(?:\d+(?:\.\d+)*[.)]?|[ivx]+[.)])\s+", "", title, flags=re.I)
    return title.strip().rstrip(":").strip()


def split_sections(lines: list[str]) -> list[Section]:
    """The headings of Markdown lines (ATX and setext, outside code fences), each with its own text's span."""
    heads: list[tuple[int, str, int, int]] = []  # (level, raw title, heading line, body start)
    for i, (line, code) in enumerate(zip(lines, _code_lines(lines))):
        if code:
            continue
        m = _ATX.match(line)
        if m:
            title = (m["title"] or "").rstrip()
            bare = title.rstrip("#")
            if not bare or bare[-1] in " \t":  # a closing sequence: "## Title ##"
                title = bare.rstrip()
            heads.append((len(m["hashes"]), title, i, i + 1))
            continue
        m = _SETEXT.match(line)
        if m and i > 0 and _setext_text(lines, i - 1) and not (heads and heads[-1][2] == i - 1):
            heads.append((1 if m["line"][0] == "=" else 2, lines[i - 1].strip(), i - 1, i + 1))
    out = []
    for k, (level, title, line, body_start) in enumerate(heads):
        end = heads[k + 1][2] if k + 1 < len(heads) else len(lines)
        out.append(Section(level, clean_heading(title), line, body_start, end))
    return out


def _setext_text(lines: list[str], j: int) -> bool:
    """Whether line j is a one-line paragraph a setext underline can make a heading."""
    line = lines[j]
    if not line.strip() or line.startswith(("    ", "\t")) or re.match(r"^\s*(?:[-*+>|]|\d+[.)])\s", line):
        return False
    return j == 0 or not lines[j - 1].strip()


def _body(lines: list[str], sections: list[Section], k: int, stop_level: int | None = None) -> str:
    """Section k's text with its subsections: to the next heading of its level or higher (or of stop_level or higher)."""
    s = sections[k]
    stop = s.level if stop_level is None else min(stop_level, 6)
    end = next((t.line for t in sections[k + 1:] if t.level <= stop), len(lines))
    return _tidy("\n".join(lines[s.body_start:end]))


def _tidy(text: str) -> str:
    text = re.sub(r"\n[ \t]*(?:\n[ \t]*){2,}", "\n\n", text)
    return text.strip("\n").rstrip()


def words(text: str) -> int:
    """The words a section says: link-only lines (tables of contents, link lists) and badges do not count."""
    n = 0
    lines = text.splitlines()
    for line, code in zip(lines, _code_lines(lines)):
        if code:
            n += 0 if _FENCE.match(line) else len(line.split())
            continue
        plain = _IMAGE.sub("", line)
        bare = _LINK.sub("", plain)
        if plain != bare and len(_WORD.findall(bare)) < 3:
            continue  # a line that is only links: a table of contents, a list of related projects
        n += len(_WORD.findall(_LINK.sub(lambda m: m[1] or m[2] or "", plain)))
    return n


def cap(text: str, max_chars: int) -> str:
    """text cut at a paragraph boundary outside code fences to at most max_chars (a too-long first paragraph at a line)."""
    if len(text) <= max_chars:
        return text
    blocks, current = [], []
    lines = text.split("\n")
    for line, code in zip(lines, _code_lines(lines)):
        if not line.strip() and not code and current:
            blocks.append("\n".join(current))
            current = []
        elif line.strip() or current:
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    out = ""
    for block in blocks:
        joined = block if not out else out + "\n\n" + block
        if len(joined) > max_chars:
            break
        out = joined
    if out:
        return out
    head = blocks[0][: max(0, max_chars - 4)]
    head = head[: head.rfind("\n")] if "\n" in head else head[: head.rfind(" ")] if " " in head else head
    opened = None
    for line in head.split("\n"):
        if opened is not None:
            opened = None if _closes(opened, line) else opened
        elif _FENCE.match(line):
            opened = _FENCE.match(line)["fence"]
    return head.rstrip() + ("\n" + opened if opened else "")


def is_markdown(path: str) -> bool:
    return path.lower().endswith(MARKDOWN_SUFFIXES)


_ADR_KEYS = {
    "decision": re.compile(r"^(?:the )?(?:decision|decisions|decision outcome|decision made|decided|chosen option|decision description)$"),
    "status": re.compile(r"^status$"),
    "context": re.compile(r"^(?:context|context and problem statement|problem statement|background|issue|problem|motivation|"
                          r"context and requirements|context and problem)$"),
    "rationale": re.compile(r"^(?:rationale|reasoning|justification|argument|decision rationale)$"),
    "consequences": re.compile(r"^(?:consequences|implications|consequences and risks)$"),
}


def _key(title: str) -> str:
    t = re.sub(r"[^a-z ]", " ", title.lower())
    return " ".join(t.split())


def _adr_parts(sections: list[Section]) -> dict[str, int]:
    """The index of the first section of each ADR part (decision, status, context, rationale, consequences)."""
    parts: dict[str, int] = {}
    for k, s in enumerate(sections):
        if k == 0 and _has_title(sections):
            continue  # "# Decisions" names the document, not its decision
        key = _key(s.title)
        for part, pattern in _ADR_KEYS.items():
            if part not in parts and pattern.match(key):
                parts[part] = k
    return parts


def _has_title(sections: list[Section]) -> bool:
    """Whether the first heading is the document's title: the only one at the shallowest level."""
    if not sections:
        return False
    top = min(s.level for s in sections)
    return sections[0].level == top and sum(s.level == top for s in sections) == 1


def is_decision_record(path: str, text: str) -> bool:
    """Whether a Markdown file is an architecture decision record: by its folder or name, or by its headings."""
    if not is_markdown(path):
        return False
    parts = [p.lower() for p in path.replace("\\", "/").split("/")]
    base = parts[-1]
    if base.startswith("readme") or base in ("index.md", "template.md") or base.startswith("_"):
        folder_says = False  # an ADR folder's index or template is not itself a record
    else:
        folder_says = bool(_ADR_DIRS & set(parts[:-1])) or "/".join(parts[:-1]).endswith("architecture/decisions") \
            or bool(_ADR_FILE.match(base))
    if folder_says:
        return True
    lines = strip_markdown_noise(text).splitlines()
    found = _adr_parts(split_sections(lines))
    return "decision" in found and bool({"status", "context", "consequences"} & found.keys())


def _title(sections: list[Section], path: str) -> str:
    """An ADR's or document's title: its first top-level heading, else its file (or folder) name."""
    first = next((s for s in sections if s.level == min(t.level for t in sections)), None) if sections else None
    title = first.title if first else ""
    title = re.sub(r"(?i)^(?:architecture\s+)?decision\s+record(?:\s*\(adr\))?\s*(?:for\b|of\b|:|-|–)\s*", "", title)
    title = re.sub(r"(?i)^(?:adr|rfc)[-\s]?\d*\s*[:.\-–]?\s*", "", title)
    title = re.sub(r"^\d+[.:)\-]?\s+", "", title).strip().strip("\"'").strip()
    if not title:
        base = posixpath.splitext(posixpath.basename(path))[0]
        if base.lower() in ("readme", "index") and "/" in path:
            base = posixpath.basename(posixpath.dirname(path))
        title = re.sub(r"^\d+[-_ ]*", "", base).replace("-", " ").replace("_", " ").strip() or base
    return title


def _lower_first(title: str) -> str:
    """"Use PostgreSQL" -> "use PostgreSQL"; acronyms and code ("CSS framework", "`forge run`") stay."""
    if len(title) > 1 and title[0].isupper() and title[1].islower():
        return title[0].lower() + title[1:]
    return title


def _status(text: str, lines: list[str], sections: list[Section], parts: dict[str, int]) -> str:
    if "status" in parts:
        own = _body(lines, sections, parts["status"])
        first = own.split("\n\n")[0].strip()
        if first:
            return first
    meta = front_matter(text).get("status")
    if isinstance(meta, str) and meta.strip():
        return meta.strip()
    intro_end = sections[1].line if len(sections) > 1 else len(lines)
    for line in lines[:intro_end]:
        m = re.match(r"^\s*(?:[-*+]\s*)?\**status\**\s*:\**\s*(?P<status>.+)$", line, re.I)
        if m:
            return m["status"].strip()
    return ""


def _adr_samples(text: str, lines: list[str], sections: list[Section], path: str, repo: str, max_chars: int) -> list[tuple[str, str]]:
    parts = _adr_parts(sections)
    if "decision" not in parts:
        return []
    decision = _body(lines, sections, parts["decision"])
    if words(decision) < 3:
        return []
    title = _title(sections, path)
    pieces = []
    status = _status(text, lines, sections, parts)
    if status:
        pieces.append(f"**Status:** {status}")
    pieces.append(f"**Decision**\n\n{decision}")
    for part, label in (("rationale", "Rationale"), ("context", "Context")):
        if part in parts:
            body = _body(lines, sections, parts[part])
            if body and words(body) >= 3:
                pieces.append(f"**{label}**\n\n{body}")
    where = scrub_path(repo)
    out = [("adr", chat_text(f"In `{where}`, what was decided about {title}, and why?", cap("\n\n".join(pieces), max_chars)))]
    if "consequences" in parts:
        consequences = _body(lines, sections, parts["consequences"])
        if words(consequences) >= 3:
            out.append(("adr", chat_text(f"In `{where}`, what are the consequences of {title}?", cap(consequences, max_chars))))
    return out


# (heading pattern, question) for the headings READMEs share.
_QUESTIONS = [
    (r"install(?:ation|ing)?|how to install|setup|set up|setting up", "how do I install it?"),
    (r"(?:getting|get) started|quick ?start|quick start guide|first steps", "how do I get started?"),
    (r"usage|how to use|using it|basic usage|use", "how do I use it?"),
    (r"config|configuration|configuring|settings", "how do I configure it?"),
    (r"build(?:ing)?(?: from source)?|compil(?:e|ing)", "how do I build it?"),
    (r"tests?|testing|running (?:the )?tests", "how do I run the tests?"),
    (r"contribut(?:e|ing|ion|ions)|how to contribute|contributing guidelines", "how do I contribute?"),
    (r"requirements|prerequisites|dependencies|system requirements", "what are the requirements?"),
    (r"development|developing|local development|development setup", "how do I set up a development environment?"),
    (r"deploy(?:ment|ing)?", "how do I deploy it?"),
    (r"features|key features|highlights", "what are its features?"),
    (r"overview|about|introduction|intro|description|what is (?:it|this)", "what is it?"),
    (r"examples?", "can you show an example?"),
    (r"troubleshooting|known issues|common problems", "how do I troubleshoot problems?"),
    (r"architecture|design|how it works", "how does it work?"),
    (r"faq|frequently asked questions", "what are the frequently asked questions?"),
    (r"licen[cs]e|licensing", "what is its license?"),
    (r"upgrad(?:e|ing)|migration|migrating", "how do I upgrade?"),
    (r"api|api reference|reference", "what does its API look like?"),
]
_QUESTION_RES = [(re.compile(rf"^(?:{p})$"), q) for p, q in _QUESTIONS]


def _mapped(title: str) -> str | None:
    key = _key(title)
    for pattern, question in _QUESTION_RES:
        if pattern.match(key):
            return question
    if title.endswith("?") and len(title) > 3:
        return _lower_first(title)
    m = re.match(r"(?i)^how (?:to|do i|can i) (?P<rest>.+)$", title)
    if m:
        return f"how do I {m['rest'].rstrip('.')}?"
    return None


def _question(title: str, parent: str | None, doc_word: str) -> tuple[str, bool]:
    """The question a section's heading asks, and whether it names the document already."""
    own = _mapped(title)
    if own:
        return own, False
    inherited = _mapped(parent) if parent else None
    if inherited:
        return f"{inherited[:-1]} ({title})?", False
    under = f" under {parent}" if parent else ""
    return f"what does {doc_word} say about {title.rstrip('?')}{under}?", True


def _section_samples(lines: list[str], sections: list[Section], path: str, repo: str, kind: str,
                     max_chars: int) -> list[tuple[str, str]]:
    where, shown = scrub_path(repo), scrub_path(path)
    root_readme = kind == "readme" and "/" not in path.strip("/")
    doc_word = "the README" if root_readme else f"`{shown}`"
    title_section = sections[0] if _has_title(sections) else None
    section_levels = sorted({s.level for s in sections if s is not title_section})[:2]
    deepest = section_levels[-1] if section_levels else 6
    candidates: list[tuple[str, str]] = []
    if title_section is not None:
        intro = _body(lines, sections, 0, stop_level=deepest)
        if words(intro) >= MIN_WORDS:
            name = title_section.title.rstrip("?")
            question = f"what is {name}?" if root_readme else f"what does {doc_word} say about {name}?"
            candidates.append((question, intro))
    parents: dict[int, str] = {}
    for k, s in enumerate(sections):
        if s is title_section or s.level not in section_levels:
            continue
        parents = {lv: t for lv, t in parents.items() if lv < s.level}
        parent = parents.get(section_levels[0]) if s.level != section_levels[0] else None
        parents[s.level] = s.title
        if not s.title or _key(s.title) in _TOC_TITLES:
            continue
        # A section's text runs to the next section heading (deeper headings stay in it).
        body = _body(lines, sections, k, stop_level=deepest)
        if words(body) < MIN_WORDS:
            continue
        question, names_doc = _question(s.title, parent, doc_word)
        if not root_readme and not names_doc:
            question = f"according to `{shown}`, {question}"
        candidates.append((question, body))
    out, seen = [], set()
    for question, body in candidates:
        if question in seen:
            continue
        seen.add(question)
        out.append((kind, chat_text(f"In `{where}`, {question}", cap(body, max_chars))))
        if len(out) >= MAX_SECTIONS_PER_FILE:
            break
    return out


def doc_samples(text: str, path: str, repo: str, max_answer_chars: int = 3000) -> list[tuple[str, str]]:
    """(source kind, chat text) question -> answer pairs of a Markdown file: "adr", "readme" or "doc".

    An ADR gives its decision (with status, rationale and context) and its consequences; any
    other file one pair per section with real prose. [] when nothing is usable.
    """
    cleaned = strip_markdown_noise(text)
    lines = cleaned.splitlines()
    sections = split_sections(lines)
    if not sections:
        return []
    if is_decision_record(path, text):
        adr = _adr_samples(text, lines, sections, path, repo, max_answer_chars)
        if adr:
            return adr
    kind = "readme" if posixpath.basename(path).lower().startswith("readme") else "doc"
    return _section_samples(lines, sections, path, repo, kind, max_answer_chars)
