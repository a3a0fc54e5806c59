"""Exact and near-duplicate removal over every sample of a dataset, across repos and sample kinds.

- Exact: the SHA-256 of a sample's text; the first copy stays.
- Near: MinHash (datasketch, 128 permutations, its default scheme) over **word 5-gram shingles**
  (runs of ``\\w+`` tokens; punctuation and whitespace are ignored, so re-indented or re-formatted
  copies still match) with LSH banding sized by datasketch for the threshold. A candidate counts
  as a duplicate only if its estimated Jaccard similarity reaches the threshold and it comes from
  a different origin (another file, commit or session): the samples one file yields (its code
  units, FIM, instruction pairs) overlap by design and are not duplicates of one another.

Documents are visited in the order given; a document is compared with the kept ones before it.
Speed: signatures are computed in batches with ``MinHash.bulk`` (one vectorised numpy update per
document instead of one per shingle), across worker processes, and LSH bands are hashed for all
documents at once with numpy; the result is the same set a one-at-a-time MinHashLSH loop keeps.
"""

from __future__ import annotations

import hashlib
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
    if len(words) <= n:
        return [" ".join(words)] if words else []
    return list(set(map(" ".join, zip(*(words[i:] for i in range(n))))))


class CachedSha1:
    """datasketch's sha1_hash32 over UTF-8 shingles, memoised: one file's samples share most shingles.

    The values are exactly sha1_hash32's, so signatures equal a plain MinHash's bit for bit.
    """

    def __init__(self, limit: int = 4_000_000) -> None:
        from datasketch.hashfunc import sha1_hash32

        self._hash, self._cache, self._limit = sha1_hash32, {}, limit

    def values(self, grams: list[str]) -> list[int]:
        """The hash value of each shingle (looked up with C-level map once the cache holds them)."""
        cache = self._cache
        missing = [g for g in grams if g not in cache]
        if len(cache) + len(missing) > self._limit:
            cache.clear()  # bound memory on huge corpora; values stay the same, only speed drops
        for g in missing:
            cache[g] = self._hash(g.encode("utf-8", "surrogatepass"))
        return list(map(cache.__getitem__, grams))


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) datasketch's MinHashLSH picks for a threshold."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def minhash_rows(word_lists: list[list[str]], num_perm: int = NUM_PERM) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of texts given as word tokens, in this process; and which had any shingle."""
    from datasketch import MinHash

    sets = [shingles_of(w) for w in word_lists]
    sigs = np.empty((len(sets), num_perm), dtype=np.uint64)
    hasher = CachedSha1()
    # The values are hashed already: datasketch's hashfunc is then the identity (int, a C call).
    for i, m in enumerate(MinHash.bulk((hasher.values(g) for g in sets), num_perm=num_perm, hashfunc=int)):
        sigs[i] = m.hashvalues
    return sigs, np.array([bool(s) for s in sets], dtype=bool)


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
