"""RAFT samples: answer a question about a repository from retrieved documents, citing the right one.

RAFT (retrieval-augmented fine-tuning, Zhang et al. 2024) trains a model on the prompts a
retrieval-augmented assistant sends (OpenCode and Continue paste retrieved code above the
question): a question, the "oracle" document that answers it, and "distractor" documents that
look related but do not. The answer names the oracle, quotes the lines it relies on between
``##begin_quote##`` and ``##end_quote##`` and then answers, so the model learns to read the
context, pick the relevant document and ignore the rest.

A sample (``kind: raft``) is built from one real unit of a repository (the oracle):

- the question comes from its doc comment or docstring (its first paragraph), from its name and
  signature, or from a commit subject that touched its file and shares a word with its name;
  documented units come first and mostly get doc questions;
- 2-4 distractors are the units of the same repository most similar to the oracle by TF-IDF
  cosine over identifier sub-words (camelCase and snake_case split, lower-cased, keywords and
  words in more than half the units dropped), computed with sparse matrices a block of oracles
  at a time; the oracle itself, units with the same code, doc summary or (path, name), and
  units that contain it or that it contains are never distractors, nor (for a commit question)
  other units of the touched file; an oracle with fewer than 2 distractors gives no sample;
- the documents are shown in a shuffled order, each labelled ``[i] path — name`` and trimmed at
  a line boundary to ``max_doc_chars`` (a ``…`` line marks a cut; the oracle keeps at least its
  signature and the quoted lines); the answer's code is the oracle's definition as shown.

Same units, messages and seeded rng give byte-identical samples.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np

from forge_assets.mining.instruct import UnitText, _words, chat_text, code_block, display
from forge_assets.scrub import scrub_path

RAFT_MIN_DISTRACTORS, RAFT_MAX_DISTRACTORS = 2, 4
RAFT_SOURCES = ("doc", "signature", "commit")
ELIGIBLE_KINDS = ("function", "method", "class")
MIN_ORACLE_LINES = 3
MAX_QUOTE_LINES = 6  # of a doc summary, and of body lines after a quoted signature
TRIM_MARK = "…"

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SUBWORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(])")
# Keywords and filler words that say nothing about what a unit does (common repository words are dropped by frequency).
_STOP = frozenset("""
a an and any are as assert async at await be bool break by byte bytes case catch char class const continue crate def default
del do dyn elif else end enum err error except export extends false fn final finally float for from func function go if impl
implements import in int interface is it its let match mod mut new nil none not null of on or package pass pub raise ref return
self static str string struct super switch that the then this throw throws to true try type typeof uint union unsafe use usize
val var void when where while with yield
""".split())
_NAME_WEIGHT = 3  # a unit's own name words count this many extra times in its vector
_COMMON_DF = 0.5  # words in more than this share of units are dropped (when there are enough units to tell)
_COMMON_MIN_UNITS = 20


def raft_samples(units: list[UnitText], repo: str, limit: int, rng: random.Random,
                 messages: dict[str, list[str]] | None = None, max_doc_chars: int = 1500) -> list[tuple[UnitText, str, str]]:
    """Up to limit (oracle unit, question source, chat text) RAFT samples from one repository's units.

    The question source is "doc", "signature" or "commit". messages maps a file path to the
    (scrubbed) subjects of the commits that touched it, newest first. Oracles are taken in a
    seeded shuffle of the eligible units (functions, methods and classes of 3 lines or more),
    documented ones first; one with fewer than 2 possible distractors is skipped.
    """
    if limit <= 0 or len(units) <= RAFT_MIN_DISTRACTORS:
        return []
    max_doc_chars = max(1, int(max_doc_chars))
    summaries = [_summary(u.doc) for u in units]
    eligible = [i for i, u in enumerate(units) if u.kind in ELIGIBLE_KINDS and u.name and u.lines >= MIN_ORACLE_LINES]
    if not eligible:
        return []
    rng.shuffle(eligible)
    order = [i for i in eligible if summaries[i]] + [i for i in eligible if not summaries[i]]
    index = _Index(units, rng)
    subjects = _Subjects(messages or {}, units, index.words)
    flat_code = [_flat(u.code) for u in units]  # without indentation: a method is dedented, its class is not
    flat_def = [_flat(u.definition) for u in units]

    def _nested(a: int, b: int) -> bool:
        """Whether one of two units holds the other (a class and its method)."""
        return flat_def[a] in flat_code[b] or flat_def[b] in flat_code[a]

    code_ids = _ids(u.code for u in units)
    name_ids = _ids((u.path, u.name) for u in units)
    summary_ids = _ids(s or f"\0{i}" for i, s in enumerate(summaries))  # an empty summary matches nothing
    out: list[tuple[UnitText, str, str]] = []
    block = max(1, min(256, 4_000_000 // len(units)))
    for at in range(0, len(order), block):
        oracles = order[at:at + block]
        sims = index.similarities(oracles)
        for row, o in zip(sims, oracles):
            u = units[o]
            subject = subjects.best(o)
            source = _source(bool(summaries[o]), bool(subject), rng)
            want = rng.randint(RAFT_MIN_DISTRACTORS, RAFT_MAX_DISTRACTORS)

            def allowed(j: int, picked: list[int]) -> bool:
                d = units[j]
                if code_ids[j] == code_ids[o] or name_ids[j] == name_ids[o] or summary_ids[j] == summary_ids[o]:
                    return False
                if d.path == u.path and (source == "commit" or _nested(j, o)):
                    return False
                return all(code_ids[j] != code_ids[k] and not (d.path == units[k].path and _nested(j, k)) for k in picked)

            distractors = index.nearest(o, row, want, allowed)
            if len(distractors) < RAFT_MIN_DISTRACTORS:
                continue
            out.append((u, source, _sample(u, [units[j] for j in distractors], repo, source, summaries[o], subject,
                                           max_doc_chars, rng)))
            if len(out) >= limit:
                return out
    return out


def _flat(code: str) -> str:
    """Code with every line stripped: equal for a unit and its copy inside an enclosing unit."""
    return "\n".join(line.strip() for line in code.split("\n"))


def _ids(keys) -> np.ndarray:
    """A small integer per distinct key (equal keys, equal ids)."""
    seen: dict = {}
    return np.array([seen.setdefault(k, len(seen)) for k in keys], dtype=np.int64)


def _source(documented: bool, has_subject: bool, rng: random.Random) -> str:
    """The question source: doc when there is one (a commit subject a third of the time), else signature or commit."""
    draw = rng.random()
    if documented:
        return "commit" if has_subject and draw < 1 / 3 else "doc"
    return "commit" if has_subject and draw < 1 / 2 else "signature"


# ---------------------------------------------------------------------------------------------
# Lexical similarity


class _Index:
    """L2-normalised TF-IDF vectors of the units over identifier sub-words, as a sparse matrix."""

    def __init__(self, units: list[UnitText], rng: random.Random) -> None:
        from scipy import sparse  # a dependency of datasketch, which Forge depends on

        split: dict[str, tuple[str, ...]] = {}
        vocab: dict[str, int] = {}
        indptr, indices, counts = [0], [], []
        self.words: list[frozenset[str]] = []
        for u in units:
            tf: Counter[str] = Counter()
            for ident, c in Counter(_IDENT.findall(u.code)).items():
                for w in split.get(ident) or split.setdefault(ident, _subwords(ident)):
                    tf[w] += c
            for w in _subwords(u.name):
                tf[w] += _NAME_WEIGHT
            self.words.append(frozenset(tf))
            for w, c in tf.items():
                indices.append(vocab.setdefault(w, len(vocab)))
                counts.append(c)
            indptr.append(len(indices))
        n = len(units)
        cols = np.asarray(indices, dtype=np.int64)
        data = 1.0 + np.log(np.asarray(counts, dtype=np.float64))  # sublinear term frequency
        df = np.bincount(cols, minlength=len(vocab)).astype(np.float64)
        idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        if n >= _COMMON_MIN_UNITS:
            idf[df > _COMMON_DF * n] = 0.0
        data *= idf[cols]
        lengths = np.diff(np.asarray(indptr, dtype=np.int64))
        norms = np.sqrt(np.bincount(np.repeat(np.arange(n), lengths), weights=data * data, minlength=n))
        data /= np.repeat(np.where(norms > 0, norms, 1.0), lengths)
        self.matrix = sparse.csr_matrix((data, cols, np.asarray(indptr, dtype=np.int64)), shape=(n, max(1, len(vocab))))
        self.transposed = self.matrix.T.tocsr()
        # Equal similarities are ordered by a seeded random rank, not by position in the list.
        self.rank = np.random.default_rng(rng.getrandbits(64)).permutation(n)

    def similarities(self, rows: list[int]) -> np.ndarray:
        """Cosine similarities of the given units to every unit (one dense row each)."""
        return (self.matrix[rows] @ self.transposed).toarray()

    def nearest(self, o: int, row: np.ndarray, want: int, allowed) -> list[int]:
        """Up to want units most similar to unit o that allowed(j, picked) accepts, most similar first."""
        row = row.copy()
        row[o] = -np.inf
        n = len(row)
        picked: list[int] = []
        seen = 0
        for m in (min(n, 4 * RAFT_MAX_DISTRACTORS + 8), n):
            threshold = row[np.argpartition(-row, m - 1)[m - 1]] if m < n else -np.inf
            cand = np.flatnonzero(row >= threshold)  # every tie at the threshold: independent of argpartition's choice
            cand = cand[np.lexsort((self.rank[cand], -row[cand]))]
            for j in cand[seen:]:
                if row[j] == -np.inf:
                    continue
                if allowed(int(j), picked):
                    picked.append(int(j))
                    if len(picked) >= want:
                        return picked
            if m >= n:
                break
            seen = len(cand)  # the wider pass orders the same head the same way: skip what was judged
        return picked


def _subwords(ident: str) -> tuple[str, ...]:
    """`parseHTTPConfig_file2` -> ("parse", "http", "config", "file"): lower-case, keywords and 1-letter parts dropped."""
    return tuple(w for w in (p.lower() for p in _SUBWORD.findall(ident)) if len(w) > 1 and w not in _STOP)


def _related(a: str, b: str) -> bool:
    """Whether two sub-words are one word in two forms (load/loader, parse/parsing), not just alike (config/confirm)."""
    if a == b:
        return True
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return common >= max(4, min(len(a), len(b)) - 1)


class _Subjects:
    """Commit subjects per path, each given to the unit(s) of its file whose name it matches best."""

    def __init__(self, messages: dict[str, list[str]], units: list[UnitText], words: list[frozenset[str]]) -> None:
        self.messages = messages
        self.units, self.words = units, words
        self.by_path: dict[str, list[int]] = {}
        for i, u in enumerate(units):
            self.by_path.setdefault(u.path, []).append(i)
        self.cache: dict[str, dict[int, str]] = {}

    def _score(self, i: int, words: frozenset[str]) -> int:
        """How well a subject's words fit unit i: words of its name (4 each), then of its code; 0 without a name word."""
        name = _subwords(self.units[i].name)
        on_name = sum(1 for w in words if any(_related(w, n) for n in name))
        return 4 * on_name + len(words & self.words[i]) if on_name else 0

    def best(self, i: int) -> str:
        """The subject for unit i: of those its file's commits have and that fit it best in its file, the one
        that fits it best (the newest on a tie); "" if none."""
        path = self.units[i].path
        if path not in self.cache:
            chosen: dict[int, tuple[int, str]] = {}
            for message in self.messages.get(path) or []:
                subject = " ".join((message or "").strip().split("\n")[0].split()).rstrip(".")
                if len(subject.split()) < 3 or subject.lower().startswith(("merge ", "revert ")):
                    continue
                words = frozenset(w for ident in _IDENT.findall(subject) for w in _subwords(ident))
                scores = {j: self._score(j, words) for j in self.by_path[path]}
                top = max(scores.values(), default=0)
                for j, sc in scores.items():
                    if top and sc == top and sc > chosen.get(j, (0, ""))[0]:
                        chosen[j] = (sc, subject)
            self.cache[path] = {j: subject for j, (_, subject) in chosen.items()}
        return self.cache[path].get(i, "")


