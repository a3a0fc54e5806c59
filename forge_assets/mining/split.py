"""Held-out splits by time: the newest changes are the test split, so evaluation looks ahead.

Samples are split by origin: a file together with its history (its code, FIM, instruction and
commit samples), or a session; all samples of one origin land together, so a test file's older
versions cannot leak into training. Origins with a time (the newest commit that touched the file)
are ordered newest first and the first ``test_fraction`` of them form the test split;
ties at the cut are broken by a seeded hash. Origins without a time (session logs without one)
are split by that hash. Validation is a seeded-hash draw of ``valid_fraction`` from the rest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def stable_unit(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) for a key and seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


@dataclass
class SplitPlan:
    """Each origin's split, and the time from which origins are in the test split."""

    split_of: dict[str, str]
    test_since: int | None  # the oldest test origin's time (unix seconds), None when the test split is untimed


def plan_splits(origins: dict[str, int | None], test_fraction: float, valid_fraction: float, seed: int) -> SplitPlan:
    """Assign every origin to train, valid or test (see the module docstring)."""
    timed = sorted((k for k, t in origins.items() if t is not None), key=lambda k: (-origins[k], stable_unit(k, seed), k))
    untimed = sorted(k for k, t in origins.items() if t is None)
    split_of: dict[str, str] = {}
    n_test = round(len(timed) * test_fraction) if test_fraction > 0 else 0
    if test_fraction > 0 and len(timed) >= 3:
        n_test = max(n_test, 1)
    for k in timed[:n_test]:
        split_of[k] = "test"
    test_since = origins[timed[n_test - 1]] if n_test else None
    for k in untimed:
        if stable_unit("test:" + k, seed) < test_fraction:
            split_of[k] = "test"
    rest = [k for k in timed[n_test:]] + [k for k in untimed if k not in split_of]
    valid_share = valid_fraction / (1 - test_fraction) if test_fraction < 1 else 0.0
    for k in rest:
        split_of[k] = "valid" if stable_unit("valid:" + k, seed) < valid_share else "train"
    # Small corpora: keep every split non-empty when there are enough origins to go round.
    if len(origins) >= 3:
        if valid_fraction > 0 and "valid" not in split_of.values():
            pool = sorted((k for k in split_of if split_of[k] == "train"), key=lambda k: stable_unit("valid:" + k, seed))
            if pool:
                split_of[pool[0]] = "valid"
        if test_fraction > 0 and "test" not in split_of.values():
            pool = [k for k in timed if split_of[k] == "train"] or [k for k in untimed if split_of[k] == "train"]
            if pool:
                split_of[pool[0]] = "test"
                test_since = origins[pool[0]]
    return SplitPlan(split_of, test_since)
