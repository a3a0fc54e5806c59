"""The quality gate: an adapter ships only if its held-out perplexity is within the limit of the base model's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    passed: bool
    ratio: float
    limit: float
    message: str


def gate(scores: dict, limit: float) -> Verdict:
    """Judge eval scores against deploy.max_perplexity_ratio; the message says why and the fix."""
    ratio = float(scores["perplexity_ratio"])
    if ratio <= limit:
        return Verdict(True, ratio, limit, f"The adapter's held-out perplexity is {ratio:.3f}x the base model's (limit {limit}): it passes.")
    return Verdict(False, ratio, limit,
                   f"The adapter's held-out perplexity is {ratio:.3f}x the base model's (limit {limit}), so it is not promoted, "
                   "exported or deployed; the last promoted adapter stays. "
                   "Fix: train longer or on more data, or raise deploy.max_perplexity_ratio in forge.yaml.")