# ---------------------------------------------------------------------------------------------
# Text


def _summary(doc: str) -> str:
    """A doc comment's first paragraph on one line (its first sentence when the paragraph is long); "" if too short."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    if len(para) > 240:
        para = _SENTENCE_END.split(para)[0]
    if len(para) > 240:
        para = para[:240].rsplit(" ", 1)[0] + " …"
    return para if len(re.findall(r"[A-Za-z]{2,}", para)) >= 3 else ""


def _first_sentence(summary: str) -> str:
    sentence = _SENTENCE_END.split(summary)[0].strip()
    return sentence if sentence.endswith((".", "!", "?", "…")) else sentence + "."


def _as_clause(summary: str) -> str:
    """A summary as the tail of a question: no final full stop, a lower-case first letter unless it starts an acronym."""
    text = summary.rstrip(" .:;")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def _signature_lines(u: UnitText) -> int:
    """How many lines of the definition are its signature (a Python head without its docstring)."""
    head = u.head.split("\n")
    if u.language != "python" or not u.doc:
        return len(head)
    started = False
    for i, line in enumerate(head):
        code = re.sub(r"\s+#.*$", "", line).rstrip()
        started = started or bool(re.match(r"\s*(async\s+def|def|class)\b", line))
        if started and code.endswith(":"):
            return i + 1
    return len(head)


def _blankish(line: str) -> bool:
    """A line with no word in it: blank, a bare comment marker, a docstring's quotes."""
    return not re.search(r"[A-Za-z0-9]", line)


