"""Exact and near-duplicate removal over every sample of a dataset, across repos and sample kinds.

- Exact: the SHA-256 of a sample's text; the first copy stays.
- Near: MinHash (datasketch, 128 permutations, its default scheme) over **word 5-gram shingles**
  (runs of ``\\w+`` tokens; punctuation and whitespace are ignored, so re-indented or re-formatted
  copies still match) with LSH banding sized by datasketch for the threshold. A candidate counts
  as a duplicate only if its estimated Jaccard similarity reaches the threshold and it comes from
  a different origin (another file, commit or session): the samples one file yields (its code
  units, FIM, instruction pairs) overlap by design and are not duplicates of one another.

Documents are visited in the order given; a document is compared with the kept ones before it.
Speed (``bench/mining.py`` measures it against datasketch's own batch path, ``batch_reference_deduplicate``):
signatures are computed in worker processes over chunks of equal text size (``minhash_rows``): words become integer
ids, 5-grams exact numpy keys, only each distinct shingle of a chunk is spelled out and SHA-1 hashed, each distinct
value is permuted once into a reused, cache-sized buffer, and every document takes its minimum with a small gather;
the signatures equal datasketch's bit for bit. LSH bands are hashed for all documents at once with numpy; the result
is the same set a one-at-a-time MinHashLSH loop keeps.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) datasketch's MinHashLSH picks for a threshold (memoised: datasketch integrates for it, 50 ms)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


_BATCH_VALUES = 1 << 14  # shingle occurrences per vectorised step: an (values x num_perm) buffer of 8 MB stays in cache


def minhash_matrix(value_lists: list[list[int]], num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signatures (n x num_perm, uint64) of documents given as their shingles' 32-bit hash values, equal bit
    for bit to ``MinHash.bulk(value_lists, num_perm=num_perm, hashfunc=int)``'s hashvalues (datasketch's default
    scheme, affine32: fmix32 pre-mix, then ``a*h + b`` wrapping in uint32, the minimum per permutation).

    Faster than ``MinHash.bulk`` because it permutes each *distinct* value of a batch of documents once (one file's
    samples share most shingles) and takes every document's minimum with a small gather, instead of one numpy update
    per document. Another scheme (a future default) falls back to ``MinHash.bulk``.
    """
    lens = np.fromiter((len(v) for v in value_lists), dtype=np.int64, count=len(value_lists))
    flat = np.fromiter(itertools.chain.from_iterable(value_lists), dtype=np.uint32, count=int(lens.sum()))
    return _minhash_flat(flat, lens, num_perm)


def _affine32(num_perm: int):
    """datasketch's default scheme's (a, b, empty signature, fmix32), or None when its default is another scheme."""
    from datasketch import MinHash

    proto = MinHash(num_perm=num_perm)
    try:
        from datasketch.minhash import _fmix
    except ImportError:  # pragma: no cover - a datasketch without the helper
        return None
    if getattr(proto, "scheme", None) != "affine32":  # pragma: no cover - datasketch < 2 or a new default
        return None
    a, b = (np.asarray(x, dtype=np.uint32) for x in proto.permutations)
    return a, b, np.asarray(proto.hashvalues, dtype=np.uint64), _fmix


def _minhash_flat(flat: np.ndarray, lens: np.ndarray, num_perm: int) -> np.ndarray:
    """minhash_matrix for the documents' hash values concatenated (flat, uint32) with each document's count (lens)."""
    out = np.empty((len(lens), num_perm), dtype=np.uint64)
    scheme = _affine32(num_perm)
    if scheme is None:  # pragma: no cover - see minhash_matrix
        from datasketch import MinHash

        bounds = np.concatenate(([0], np.cumsum(lens))).tolist()
        lists = [flat[bounds[i]:bounds[i + 1]].tolist() for i in range(len(lens))]
        for i, m in enumerate(MinHash.bulk(lists, num_perm=num_perm, hashfunc=int)):
            out[i] = m.hashvalues
        return out
    a, b, empty, fmix = scheme
    out[lens == 0] = empty  # a document with no shingle keeps the sentinel
    counts = lens.tolist()
    # One permutation buffer for every batch: a fresh (distinct x num_perm) array per batch costs more in page faults
    # than the arithmetic itself.
    buffer = np.empty((min(_BATCH_VALUES, len(flat)), num_perm), dtype=np.uint32)
    lo = offset = 0
    while lo < len(counts):
        hi, size = lo, 0
        while hi < len(counts) and (size == 0 or size + counts[hi] <= _BATCH_VALUES):
            size += counts[hi]
            hi += 1
        if size:
            distinct, where = np.unique(flat[offset:offset + size], return_inverse=True)
            if len(distinct) > len(buffer):  # one document with more shingles than a batch holds
                buffer = np.empty((len(distinct), num_perm), dtype=np.uint32)
            permuted = buffer[: len(distinct)]
            np.multiply.outer(fmix(distinct, 32).astype(np.uint32, copy=False), a, out=permuted)
            permuted += b  # uint32 arithmetic wraps: datasketch's modulo 2^32
            where = where.reshape(-1)
            start = 0
            for i in range(lo, hi):
                n = counts[i]
                if n:  # a small gather and min per document stays in cache: faster than one reduceat over the batch
                    out[i] = permuted[where[start:start + n]].min(axis=0)
                    start += n
        lo, offset = hi, offset + size
    return out


