"""The champion/challenger comparison (`served_...` paired differences) and the gate `not_worse_than_served`."""

from __future__ import annotations

from forge_assets.evaluation.metrics import SE_MULTIPLE, Gate, Metric, Verdict, setting, significantly_worse, verdict

NAME = "not_worse_than_served"


def served_gate(scores: dict, gates) -> Verdict:
    """The candidate against the champion (the promoted adapter, on the same base) on the same test split: blocked when
    any figure is worse by more than gates.served_tolerance *and* by more than SE_MULTIPLE standard errors of the
    paired difference. Perplexity is judged per sample kind (tolerance relative: the ratio above 1 + tolerance; the
    standard error that of the per-batch log-perplexity difference), FIM exact match and edit similarity and HumanEval
    pass@1 absolutely (tolerance in their own units: 0.02 is two points)."""
    if not setting(gates, "not_worse_than_served"):
        return Verdict(NAME, True, "gates.not_worse_than_served is off: not judged.", {})
    if not scores.get("champion_version"):
        why = scores.get("champion_skipped") or "there is no served adapter to compare with"
        return Verdict(NAME, True, f"No champion: {why}. Not judged.", {}, skipped=True)
    tol = float(setting(gates, "served_tolerance"))
    champ = str(scores["champion_version"])
    figures: dict = {"served_tolerance": tol}
    worse = []
    for key in sorted(k for k in scores if k.startswith("served_perplexity_ratio_")):
        kind = key.removeprefix("served_perplexity_ratio_")
        ratio = float(scores[key])
        delta, se = float(scores[f"served_log_perplexity_delta_{kind}"]), float(scores[f"served_log_perplexity_delta_{kind}_se"])
        figures |= {f"perplexity_ratio_{kind}": ratio, f"log_perplexity_delta_{kind}": delta, f"log_perplexity_delta_{kind}_se": se}
        if ratio > 1 + tol and delta > SE_MULTIPLE * se:
            worse.append(f"{kind} perplexity {scores.get(f'adapter_perplexity_{kind}')} vs served {scores.get(f'champion_perplexity_{kind}')} "
                         f"({ratio:.3f}x; log-perplexity {delta:+.4f} per batch, standard error {se:.4f})")
    for metric, label in (("fim_exact_match", "FIM exact match"), ("fim_edit_similarity", "FIM edit similarity"), ("humaneval", "HumanEval pass@1")):
        if f"served_{metric}_delta" not in scores:
            continue
        delta, se = float(scores[f"served_{metric}_delta"]), float(scores[f"served_{metric}_delta_se"])
        figures |= {f"{metric}_delta": delta, f"{metric}_delta_se": se}
        if significantly_worse(delta, se, tol):
            side = "humaneval_pass_at_1" if metric == "humaneval" else metric
            worse.append(f"{label} {scores.get(f'adapter_{side}')} vs served {scores.get(f'champion_{side}')} "
                         f"(difference {delta:+.4f}, standard error {se:.4f})")
    judged = len([k for k in figures if k.endswith("_delta_se")])
    return verdict(NAME, worse, f"Not worse than the served adapter {champ[:12]} on {judged} figures (tolerance {tol}, "
                   f"{SE_MULTIPLE:g} standard errors): it passes.",
                   f"The candidate is worse than the served adapter {champ[:12]} on the same test split: {{worse}}; beyond "
                   f"gates.served_tolerance {tol} and {SE_MULTIPLE:g} standard errors. It stays a candidate: the served adapter and "
                   "its tag do not move. Fix: train longer or on more data (or with training.init_from: previous to build on the "
                   "served adapter); to ship anyway, raise gates.served_tolerance or set gates.not_worse_than_served: false.", figures)


METRICS = [Metric(
    "served", ("served_perplexity_ratio_<kind>", "served_log_perplexity_delta_<kind>", "served_<figure>_delta", "served_<figure>_delta_se",
               "champion_version", "champion_skipped"),
    "the candidate against the champion (the served adapter, trained on the same base) on the very same perplexity batches, "
    "FIM cases and HumanEval problems: each paired difference (candidate - champion) and its standard error; perplexity per "
    "kind as the mean log-perplexity difference per evaluation batch. `champion_skipped` says why there is no champion",
    order=90)]
GATES = [Gate(
    NAME, "eval_scores", served_gate,
    "Blocks a candidate worse than the served (promoted) adapter on the same test split: perplexity per kind, FIM "
    f"or HumanEval beyond gates.served_tolerance and {SE_MULTIPLE:g} standard errors (gates.not_worse_than_served).",
    "with `gates.not_worse_than_served` on and a champion: a figure of the candidate is worse than the served adapter's by "
    "more than `gates.served_tolerance` (relative for perplexity of any sample kind, in points for FIM exact match, edit "
    f"similarity and HumanEval pass@1) **and** by more than {SE_MULTIPLE:g} standard errors of the paired difference. The tag "
    "does not move; `forge status` says why the candidate was not promoted",
    settings=("not_worse_than_served", "served_tolerance"), order=90)]