def _paragraph(lines: list[str], start: int, end: int) -> tuple[int, int] | None:
    """The first run of non-blank lines in lines[start:end] (at most MAX_QUOTE_LINES), as a range."""
    i = start
    while i < end and _blankish(lines[i]):
        i += 1
    if i >= end:
        return None
    j = i
    while j < end and j - i < MAX_QUOTE_LINES and not _blankish(lines[j]):
        j += 1
    return i, j


def _trim(lines: list[str], limit: int, keep: int) -> tuple[list[str], bool]:
    """The first lines that fit in limit characters (never fewer than keep, never none), and whether any were cut."""
    total, n = 0, 0
    for line in lines:
        total += len(line) + 1
        if total - 1 > limit:
            break
        n += 1
    n = max(n, keep, 1)
    if n >= len(lines):
        return lines, False
    shown = lines[:n]
    if n == 1 and len(shown[0]) > limit and keep <= 1 and limit > 1:
        shown = [shown[0][:limit]]
    return shown + [TRIM_MARK], True


def _quote(lines: list[str], ranges: list[tuple[int, int]]) -> str:
    """Quote blocks of the given line ranges, merged where they touch, in document order."""
    merged: list[list[int]] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return "\n\n".join("##begin_quote##\n" + "\n".join(line.rstrip() for line in lines[s:e]) + "\n##end_quote##"
                       for s, e in merged)


