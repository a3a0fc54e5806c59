"""Exact and near-duplicate removal over every sample of a dataset, across repos and sample kinds.

- Exact: the SHA-256 of a sample's text; the first copy stays.
- Near: MinHash (datasketch, 128 permutations, its default scheme) over **word 5-gram shingles**
  (runs of ``\\w+`` tokens; punctuation and whitespace are ignored, so re-indented or re-formatted
  copies still match) with LSH banding sized by datasketch for the threshold. A candidate counts
  as a duplicate only if its estimated Jaccard similarity reaches the threshold and it comes from
  a different origin (another file, commit or session): the samples one file yields (its code
  units, FIM, instruction pairs) overlap by design and are not duplicates of one another.

Documents are visited in the order given; a document is compared with the kept ones before it.
Speed: shingle hashes are memoised per process, signatures are computed for many documents at once
(``minhash_matrix``: each distinct shingle permuted once, every document's minimum in one numpy
reduction; equal to datasketch's bit for bit), across worker processes, and LSH bands are hashed for
all documents at once with numpy; the result is the same set a one-at-a-time MinHashLSH loop keeps.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field

import numpy as np

NUM_PERM = 128
SHINGLE_WORDS = 5
_WORD = re.compile(r"\w+")
# Fixed odd multipliers that fold an LSH band (r hash values) into one 64-bit bucket key.
_BAND_MULT = np.random.RandomState(20240601).randint(1, 2**62, size=NUM_PERM, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)


def shingles(text: str, n: int = SHINGLE_WORDS) -> list[str]:
    """The distinct word n-grams of a text (a text with fewer words is one shingle)."""
    return shingles_of(_WORD.findall(text), n)


def shingles_of(words: list[str], n: int = SHINGLE_WORDS) -> list[str]:
    """shingles for a text already split into word tokens."""
    return list(shingle_set(words, n))


def shingle_set(words: list[str], n: int = SHINGLE_WORDS) -> set[str]:
    """The distinct word n-grams of a text already split into word tokens, as a set."""
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return set(map(" ".join, zip(*(words[i:] for i in range(n)))))


class CachedSha1:
    """datasketch's sha1_hash32 over UTF-8 shingles, memoised: one file's samples share most shingles.

    The values are exactly sha1_hash32's (the first 4 bytes of SHA-1, little-endian), so signatures equal a plain
    MinHash's bit for bit. One instance per process (``_hasher``) serves every chunk that process computes.
    """

    def __init__(self, limit: int = 4_000_000) -> None:
        self._cache: dict[str, int] = {}
        self._limit = limit

    def values(self, grams: list[str] | set[str]) -> list[int]:
        """The hash value of each shingle, in the iteration order of grams (C-level lookups; only shingles not seen
        before are hashed)."""
        cache = self._cache
        distinct = grams if isinstance(grams, set) else set(grams)
        missing = distinct.difference(cache)
        if missing:
            if len(cache) + len(missing) > self._limit:
                cache.clear()  # bound memory on huge corpora; values stay the same, only speed drops
                missing = distinct
            sha1, from_bytes = hashlib.sha1, int.from_bytes
            cache.update({g: from_bytes(sha1(g.encode("utf-8", "surrogatepass")).digest()[:4], "little") for g in missing})
        return list(map(cache.__getitem__, grams))


_HASHER: CachedSha1 | None = None


def _hasher() -> CachedSha1:
    global _HASHER
    if _HASHER is None:
        _HASHER = CachedSha1()
    return _HASHER


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) datasketch's MinHashLSH picks for a threshold."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


_BATCH_VALUES = 1 << 16  # shingle occurrences per vectorised step: bounds the (values x num_perm) matrix at 32 MB


def minhash_matrix(value_lists: list[list[int]], num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signatures (n x num_perm, uint64) of documents given as their shingles' 32-bit hash values, equal bit
    for bit to ``MinHash.bulk(value_lists, num_perm=num_perm, hashfunc=int)``'s hashvalues (datasketch's default
    scheme, affine32: fmix32 pre-mix, then ``a*h + b`` wrapping in uint32, the minimum per permutation).

    Faster than ``MinHash.bulk`` because it permutes each *distinct* value of a batch of documents once (one file's
    samples share most shingles) and takes every document's minimum with one ``np.minimum.reduceat``, instead of one
    numpy update per document. Another scheme (a future default) falls back to ``MinHash.bulk``.
    """
    from datasketch import MinHash

    proto = MinHash(num_perm=num_perm)
    out = np.empty((len(value_lists), num_perm), dtype=np.uint64)
    try:
        from datasketch.minhash import _fmix
    except ImportError:  # pragma: no cover - a datasketch without the helper
        _fmix = None
    if getattr(proto, "scheme", None) != "affine32" or _fmix is None:  # pragma: no cover - datasketch < 2 or a new default
        for i, m in enumerate(MinHash.bulk(value_lists, num_perm=num_perm, hashfunc=int)):
            out[i] = m.hashvalues
        return out
    a, b = (np.asarray(x, dtype=np.uint32) for x in proto.permutations)
    empty = np.asarray(proto.hashvalues, dtype=np.uint64)  # a document with no shingle keeps the sentinel
    lo = 0
    while lo < len(value_lists):
        hi, size = lo, 0
        while hi < len(value_lists) and (size == 0 or size + len(value_lists[hi]) <= _BATCH_VALUES):
            size += len(value_lists[hi])
            hi += 1
        lens = np.fromiter((len(v) for v in value_lists[lo:hi]), dtype=np.int64, count=hi - lo)
        out[lo:hi][lens == 0] = empty
        if size:
            flat = np.fromiter(itertools.chain.from_iterable(value_lists[lo:hi]), dtype=np.uint32, count=size)
            distinct, where = np.unique(flat, return_inverse=True)
            permuted = _fmix(distinct, 32)[:, None] * a + b  # uint32 arithmetic wraps: datasketch's modulo 2^32
            where = where.reshape(-1)
            start = 0
            for i, n in enumerate(lens.tolist(), lo):
                if n:  # a small gather and min per document stays in cache: faster than one reduceat over the batch
                    out[i] = permuted[where[start:start + n]].min(axis=0)
                    start += n
        lo = hi
    return out


