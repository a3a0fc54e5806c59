"""Instruction pairs from real code units, and synthetic tasks for under-represented languages.

- ``instruction``: a unit with a doc comment becomes "doc -> implementation"; one without becomes
  "signature -> body" (the prompt shows the signature, plus a Python docstring; the answer is the
  whole unit).
- ``synthetic``: templated tasks built from real units: "implement X" (signature and a
  description made from the name and doc), "fix Y" (a deterministic one-token bug is planted,
  the answer is the original code and what was wrong) and "refactor Z" (rename a terse local
  name to a descriptive one, the answer is the renamed code).

Conversations are rendered with the serving chat template and closed with the end-of-text token.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from forge_assets.chat import EOT, render_chat
from forge_assets.languages import display_name, fence_info
from forge_assets.mining.units import ParsedFile
from forge_assets.scrub import scrub_path

MIN_LINES, MAX_LINES = 3, 150


def display(language: str) -> str:
    """A language's human name."""
    return display_name(language)


def fence(language: str) -> str:
    """The Markdown fence info string for a language."""
    return fence_info(language)


def chat_text(user: str, assistant: str) -> str:
    """A two-turn conversation rendered with the chat template, closed by the end-of-text token."""
    return render_chat([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]) + EOT


def code_block(code: str, language: str) -> str:
    """Code in a Markdown fence."""
    return f"```{fence(language)}\n{code.rstrip()}\n```"


@dataclass(frozen=True)
class UnitText:
    """A unit lifted out of its file: what instruction and synthetic templates work from."""

    language: str
    path: str
    kind: str
    name: str
    code: str  # the whole unit, doc comment included
    definition: str  # the unit without the doc comment above it
    head: str  # the signature (plus a Python docstring)
    doc: str

    @property
    def lines(self) -> int:
        return self.code.count("\n") + 1


def unit_texts(pf: ParsedFile, path: str) -> list[UnitText]:
    """The file's functions, methods and classes of a useful size, as texts."""
    out = []
    for u in pf.units:
        if u.kind == "window" or not u.name:
            continue
        code = pf.text(pf.line_start(u.start), u.end)
        n = code.count("\n") + 1
        if n < MIN_LINES or n > MAX_LINES or u.body_start >= u.end:
            continue
        out.append(UnitText(
            pf.language, path, u.kind, u.name, _dedent(code), _dedent(pf.text(pf.line_start(u.def_start), u.end)),
            _dedent(pf.text(pf.line_start(u.def_start), u.head_end)).rstrip(), u.doc,
        ))
    return out


def _dedent(code: str) -> str:
    lines = code.split("\n")
    indents = [len(l) - len(l.lstrip()) for l in lines if l.strip()]
    cut = min(indents) if indents else 0
    return "\n".join(l[cut:] if len(l) >= cut else l.lstrip() for l in lines)


def _kind_word(u: UnitText) -> str:
    return {"function": "function", "method": "method", "class": "type" if u.language in ("rust", "go") else "class"}.get(u.kind, "unit")


def instruction_pair(u: UnitText) -> str | None:
    """The instruction sample for a unit: doc -> implementation when documented, else signature -> body."""
    lang = display(u.language)
    if len(u.doc.split()) >= 3:
        user = f"Write the {lang} {_kind_word(u)} `{u.name}` for `{scrub_path(u.path)}`.\n\n{u.doc}"
        return chat_text(user, code_block(u.code, u.language))
    if u.kind == "class" or u.head.strip() == u.definition.strip():
        return None
    user = f"Complete the body of this {lang} {_kind_word(u)} from `{scrub_path(u.path)}`:\n\n{code_block(u.head, u.language)}"
    return chat_text(user, code_block(u.definition, u.language))