_GROUP_WORDS = 1 << 21  # word tokens per group in minhash_rows: every word id and every distinct 3-id prefix fits 21 bits


def minhash_rows(word_lists: list[list[str]], num_perm: int = NUM_PERM) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of texts given as word tokens, in this process; and which had any shingle.

    The same values as hashing every shingle string of every document (``minhash_strings``), found with fewer Python
    objects: words become integer ids, a document's 5-grams become exact 64-bit keys in numpy, and only each
    *distinct* shingle of a group of documents is joined into its string and hashed (SHA-1, datasketch's
    ``sha1_hash32``). Groups hold at most 2^21 words, so ids and keys never overflow.
    """
    out = np.empty((len(word_lists), num_perm), dtype=np.uint64)
    lo = 0
    while lo < len(word_lists):
        hi, size = lo, 0
        while hi < len(word_lists) and (size == 0 or size + len(word_lists[hi]) <= _GROUP_WORDS):
            size += len(word_lists[hi])
            hi += 1
        if size > _GROUP_WORDS:  # one document longer than a group: the string path has no such bound
            out[lo:hi] = minhash_strings(word_lists[lo:hi], num_perm)
        else:
            out[lo:hi] = _minhash_group(word_lists[lo:hi], num_perm)
        lo = hi
    return out, np.fromiter((bool(w) for w in word_lists), dtype=bool, count=len(word_lists))


def minhash_strings(word_lists: list[list[str]], num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signatures from every document's shingle strings, each hashed through the per-process cache: the
    plain way, which minhash_rows must equal."""
    hasher = _hasher()
    return minhash_matrix([hasher.values(shingle_set(w)) for w in word_lists], num_perm)


_KEY_MULT = np.random.RandomState(20261204).randint(1, 2**62, size=SHINGLE_WORDS, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)