def _kind(u: UnitText) -> str:
    return {"function": "function", "method": "method", "class": "type" if u.language in ("rust", "go") else "class"}.get(u.kind, "unit")


_DOC_QUESTIONS = (
    "In `{repo}`, which code does this: {summary}? Show how it works.",
    "Where in `{repo}` is this done, and how: {summary}?",
)
_SIGNATURE_QUESTIONS = (
    "What does `{name}` in `{path}` do, and how is it implemented?\n\n{signature}",
    "Explain what the {lang} {kind} `{name}` in `{path}` does and show its implementation. Its signature:\n\n{signature}",
)
_COMMIT_QUESTIONS = (
    "Which code in `{repo}` implements the change “{subject}”, and how?",
    "The commit “{subject}” changed `{repo}`. Which code does it concern, and how does that code work?",
)


def _sample(u: UnitText, distractors: list[UnitText], repo: str, source: str, summary: str, subject: str,
            max_doc_chars: int, rng: random.Random) -> str:
    repo_shown, path = scrub_path(repo), scrub_path(u.path)
    code_lines, def_lines = u.code.split("\n"), u.definition.split("\n")
    prefix = len(code_lines) - len(def_lines)
    if prefix < 0 or code_lines[prefix:] != def_lines:
        code_lines, prefix = def_lines, 0  # the doc comment did not dedent like the definition: show the definition
    sig = _signature_lines(u)
    sig_range = (prefix, min(len(code_lines), prefix + sig))
    if source == "doc":
        doc_at = (0, prefix) if prefix else (sig_range[1], prefix + len(u.head.split("\n")))
        ranges = [r for r in (_paragraph(code_lines, *doc_at), sig_range) if r]
    else:
        body = _paragraph(code_lines, sig_range[1], len(code_lines))
        ranges = [(sig_range[0], body[1] if body else sig_range[1])]
    shown, cut = _trim(code_lines, max_doc_chars, max(e for _, e in ranges))

    docs = [(u, shown)] + [(d, _trim(d.code.split("\n"), max_doc_chars, 0)[0]) for d in distractors]
    rng.shuffle(docs)
    label = next(i for i, (d, _) in enumerate(docs, 1) if d is u)
    listing = "\n\n".join(f"[{i}] {scrub_path(d.path)} — {d.name}\n{code_block(chr(10).join(text), d.language)}"
                          for i, (d, text) in enumerate(docs, 1))

    # A Python signature is its def line(s); elsewhere the head is the signature without the body's brace.
    signature = code_block("\n".join(def_lines[:sig]) if u.language == "python" else u.head, u.language)
    if source == "doc":
        question = _DOC_QUESTIONS[rng.randrange(len(_DOC_QUESTIONS))].format(repo=repo_shown, summary=_as_clause(summary))
    elif source == "commit":
        question = _COMMIT_QUESTIONS[rng.randrange(len(_COMMIT_QUESTIONS))].format(repo=repo_shown, subject=subject)
    else:
        question = _SIGNATURE_QUESTIONS[rng.randrange(len(_SIGNATURE_QUESTIONS))].format(
            name=u.name, path=path, signature=signature, lang=display(u.language), kind=_kind(u))
    user = (f"These documents were retrieved from `{repo_shown}`. Answer the question from them, and cite the document "
            f"you use.\n\n{listing}\n\nQuestion: {question}")

    where = f"The answer is in [{label}] `{path}` (`{u.name}`)"
    where += ", in the file that commit touched." if source == "commit" else "."
    what = (f"Its documentation sums it up: {_first_sentence(summary)}" if summary
            else f"As its name says, `{u.name}` is the {_kind(u)} for “{_words(u.name)}”.")
    answer = f"{where}\n\n{_quote(shown, ranges)}\n\n{what}\n\n{code_block(chr(10).join(shown[prefix:]), u.language)}"
    if cut:
        answer += f"\n\n(The definition is longer than shown; the `{TRIM_MARK}` line marks where the document was cut.)"
    return chat_text(user, answer)