def _words(name: str) -> str:
    """`parseConfigFile` / `parse_config_file` -> "parse config file"."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.replace("_", " ").replace("::", " "))
    return " ".join(spaced.lower().split())


# (regex, replacement, explanation) of planted one-token bugs; the explanation names the fix.
_MUTATIONS: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"(?<=\s)<=(?=\s)"), "<", "the comparison must be `<=`, not `<` (an off-by-one at the boundary)"),
    (re.compile(r"(?<=\s)>=(?=\s)"), ">", "the comparison must be `>=`, not `>` (an off-by-one at the boundary)"),
    (re.compile(r"(?<=\s)<(?=\s)"), "<=", "the comparison must be `<`, not `<=` (an off-by-one at the boundary)"),
    (re.compile(r"(?<=\s)>(?=\s)"), ">=", "the comparison must be `>`, not `>=` (an off-by-one at the boundary)"),
    (re.compile(r"(?<=\s)==(?=\s)"), "!=", "the condition is inverted: it must test `==`, not `!=`"),
    (re.compile(r"(?<=\s)!=(?=\s)"), "==", "the condition is inverted: it must test `!=`, not `==`"),
    (re.compile(r"(?<=\s)&&(?=\s)"), "||", "the logical operator must be `&&`, not `||`"),
    (re.compile(r"(?<=\s)\|\|(?=\s)"), "&&", "the logical operator must be `||`, not `&&`"),
    (re.compile(r"(?<=\s)and(?=\s)"), "or", "the logical operator must be `and`, not `or`"),
    (re.compile(r"(?<=\s)or(?=\s)"), "and", "the logical operator must be `or`, not `and`"),
    (re.compile(r"(?<=\s)\+ 1\b"), "- 1", "the offset must be `+ 1`, not `- 1`"),
    (re.compile(r"(?<=\s)- 1\b"), "+ 1", "the offset must be `- 1`, not `+ 1`"),
]
# Terse local names and the descriptive names a refactor gives them.
_RENAMES = {
    "i": "index", "j": "inner", "k": "key", "v": "value", "n": "count", "s": "text", "x": "value",
    "d": "data", "e": "error", "f": "handle", "l": "items", "m": "match", "p": "path", "r": "result",
    "t": "item", "c": "char", "b": "buffer", "q": "queue", "w": "width", "h": "height", "ok": "succeeded",
    "tmp": "temporary", "res": "result", "val": "value", "idx": "index", "buf": "buffer", "cnt": "count",
    "ret": "result", "arr": "values", "lst": "items", "obj": "instance", "num": "number", "acc": "total",
}


def _outside_strings(code: str, pos: int) -> bool:
    """Whether pos is outside string literals and comments on its line (a quote-parity test)."""
    line_start = code.rfind("\n", 0, pos) + 1
    before = code[line_start:pos]
    if re.search(r"(^|\s)(#|//)", before):
        return False
    return before.count('"') % 2 == 0 and before.count("'") % 2 == 0 and before.count("`") % 2 == 0


def synthetic_task(u: UnitText, template: str, rng: random.Random) -> str | None:
    """A synthetic conversation of the given template ("implement", "fix", "refactor") from a unit."""
    lang = display(u.language)
    if template == "implement":
        what = u.doc.split("\n\n")[0].strip() if u.doc else f"It should {_words(u.name)}."
        user = (f"Implement `{u.name}` in {lang} (it lives in `{scrub_path(u.path)}`). Use this signature:\n\n"
                f"{code_block(u.head.split(chr(10))[0] if u.language != 'python' else u.head, u.language)}\n\n{what}")
        return chat_text(user, code_block(u.definition, u.language))
    if template == "fix":
        body_at = len(u.head)
        sites = [(m.start(), m.end(), repl, why) for pattern, repl, why in _MUTATIONS
                 for m in pattern.finditer(u.definition, body_at) if _outside_strings(u.definition, m.start())]
        if not sites:
            return None
        s, e, repl, why = sites[rng.randrange(len(sites))]
        buggy = u.definition[:s] + repl + u.definition[e:]
        if buggy == u.definition:
            return None
        user = f"This {lang} {_kind_word(u)} `{u.name}` has a bug. Find it and fix it.\n\n{code_block(buggy, u.language)}"
        return chat_text(user, f"The bug: {why}. Fixed:\n\n{code_block(u.definition, u.language)}")
    if template == "refactor":
        candidates = [n for n in sorted(_RENAMES) if _renamable(u, n)]
        if not candidates:
            return None
        old = candidates[rng.randrange(len(candidates))]
        new = _RENAMES[old]
        renamed = re.sub(rf"(?<![\w$]){re.escape(old)}(?![\w$])",
                         lambda m: new if _outside_strings(u.definition, m.start()) else m.group(0), u.definition)
        if renamed == u.definition:
            return None
        user = (f"Refactor this {lang} {_kind_word(u)} `{u.name}`: rename the local `{old}` to `{new}` so it says "
                f"what it holds, and keep the behaviour the same.\n\n{code_block(u.definition, u.language)}")
        return chat_text(user, code_block(renamed, u.language))
    raise ValueError(f"unknown synthetic template {template!r}")


def _renamable(u: UnitText, name: str) -> bool:
    """Whether a terse name is a local of the unit that can be renamed everywhere safely.

    Not a parameter (callers may pass it by keyword), its new name unused, and every occurrence
    a plain variable use: not an attribute, call, keyword argument, object key or symbol.
    """
    ident = rf"(?<![\w$]){re.escape(name)}(?![\w$])"
    if re.search(ident, u.head) or re.search(rf"(?<![\w$]){re.escape(_RENAMES[name])}(?![\w$])", u.definition):
        return False
    uses = [m for m in re.finditer(ident, u.definition) if _outside_strings(u.definition, m.start())]
    if len(uses) < 2:
        return False
    for m in uses:
        before, after = u.definition[max(0, m.start() - 2):m.start()], u.definition[m.end():m.end() + 3]
        if before.endswith((".", ":", "@", "&")) and not before.endswith("::") or after.startswith("(") \
                or re.match(r"\s*:(?!:)", after) and re.search(r"[{,]\s*$", u.definition[max(0, m.start() - 40):m.start()]) \
                or re.match(r"\s*=(?!=)", after) and re.search(r"[(,]\s*$", u.definition[max(0, m.start() - 40):m.start()]):
            return False
    return True


SYNTHETIC_TEMPLATES = ("implement", "fix", "refactor")


def synthetic_samples(units: list[UnitText], limit: int, rng: random.Random) -> list[tuple[UnitText, str, str]]:
    """Up to limit (unit, template, text) synthetic tasks, cycling templates over shuffled units."""
    if limit <= 0 or not units:
        return []
    order = list(range(len(units)))
    rng.shuffle(order)
    out: list[tuple[UnitText, str, str]] = []
    for round_ in range(len(SYNTHETIC_TEMPLATES)):
        for k, idx in enumerate(order):
            template = SYNTHETIC_TEMPLATES[(k + round_) % len(SYNTHETIC_TEMPLATES)]
            text = synthetic_task(units[idx], template, rng)
            if text:
                out.append((units[idx], template, text))
                if len(out) >= limit:
                    return out
    return out
