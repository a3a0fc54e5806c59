"""Fill-in-the-middle samples in Forge's canonical markup (Qwen2.5-Coder's tokens), the middle an AST span or a random span.

Samples are mined once in this markup whatever the base: training and evaluation write them in the base's own FIM
tokens when they tokenize (``forge_assets.fim_tokens``, ``training.samples.Tok``), and skip them for a base without
FIM tokens, so a dataset never has to be re-mined when the base changes.

Every sample opens with the repository-level header ``<|repo_name|>{repo}\\n<|file_sep|>{path}\\n``
and then orders the parts PSM or SPM:

- PSM: ``<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}``
- SPM: ``<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}{middle}``

The middle is, by weight: a whole block (a function body, a loop or branch body), a run of one to
four consecutive statements of a block, or a random span of lines. Prefix and suffix are trimmed
to ``context_chars`` at line boundaries so the middle fits a training window.

A file gives several FIM samples (``fim_samples``), their middles spread over its units: each is drawn inside a
different unit (a function, method, or a class's own lines; a line window when the file has no tree), in a seeded
order, so a long file's FIM middles are not all in one place.
"""

from __future__ import annotations

import random
import re

from forge_assets.chat import EOT, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME
from forge_assets.mining.units import ParsedFile
from forge_assets.scrub import scrub_path

MAX_MIDDLE_BYTES = 1600
SPAN_WEIGHTS = (("block", 0.35), ("statements", 0.4), ("random", 0.25))


def header(repo: str, path: str) -> str:
    """The repository-level file header Qwen2.5-Coder was trained with (repository and path scrubbed: scrub_path)."""
    return f"{REPO_NAME}{scrub_path(repo)}\n{FILE_SEP}{scrub_path(path)}\n"


def _start_at(pf: ParsedFile, pos: int) -> int:
    """The start of pos's line when only indentation precedes pos there, else pos itself."""
    ls = pf.line_start(pos)
    return ls if not pf.data[ls:pos].strip() else pos


def _random_lines(pf: ParsedFile, rng: random.Random, lo: int = 0, hi: int | None = None) -> tuple[int, int] | None:
    hi = len(pf.data) if hi is None else hi
    starts = [lo] + [lo + m.end() for m in re.finditer(b"\n", pf.data[lo:hi]) if lo + m.end() < hi]
    if lo == 0 and len(starts) < 3 or len(starts) < 2:
        return None
    a = rng.randrange(1, len(starts) - 1) if lo == 0 else rng.randrange(0, len(starts) - 1)
    b = min(len(starts), a + rng.randint(1, 8))
    end = starts[b] if b < len(starts) else hi
    return starts[a], end


def choose_middle(pf: ParsedFile, rng: random.Random, lo: int = 0, hi: int | None = None) -> tuple[str, int, int] | None:
    """(span kind, start byte, end byte) of a middle between bytes lo and hi (the whole file by default), drawn with the
    seeded rng; None for tiny files."""
    hi = len(pf.data) if hi is None else hi
    blocks = [b for b in pf.blocks if 0 < b[2][-1][1] - b[2][0][0] <= MAX_MIDDLE_BYTES and lo <= b[0] and b[1] <= hi]
    kinds = [k for k, _ in SPAN_WEIGHTS]
    weights = [w if (k == "random" or blocks) else 0.0 for k, w in SPAN_WEIGHTS]
    kind = rng.choices(kinds, weights=weights)[0]
    if kind == "block":
        _, _, stmts = rng.choice(blocks)
        return kind, _start_at(pf, stmts[0][0]), stmts[-1][1]
    if kind == "statements":
        _, _, stmts = rng.choice(blocks)
        i = rng.randrange(len(stmts))
        j = min(len(stmts) - 1, i + rng.randrange(4))
        while j > i and stmts[j][1] - stmts[i][0] > MAX_MIDDLE_BYTES:
            j -= 1
        return kind, _start_at(pf, stmts[i][0]), stmts[j][1]
    span = _random_lines(pf, rng, lo, hi)
    return (kind, *span) if span else None


