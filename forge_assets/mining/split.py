"""Held-out splits by time: the newest changes are the test split, so evaluation looks ahead.

Samples are split by origin: a file together with its history (its code, FIM, instruction and
commit samples), or a session; all samples of one origin land together, so a test file's older
versions cannot leak into training.

The fractions are fractions of *samples*, not of origins: the newest files are usually the busiest,
with many more samples than the rest, and counting origins put half of a real repository's samples in
`test`. So each origin weighs its sample count:

- test: origins with a time (the newest commit that touched the file, a session's time) are taken
  newest first (ties broken by a seeded hash) until they hold ``test_fraction`` of the samples; an
  origin that would overshoot the target by more than ``SLACK`` of all samples is passed over (it
  stays in training) and the next newest is tried, among the newest origins that hold ``LOOKBACK`` times
  the target. Origins without a time are drawn by the hash.
- valid: the remaining origins, in seeded-hash order, are taken the same way up to ``valid_fraction``.
- every sample kind with at least ``MIN_KIND_ORIGINS`` origins is represented in test and in valid: if a
  kind is missing there, the smallest of its three newest (test) or first-drawn (valid) origins in train is
  moved over.

Plain Python: no Dagster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SLACK = 0.01  # how far past its target a split may grow by taking one more origin, as a share of all samples
LOOKBACK = 3.0  # the test fill considers the newest origins holding at most this many times its target
MIN_KIND_ORIGINS = 3  # a kind of fewer origins than this is not forced into test and valid (train keeps it)


def stable_unit(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) for a key and seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


@dataclass
class SplitPlan:
    """Each origin's split, and the time from which origins are in the test split."""

    split_of: dict[str, str]
    test_since: int | None  # the time cut of the newest-first fill (unix seconds), None when the test split is untimed


def _fill(order: list[str], weights: dict[str, int], target: float, slack: float, lookback: float | None = None) -> list[str]:
    """Origins from `order` whose weights add up to `target`, passing over any that would overshoot by > slack.

    With `lookback`, the fill stops once the origins it considered (taken or passed over) weigh that much:
    the test split does not reach far back in time for small origins to fill up with.
    """
    taken, total, seen = [], 0, 0
    for k in order:
        if total >= target or (lookback is not None and seen >= lookback):
            break
        seen += weights[k]
        if total + weights[k] <= target + slack:
            taken.append(k)
            total += weights[k]
    return taken


def plan_splits(origins: dict[str, int | None], test_fraction: float, valid_fraction: float, seed: int,
                weights: dict[str, int] | None = None, kinds: dict[str, set[str]] | None = None) -> SplitPlan:
    """Assign every origin to train, valid or test (see the module docstring).

    origins: origin -> time (unix seconds) or None; weights: origin -> samples (default 1 each);
    kinds: origin -> the sample kinds it holds (for keeping every kind represented).
    """
    w = {k: max(1, int(weights.get(k, 1))) if weights else 1 for k in origins}
    total = sum(w.values())
    slack = SLACK * total
    timed = sorted((k for k, t in origins.items() if t is not None), key=lambda k: (-origins[k], stable_unit(k, seed), k))
    untimed = sorted((k for k, t in origins.items() if t is None), key=lambda k: (stable_unit("test:" + k, seed), k))
    split_of: dict[str, str] = {}
    by_time: list[int] = []

    if test_fraction > 0:
        # Untimed origins get their share of test by the hash; the timed newest fill the rest.
        untimed_test = [k for k in untimed if stable_unit("test:" + k, seed) < test_fraction]
        for k in untimed_test:
            split_of[k] = "test"
        target = test_fraction * total - sum(w[k] for k in untimed_test)
        for k in _fill(timed, w, target, slack, lookback=LOOKBACK * test_fraction * total):
            split_of[k] = "test"
    by_time = [origins[k] for k in timed if split_of.get(k) == "test"]

    rest = sorted((k for k in origins if k not in split_of), key=lambda k: (stable_unit("valid:" + k, seed), k))
    if valid_fraction > 0:
        for k in _fill(rest, w, valid_fraction * total, slack):
            split_of[k] = "valid"
    for k in rest:
        split_of.setdefault(k, "train")

    # Small corpora: keep every split non-empty when there are enough origins to go round.
    if len(origins) >= 3:
        if test_fraction > 0 and "test" not in split_of.values():
            pool = [k for k in timed if split_of[k] == "train"] or [k for k in untimed if split_of[k] == "train"]
            if pool:
                split_of[min(pool[:3], key=lambda k: w[k])] = "test"  # of the three newest, the smallest
        if valid_fraction > 0 and "valid" not in split_of.values():
            pool = [k for k in rest if split_of[k] == "train"]
            if pool:
                split_of[min(pool[:3], key=lambda k: w[k])] = "valid"

    if kinds:
        _represent_every_kind(split_of, kinds, w, timed, untimed, rest, test_fraction, valid_fraction)
    # The time cut: the oldest origin the newest-first fill took (kind moves and small-corpus picks are exceptions).
    test_times = by_time or [origins[k] for k in timed if split_of[k] == "test"]
    return SplitPlan(split_of, min(test_times) if test_times else None)


def _represent_every_kind(split_of: dict[str, str], kinds: dict[str, set[str]], w: dict[str, int], timed: list[str], untimed: list[str],
                          rest: list[str], test_fraction: float, valid_fraction: float) -> None:
    """Move one origin per missing kind from train into test (newest first) and valid (hash order)."""
    all_kinds = sorted({kind for ks in kinds.values() for kind in ks})
    for name, fraction, order in (("test", test_fraction, timed + untimed), ("valid", valid_fraction, rest)):
        if fraction <= 0:
            continue
        for kind in all_kinds:
            holders = [k for k in order if kind in kinds.get(k, ())]
            if len(holders) < MIN_KIND_ORIGINS or any(split_of[k] == name for k in holders):
                continue
            in_train = [k for k in holders if split_of[k] == "train"]
            if len(in_train) >= 2:  # train keeps at least one origin of the kind
                split_of[min(in_train[:3], key=lambda k: w[k])] = name