def minhash_rows(word_lists: list[list[str]], num_perm: int = NUM_PERM) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of texts given as word tokens, in this process; and which had any shingle."""
    hasher = _hasher()
    values = [hasher.values(shingle_set(w)) for w in word_lists]
    return minhash_matrix(values, num_perm), np.array([bool(v) for v in values], dtype=bool)


def _signature_chunk(chunk: tuple[list[str], int]) -> tuple[np.ndarray, np.ndarray]:
    texts, num_perm = chunk
    return minhash_rows([_WORD.findall(t) for t in texts], num_perm)


def chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """(lo, hi) ranges splitting n documents into a few chunks per worker."""
    step = max(1, -(-n // (max(1, workers) * 4)))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def pool_workers(n: int, workers: int) -> int:
    """How many processes are worth starting for n documents (a pool pays off for a few hundred)."""
    return max(1, min(workers, n // 200 or 1))


def signatures(texts: list[str], num_perm: int = NUM_PERM, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (n x num_perm) of the texts, and which texts had any shingle at all."""
    from forge_assets.mining.workers import parallel_map

    n = len(texts)
    if n == 0:
        return np.empty((0, num_perm), dtype=np.uint64), np.empty(0, dtype=bool)
    workers = pool_workers(n, workers)
    parts_in = [(texts[lo:hi], num_perm) for lo, hi in chunks(n, workers)]
    parts = parallel_map(_signature_chunk, parts_in, workers, "computing MinHash signatures", per_worker=4)
    return np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit bucket key per (document, band): the band's hash values folded together."""
    banded = sigs[:, : bands * rows].reshape(len(sigs), bands, rows)
    with np.errstate(over="ignore"):
        keys = (banded * _BAND_MULT[:rows]).sum(axis=2, dtype=np.uint64)
    return keys


@dataclass
class DedupResult:
    """Which documents stay, and why the others went."""

    keep: list[bool]
    duplicate_of: list[int]  # index of the kept document a removed one duplicates, -1 when kept
    exact: int = 0
    near: int = 0
    params: dict = field(default_factory=dict)


def exact_duplicates(texts: list[str]) -> list[int]:
    """For each text, the index of an earlier identical text, or -1."""
    first: dict[bytes, int] = {}
    out = []
    for i, t in enumerate(texts):
        h = hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()
        j = first.get(h)
        if j is None:
            first[h] = i
            out.append(-1)
        else:
            out.append(j)
    return out