def _distinct_rows(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For rows given as equal-length uint64 columns (ids below 2^21): one index of each distinct row, and each row's
    distinct number. One sort of a 64-bit key folded from the row; the rows are then checked against their group's
    first, so a key shared by two different rows (rare) costs the exact two-sort path, never a wrong answer."""
    with np.errstate(over="ignore"):
        key = columns[0] * _KEY_MULT[0]
        for k in range(1, len(columns)):
            key = (key ^ (key >> np.uint64(29))) + columns[k] * _KEY_MULT[k]
    order = np.argsort(key)
    ranked = key[order]
    new = np.empty(len(key), dtype=bool)
    new[:1] = True
    np.not_equal(ranked[1:], ranked[:-1], out=new[1:])
    group = np.cumsum(new) - 1
    one = order[new]
    lead = one[group]
    if all(np.array_equal(col[order], col[lead]) for col in columns):
        which = np.empty(len(key), dtype=np.int64)
        which[order] = group
        return one, which
    # Exact: three ids in 63 bits, their rank (< 2^21) and two more ids in 63.
    _, head = np.unique((columns[0] << np.uint64(42)) | (columns[1] << np.uint64(21)) | columns[2], return_inverse=True)
    exact = (head.reshape(-1).astype(np.uint64) << np.uint64(42)) | (columns[3] << np.uint64(21)) | columns[4]
    _, one, which = np.unique(exact, return_index=True, return_inverse=True)
    return one, which.reshape(-1)


def _minhash_group(word_lists: list[list[str]], num_perm: int) -> np.ndarray:
    """minhash_rows for at most 2^21 words in all."""
    n = len(word_lists)
    lens = np.fromiter((len(w) for w in word_lists), dtype=np.int64, count=n)
    vocab = {w: i for i, w in enumerate(dict.fromkeys(itertools.chain.from_iterable(word_lists)))}
    ids = np.fromiter(map(vocab.__getitem__, itertools.chain.from_iterable(word_lists)), dtype=np.uint64,
                      count=int(lens.sum()))
    spelled = [w.encode("utf-8", "surrogatepass") for w in vocab]  # by id: dicts keep insertion order
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    sha1 = hashlib.sha1
    docs: list[np.ndarray] = []  # per shingle: its document, its distinct-shingle id, both sorted
    shingle_ids: list[np.ndarray] = []
    values: list[np.ndarray] = []
    # Documents of 5 words or more: every 5-gram as an exact key (three 21-bit ids, then the rank of those three and
    # two more ids); only each distinct key is spelled out and hashed.
    long_ = np.flatnonzero(lens >= SHINGLE_WORDS)
    grams = lens[long_] - (SHINGLE_WORDS - 1)
    if len(long_):
        within = np.arange(int(grams.sum())) - np.repeat(np.cumsum(grams) - grams, grams)
        pos = np.repeat(starts[long_], grams) + within  # each 5-gram's first word
        c = [ids[pos + k] for k in range(SHINGLE_WORDS)]
        one, which = _distinct_rows(c)
        sp = [w + b" " for w in spelled]
        cols = [col[one].tolist() for col in c]
        values.append(np.frombuffer(b"".join([sha1(sp[i0] + sp[i1] + sp[i2] + sp[i3] + spelled[i4]).digest()[:4]
                                              for i0, i1, i2, i3, i4 in zip(*cols)]), dtype="<u4"))
        docs.append(np.repeat(long_, grams))
        shingle_ids.append(which)
    # Documents of 1 to 4 words: the one shingle of all their words.
    short = np.flatnonzero((lens < SHINGLE_WORDS) & (lens > 0))
    if len(short):
        offset = len(values[0]) if values else 0
        values.append(np.frombuffer(b"".join(
            sha1(b" ".join(spelled[j] for j in ids[starts[i]:starts[i] + lens[i]].tolist())).digest()[:4]
            for i in short.tolist()), dtype="<u4"))
        docs.append(short)
        shingle_ids.append(np.arange(offset, offset + len(short)))
    if not values:
        return _minhash_flat(np.empty(0, dtype=np.uint32), np.zeros(n, dtype=np.int64), num_perm)
    # Each document's distinct shingles, documents in order: one sort of (document, shingle id).
    pairs = np.sort((np.concatenate(docs).astype(np.uint64) << np.uint64(32)) | np.concatenate(shingle_ids).astype(np.uint64))
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]  # (np.unique without an inverse hashes: slower)
    counts = np.bincount((pairs >> np.uint64(32)).astype(np.int64), minlength=n).astype(np.int64)
    return _minhash_flat(np.concatenate(values)[(pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)], counts, num_perm)


def _signature_chunk(chunk: tuple[list[str], int]) -> tuple[np.ndarray, np.ndarray]:
    texts, num_perm = chunk
    return minhash_rows([_WORD.findall(t) for t in texts], num_perm)


def chunks(n: int, workers: int, sizes: list[int] | None = None) -> list[tuple[int, int]]:
    """(lo, hi) ranges splitting n documents into a few chunks per worker (four each).

    With sizes (each document's length), the chunks hold about equal amounts of text rather than equal numbers of
    documents: samples come sorted by kind, and one kind's documents (commit diffs) can be many times another's,
    which would leave one worker with most of the work.
    """
    parts = max(1, workers) * 4
    if not sizes:
        step = max(1, -(-n // parts))
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
    total = int(ends[-1]) if n else 0
    cuts = np.searchsorted(ends, [total * k / parts for k in range(1, parts)], side="left") + 1
    bounds = sorted({0, n, *(min(int(c), n) for c in cuts)})
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


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
    parts_in = [(texts[lo:hi], num_perm) for lo, hi in chunks(n, workers, [len(t) for t in texts])]
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
    near = 0
    need = int(np.ceil(threshold * num_perm - 1e-9))  # equal hash values needed to reach the threshold
    # Only a document that shares a bucket with an earlier one can be a near duplicate, and few do: find them (and each
    # shared bucket's members, in order) with one sort per band, and compare only those, in order. The same traversal
    # as a MinHashLSH filled one kept document at a time: bands in order, a bucket's kept members in insertion order.
    live = np.flatnonzero(has)  # no words: nothing to compare and never inserted; exact duplicates were handled above
    buckets: list[dict[int, list[int]]] = []
    later = np.zeros(len(todo), dtype=bool)
    for b in range(bands):
        col = keys[live, b]
        order = np.argsort(col, kind="stable")
        ranked = col[order]
        same = np.flatnonzero(ranked[1:] == ranked[:-1]) + 1  # positions whose key equals the one before
        later[live[order[same]]] = True
        shared: dict[int, list[int]] = {}
        for pos in same.tolist():
            members = shared.setdefault(int(ranked[pos]), [int(live[order[pos - 1]])])
            members.append(int(live[order[pos]]))
        buckets.append(shared)
    kept = np.ones(len(todo), dtype=bool)
    for j in np.flatnonzero(later).tolist():
        i = todo[j]
        row = keys[j].tolist()
        match = -1
        seen: set[int] = set()
        for b in range(bands):
            for c in buckets[b].get(row[b], ()):
                if c >= j:
                    break  # members are in order: the rest come after this document
                if c in seen or not kept[c]:
                    continue
                seen.add(c)
                if origins[todo[c]] != origins[i] and int(np.count_nonzero(sigs[c] == sigs[j])) >= need:
                    match = todo[c]
                    break
            if match >= 0:
                break
        if match >= 0:
            dup_of[i] = match
            kept[j] = False
            near += 1
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
