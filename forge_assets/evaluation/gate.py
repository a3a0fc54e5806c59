"""The gates of forge.yaml's `gates:` block, judged on the figures of the asset each one guards.

eval_scores carries four (perplexity ratio, FIM not worse than base, HumanEval regression, and not worse
than the served adapter, the champion) and gguf one (quantization loss). Each is a blocking asset check: a version that fails one is never promoted,
exported or served, and the message gives the figures and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EVAL_GATES = ("adapter_beats_base", "fim_not_worse_than_base", "humaneval_no_regression", "not_worse_than_served")
GGUF_GATES = ("quantization_loss",)
SE_MULTIPLE = 2.0  # FIM: "worse" means worse by more than this many standard errors of the paired difference


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    message: str
    figures: dict = field(default_factory=dict)
    skipped: bool = False  # not judged for a reason the figures give (it blocks nothing and claims no pass)


def _g(gates, key: str):
    return gates[key] if isinstance(gates, dict) else getattr(gates, key)


def perplexity_gate(scores: dict, gates) -> Verdict:
    limit = float(_g(gates, "max_perplexity_ratio"))
    ratio = float(scores["perplexity_ratio"])
    figures = {"perplexity_ratio": ratio, "limit": limit, "base_perplexity": scores.get("base_perplexity"),
               "adapter_perplexity": scores.get("adapter_perplexity")}
    if ratio <= limit:
        return Verdict(EVAL_GATES[0], True, f"The adapter's held-out perplexity is {ratio:.3f}x the base model's (limit {limit}): it passes.", figures)
    return Verdict(EVAL_GATES[0], False,
                   f"The adapter's held-out perplexity is {ratio:.3f}x the base model's ({scores.get('adapter_perplexity')} vs "
                   f"{scores.get('base_perplexity')}; limit {limit}), so it is not promoted, exported or deployed; the last promoted "
                   "adapter stays. Fix: train longer or on more data, or raise gates.max_perplexity_ratio in forge.yaml.", figures)


def fim_gate(scores: dict, gates) -> Verdict:
    name = EVAL_GATES[1]
    if not _g(gates, "fim_not_worse"):
        return Verdict(name, True, "gates.fim_not_worse is off: not judged.", {})
    if scores.get("fim_skipped"):  # a base without FIM tokens: neither FIM samples nor cases, nothing to compare
        return Verdict(name, True, f"skipped: {scores['fim_skipped']}. FIM is not judged (neither passed nor failed). "
                       "Fix: train on a base with FIM tokens to have FIM judged.",
                       {"fim_cases": 0, "fim_samples_skipped": scores.get("fim_samples_skipped", 0)}, skipped=True)
    if not scores.get("fim_cases") or "fim_edit_similarity_delta" not in scores:
        return Verdict(name, True, "The test split has no FIM cases, so FIM cannot be judged: it passes.", {"fim_cases": scores.get("fim_cases", 0)})
    tol = float(_g(gates, "fim_tolerance"))
    worse = []
    figures: dict = {"fim_cases": scores["fim_cases"], "fim_tolerance": tol}
    for metric in ("exact_match", "edit_similarity"):
        delta, se = float(scores[f"fim_{metric}_delta"]), float(scores[f"fim_{metric}_delta_se"])
        figures |= {f"base_fim_{metric}": scores.get(f"base_fim_{metric}"), f"adapter_fim_{metric}": scores.get(f"adapter_fim_{metric}"),
                    f"fim_{metric}_delta": delta, f"fim_{metric}_delta_se": se}
        if delta < -tol and delta < -SE_MULTIPLE * se:
            worse.append(f"{metric.replace('_', ' ')} {scores.get(f'adapter_fim_{metric}')} vs base {scores.get(f'base_fim_{metric}')} "
                         f"(difference {delta:+.4f}, standard error {se:.4f})")
    if not worse:
        return Verdict(name, True, f"FIM on {scores['fim_cases']} cases: the adapter is not worse than the base model "
                       f"(edit similarity {scores.get('adapter_fim_edit_similarity')} vs {scores.get('base_fim_edit_similarity')}): it passes.", figures)
    return Verdict(name, False,
                   f"FIM on {scores['fim_cases']} held-out cases is worse with the adapter than without: {'; '.join(worse)}, beyond "
                   f"gates.fim_tolerance {tol} and {SE_MULTIPLE:g} standard errors. It is not promoted, exported or deployed. "
                   "Fix: give training more FIM samples (mining.fim_rate draws at most one per file; raise it to 1.0) or train "
                   "longer; to ship anyway, set gates.fim_tolerance (or gates.fim_not_worse: false) in forge.yaml.", figures)


def humaneval_gate(scores: dict, gates) -> Verdict:
    name = EVAL_GATES[2]
    limit = float(_g(gates, "max_humaneval_regression_points"))
    if "adapter_humaneval_pass_at_1" not in scores or "base_humaneval_pass_at_1" not in scores:
        if scores.get("humaneval_skipped"):
            return Verdict(name, True, f"{scores['humaneval_skipped']} Not judged.", {}, skipped=True)
        return Verdict(name, True, "HumanEval was not run (eval.humaneval.problems is 0): not judged.", {})
    base, adapter = 100 * float(scores["base_humaneval_pass_at_1"]), 100 * float(scores["adapter_humaneval_pass_at_1"])
    drop = round(base - adapter, 2)
    figures = {"base_pass_at_1_pct": base, "adapter_pass_at_1_pct": adapter, "regression_points": drop, "limit_points": limit,
               "problems": scores.get("humaneval_problems")}
    if drop <= limit:
        return Verdict(name, True, f"HumanEval pass@1 {adapter:.1f} % vs base {base:.1f} % on {scores.get('humaneval_problems')} problems "
                       f"(at most {limit} points lower allowed): it passes.", figures)
    return Verdict(name, False,
                   f"HumanEval pass@1 fell from {base:.1f} % (base) to {adapter:.1f} % with the adapter on {scores.get('humaneval_problems')} "
                   f"problems: {drop} points, more than gates.max_humaneval_regression_points {limit}. It is not promoted, exported or "
                   "deployed. Fix: lower training.learning_rate or epochs (the adapter forgets general coding), add replay or more "
                   "varied data; or raise gates.max_humaneval_regression_points in forge.yaml.", figures)


def served_gate(scores: dict, gates) -> Verdict:
    """The candidate against the champion (the promoted adapter, on the same base) on the same test split: blocked when
    any figure is worse by more than gates.served_tolerance *and* by more than SE_MULTIPLE standard errors of the
    paired difference. Perplexity is judged per sample kind (tolerance relative: the ratio above 1 + tolerance; the
    standard error that of the per-batch log-perplexity difference), FIM exact match and edit similarity and HumanEval
    pass@1 absolutely (tolerance in their own units: 0.02 is two points)."""
    name = EVAL_GATES[3]
    if not _g(gates, "not_worse_than_served"):
        return Verdict(name, True, "gates.not_worse_than_served is off: not judged.", {})
    if not scores.get("champion_version"):
        why = scores.get("champion_skipped") or "there is no served adapter to compare with"
        return Verdict(name, True, f"No champion: {why}. Not judged.", {}, skipped=True)
    tol = float(_g(gates, "served_tolerance"))
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
        if delta < -tol and delta < -SE_MULTIPLE * se:
            side = "humaneval_pass_at_1" if metric == "humaneval" else metric
            worse.append(f"{label} {scores.get(f'adapter_{side}')} vs served {scores.get(f'champion_{side}')} "
                         f"(difference {delta:+.4f}, standard error {se:.4f})")
    if not worse:
        judged = len([k for k in figures if k.endswith("_delta_se")])
        return Verdict(name, True, f"Not worse than the served adapter {champ[:12]} on {judged} figures (tolerance {tol}, "
                       f"{SE_MULTIPLE:g} standard errors): it passes.", figures)
    return Verdict(name, False,
                   f"The candidate is worse than the served adapter {champ[:12]} on the same test split: {'; '.join(worse)}; beyond "
                   f"gates.served_tolerance {tol} and {SE_MULTIPLE:g} standard errors. It stays a candidate: the served adapter and "
                   "its tag do not move. Fix: train longer or on more data (or with training.init_from: previous to build on the "
                   "served adapter); to ship anyway, raise gates.served_tolerance or set gates.not_worse_than_served: false.", figures)


def judge_eval(scores: dict, gates) -> list[Verdict]:
    """The eval_scores gates, in EVAL_GATES order."""
    return [perplexity_gate(scores, gates), fim_gate(scores, gates), humaneval_gate(scores, gates), served_gate(scores, gates)]


def quantization_gate(figures: dict, gates) -> Verdict:
    """The gguf gate: the shipped file's perplexity may exceed the reference's (the unquantized base GGUF + the LoRA GGUF,
    see export/pipeline.py) by at most gates.max_quantization_loss_pct."""
    name = GGUF_GATES[0]
    limit = float(_g(gates, "max_quantization_loss_pct"))
    loss = figures.get("quantization_loss_pct")
    qtype = figures.get("quantization", "?")
    if loss is None:
        return Verdict(name, True, "No quantization loss was measured (no held-out text to score): not judged.", {"limit_pct": limit})
    data = {"quantization_loss_pct": float(loss), "limit_pct": limit, "quantization": qtype,
            "gguf_perplexity": figures.get("gguf_perplexity"), "reference_perplexity": figures.get("reference_perplexity")}
    ref = figures.get("reference", "the unquantized reference")
    if float(loss) <= limit:
        return Verdict(name, True, f"The {qtype} GGUF's perplexity is {float(loss):+.3f} % vs the reference's ({ref}; limit {limit} %): it passes.", data)
    return Verdict(name, False,
                   f"The {qtype} GGUF's held-out perplexity is {figures.get('gguf_perplexity')} against {figures.get('reference_perplexity')} "
                   f"for the reference ({ref}): a quantization loss of {float(loss):.3f} %, more than gates.max_quantization_loss_pct {limit}. "
                   "It is not promoted or deployed; what is served stays. Fix: pick a wider type in deploy.quantization (Q8_0 or F16), "
                   "or raise gates.max_quantization_loss_pct in forge.yaml.", data)


def failed(verdicts: list[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if not v.passed]