def trim_context(prefix: str, suffix: str, max_chars: int) -> tuple[str, str]:
    """Prefix kept from the right and suffix from the left, max_chars each, cut at line boundaries
    (a single line longer than max_chars is cut mid-line)."""
    if len(prefix) > max_chars:
        cut = prefix.find("\n", len(prefix) - max_chars)
        prefix = prefix[cut + 1:] if cut >= 0 else prefix[-max_chars:]
    if len(suffix) > max_chars:
        cut = suffix.rfind("\n", 0, max_chars)
        suffix = suffix[: cut + 1] if cut >= 0 else suffix[:max_chars]
    return prefix, suffix


def fim_sample(pf: ParsedFile, repo: str, path: str, rng: random.Random, spm: bool, context_chars: int = 4000,
               within: tuple[int, int] | None = None) -> tuple[str, str] | None:
    """(span kind, text) of one FIM sample of a file (its middle inside `within`, a byte range, when given), or None
    when the file or the range is too small."""
    lo, hi = within or (0, None)
    for _ in range(5):  # a random span can land on blank lines: draw again
        chosen = choose_middle(pf, rng, lo, hi)
        if chosen is None:
            return None
        kind, s, e = chosen
        middle = pf.text(s, e)
        if middle.strip():
            break
    else:
        return None
    prefix, suffix = trim_context(pf.text(0, s), pf.text(e), context_chars)
    head = header(repo, path)
    if spm:
        return kind, f"{head}{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix}{middle}{EOT}"
    return kind, f"{head}{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}{EOT}"


def fim_targets(pf: ParsedFile) -> list[tuple[int, int]]:
    """Byte ranges FIM middles are spread over: each unit's own lines (a class without the methods inside it), in file
    order; a unit of fewer than two lines is left out."""
    units = sorted(pf.units, key=lambda u: (u.start, -u.end))
    out = []
    for u in units:
        inner = [(c.start, c.end) for c in units if c is not u and u.start <= c.start and c.end <= u.end and c.depth == u.depth + 1]
        pieces, at = [], u.def_start
        for s, e in inner:
            if s > at:
                pieces.append((at, s))
            at = max(at, e)
        pieces.append((at, u.end))
        for s, e in pieces:
            s = pf.line_start(s) if not pf.data[pf.line_start(s):s].strip() else s
            if pf.data.count(b"\n", s, e) >= 1 and pf.data[s:e].strip():
                out.append((s, e))
    return sorted(set(out))


def fim_count(other_samples: int, share: float, most: int) -> int:
    """How many FIM samples a file with `other_samples` code and instruction samples gets, so that FIM is `share` of
    its samples: other·share/(1−share), rounded, at least one, at most `most`."""
    if share <= 0:
        return 0
    if share >= 1:
        return most
    return max(1, min(most, round(other_samples * share / (1 - share))))


def fim_samples(pf: ParsedFile, repo: str, path: str, rng: random.Random, count: int, spm_rate: float,
                context_chars: int) -> list[tuple[str, str]]:
    """Up to `count` (span kind, text) FIM samples of a file, each middle inside a different unit (fim_targets, in a
    seeded order; the file as a whole when it has none), each PSM or SPM by `spm_rate`; no two with the same middle."""
    targets = fim_targets(pf)
    rng.shuffle(targets)
    if not targets:
        targets = [(0, len(pf.data))]
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i in range(min(count, len(targets)) if len(targets) > 1 else count):
        within = targets[i % len(targets)]
        made = fim_sample(pf, repo, path, rng, spm=rng.random() < spm_rate, context_chars=context_chars,
                          within=None if within == (0, len(pf.data)) else within)
        if made and made[1] not in seen:
            seen.add(made[1])
            out.append(made)
    return out