def deduplicate(texts: list[str], origins: list[str], threshold: float, num_perm: int = NUM_PERM, workers: int = 1,
                sigs: np.ndarray | None = None, has: np.ndarray | None = None) -> DedupResult:
    """Exact, then near-duplicate removal in the given order (earlier documents win).

    origins: a document is only a near duplicate of a kept one from another origin.
    sigs, has: every text's signature and shingle flag, when the caller computed them already.
    """
    n = len(texts)
    dup_of = exact_duplicates(texts)
    exact = sum(1 for d in dup_of if d >= 0)
    todo = [i for i in range(n) if dup_of[i] < 0]
    if sigs is None or has is None:
        sigs, has = signatures([texts[i] for i in todo], num_perm, workers)
    else:
        sigs, has = sigs[todo], has[todo]
    bands, rows = lsh_params(threshold, num_perm)
    keys = band_keys(sigs, bands, rows) if len(todo) else np.empty((0, bands), dtype=np.uint64)
    tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    near = 0
    need = int(np.ceil(threshold * num_perm - 1e-9))  # equal hash values needed to reach the threshold
    for j, i in enumerate(todo):
        if not has[j]:
            continue  # no words: nothing to compare; exact duplicates were handled above
        row = keys[j].tolist()
        match = -1
        seen: set[int] = set()
        for b in range(bands):
            for c in tables[b].get(row[b], ()):
                if c in seen:
                    continue
                seen.add(c)
                if origins[todo[c]] != origins[i] and int(np.count_nonzero(sigs[c] == sigs[j])) >= need:
                    match = todo[c]
                    break
            if match >= 0:
                break
        if match >= 0:
            dup_of[i] = match
            near += 1
            continue
        for b in range(bands):
            tables[b].setdefault(row[b], []).append(j)
    keep = [d < 0 for d in dup_of]
    return DedupResult(keep, dup_of, exact, near, {
        "shingles": f"word {SHINGLE_WORDS}-grams", "num_perm": num_perm, "threshold": threshold,
        "bands": bands, "rows": rows,
    })


def reference_deduplicate(texts: list[str], origins: list[str], threshold: float, num_perm: int = NUM_PERM) -> list[bool]:
    """The textbook datasketch loop, one document at a time: the baseline bench/mining.py times and tests compare against."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: set[bytes] = set()
    kept: dict[int, MinHash] = {}
    keep: list[bool] = []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        if digest in seen:
            keep.append(False)
            continue
        seen.add(digest)
        grams = shingles(text)
        if not grams:
            keep.append(True)
            continue
        m = MinHash(num_perm=num_perm)
        for g in grams:
            m.update(g.encode("utf-8", "surrogatepass"))
        if any(origins[k] != origins[i] and m.jaccard(kept[k]) >= threshold for k in lsh.query(m)):
            keep.append(False)
            continue
        lsh.insert(i, m)
        kept[i] = m
        keep.append(True)
    return keep


def batch_reference_deduplicate(texts: list[str], origins: list[str], threshold: float, num_perm: int = NUM_PERM) -> list[bool]:
    """datasketch's own fast path, as its documentation has a user write it: the second baseline of bench/mining.py.

    Every signature at once with ``MinHash.bulk`` (one vectorised update per document), every document into a
    ``MinHashLSH`` inside one ``insertion_session``, then one ``query`` per document in order. A document stays unless
    a kept document before it, from another origin, reaches the threshold: the set the one-at-a-time loop keeps.
    """
    from datasketch import MinHash, MinHashLSH

    keep = [True] * len(texts)
    first: dict[bytes, int] = {}
    todo: list[int] = []
    grams: list[list[bytes]] = []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        if digest in first:
            keep[i] = False
            continue
        first[digest] = i
        g = shingles(text)
        if g:
            todo.append(i)
            grams.append([x.encode("utf-8", "surrogatepass") for x in g])
    sigs = dict(zip(todo, MinHash.bulk(grams, num_perm=num_perm)))
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i in todo:
            session.insert(i, sigs[i], check_duplication=False)
    for i in todo:
        m = sigs[i]
        if any(c < i and keep[c] and origins[c] != origins[i] and m.jaccard(sigs[c]) >= threshold for c in lsh.query(m)):
            keep[i] = False
    return keep
