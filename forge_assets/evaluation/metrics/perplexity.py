"""Perplexity, overall and per sample kind, and the gate `adapter_beats_base` (gates.max_perplexity_ratio)."""

from __future__ import annotations

from forge_assets.evaluation.metrics import Gate, Metric, StatusLine, Verdict, setting

NAME = "adapter_beats_base"


def perplexity_gate(scores: dict, gates) -> Verdict:
    limit = float(setting(gates, "max_perplexity_ratio"))
    ratio = float(scores["perplexity_ratio"])
    figures = {"perplexity_ratio": ratio, "limit": limit, "base_perplexity": scores.get("base_perplexity"),
               "adapter_perplexity": scores.get("adapter_perplexity")}
    if ratio <= limit:
        return Verdict(NAME, True, f"The adapter's held-out perplexity is {ratio:.3f}x the base model's (limit {limit}): it passes.", figures)
    return Verdict(NAME, False,
                   f"The adapter's held-out perplexity is {ratio:.3f}x the base model's ({scores.get('adapter_perplexity')} vs "
                   f"{scores.get('base_perplexity')}; limit {limit}), so it is not promoted, exported or deployed; the last promoted "
                   "adapter stays. Fix: train longer or on more data, or raise gates.max_perplexity_ratio in forge.yaml.", figures)


METRICS = [Metric(
    "perplexity", ("<side>_perplexity", "<side>_perplexity_<kind>", "perplexity_ratio"),
    "token-weighted perplexity, overall and per sample kind (`code`, `fim`, `instruction`, `raft`, `doc`, `commit`, `synthetic`, `session`...), "
    "on up to `eval.perplexity_samples` samples of each kind; `perplexity_ratio` = adapter / base",
    settings=("perplexity_samples",), order=10,
    status=(StatusLine("perplexity_ratio", "ppl ratio"), StatusLine("adapter_perplexity", "ppl", "{label} {v:.2f}")))]
GATES = [Gate(
    NAME, "eval_scores", perplexity_gate,
    "Blocks an adapter whose held-out perplexity exceeds gates.max_perplexity_ratio times the base model's.",
    "adapter perplexity > `gates.max_perplexity_ratio` × base's", settings=("max_perplexity_ratio",), order=10)]
