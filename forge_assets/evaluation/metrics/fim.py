"""Fill-in-the-middle exact match and edit similarity, and the gate `fim_not_worse_than_base`."""

from __future__ import annotations

from forge_assets.evaluation.metrics import SE_MULTIPLE, Gate, Metric, StatusLine, Verdict, setting, significantly_worse, verdict

NAME = "fim_not_worse_than_base"


def fim_gate(scores: dict, gates) -> Verdict:
    if not setting(gates, "fim_not_worse"):
        return Verdict(NAME, True, "gates.fim_not_worse is off: not judged.", {})
    if scores.get("fim_skipped"):  # a base without FIM tokens: neither FIM samples nor cases, nothing to compare
        return Verdict(NAME, True, f"skipped: {scores['fim_skipped']}. FIM is not judged (neither passed nor failed). "
                       "Fix: train on a base with FIM tokens to have FIM judged.",
                       {"fim_cases": 0, "fim_samples_skipped": scores.get("fim_samples_skipped", 0)}, skipped=True)
    if not scores.get("fim_cases") or "fim_edit_similarity_delta" not in scores:
        return Verdict(NAME, True, "The test split has no FIM cases, so FIM cannot be judged: it passes.", {"fim_cases": scores.get("fim_cases", 0)})
    tol = float(setting(gates, "fim_tolerance"))
    worse = []
    figures: dict = {"fim_cases": scores["fim_cases"], "fim_tolerance": tol}
    for metric in ("exact_match", "edit_similarity"):
        delta, se = float(scores[f"fim_{metric}_delta"]), float(scores[f"fim_{metric}_delta_se"])
        figures |= {f"base_fim_{metric}": scores.get(f"base_fim_{metric}"), f"adapter_fim_{metric}": scores.get(f"adapter_fim_{metric}"),
                    f"fim_{metric}_delta": delta, f"fim_{metric}_delta_se": se}
        if significantly_worse(delta, se, tol):
            worse.append(f"{metric.replace('_', ' ')} {scores.get(f'adapter_fim_{metric}')} vs base {scores.get(f'base_fim_{metric}')} "
                         f"(difference {delta:+.4f}, standard error {se:.4f})")
    return verdict(NAME, worse, f"FIM on {scores['fim_cases']} cases: the adapter is not worse than the base model (edit "
                   f"similarity {scores.get('adapter_fim_edit_similarity')} vs {scores.get('base_fim_edit_similarity')}): it passes.",
                   f"FIM on {scores['fim_cases']} held-out cases is worse with the adapter than without: {{worse}}, beyond "
                   f"gates.fim_tolerance {tol} and {SE_MULTIPLE:g} standard errors. It is not promoted, exported or deployed. "
                   "Fix: give training more FIM samples (raise mining.fim_share, e.g. to 0.45, and check mining.fim_rate is 1) or "
                   "train longer; to ship anyway, set gates.fim_tolerance (or gates.fim_not_worse: false) in forge.yaml.", figures)


METRICS = [Metric(
    "fim", ("<side>_fim_exact_match", "<side>_fim_edit_similarity", "<side>_fim_<metric>_<kind>", "fim_<metric>_delta", "fim_<metric>_delta_se"),
    "fill-in-the-middle on up to `eval.fim_cases` cases cut from the test split's code at syntax-tree spans (`line`: one "
    "statement's line, `block`: a function/if/loop body of 1-15 lines, `arguments`: a call's arguments; tree-sitter, kinds "
    "taking turns), prompted exactly as serving prompts (`fim_eval.fim_prompt`). Exact match ignores trailing whitespace; edit "
    "similarity is 1 - Levenshtein distance / longer length, over characters. `fim_<metric>_delta` and `_delta_se`: adapter - "
    "base on the same cases and the standard error of that paired difference",
    settings=("fim_cases", "fim_context_chars", "fim_max_new_tokens"), order=20,
    status=(StatusLine("adapter_fim_exact_match", "FIM EM"), StatusLine("adapter_fim_edit_similarity", "FIM sim")))]
GATES = [Gate(
    NAME, "eval_scores", fim_gate,
    "Blocks an adapter whose FIM exact match or edit similarity is worse than the base model's (gates.fim_not_worse).",
    "with `gates.fim_not_worse` on: the adapter's FIM exact match or edit similarity is below the base's by more than "
    f"`gates.fim_tolerance` **and** by more than {SE_MULTIPLE:g} standard errors of the paired difference, so neither the noise "
    "of a small case set nor a near-chance model's wobble fails a run; a base without FIM tokens is not judged",
    settings=("fim_not_worse", "fim_tolerance"), order=20)]
