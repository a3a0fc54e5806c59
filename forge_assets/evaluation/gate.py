"""The gates of forge.yaml's `gates:` block, judged on the figures of the asset each one guards.

Each gate is declared once, in its module of `evaluation/metrics/` (the registry): eval_scores carries four
(perplexity ratio, FIM not worse than base, HumanEval regression, and not worse than the served adapter, the
champion) and gguf one (quantization loss). Each is a blocking asset check: a version that fails one is never
promoted, exported or served, and the message gives the figures and the fix. This module is what the assets and
the CLI import: the names and the judging, derived from the registry.
"""

from __future__ import annotations

from forge_assets.evaluation import metrics
from forge_assets.evaluation.metrics import SE_MULTIPLE, Verdict  # noqa: F401  (imported from here)
from forge_assets.evaluation.metrics.fim import fim_gate  # noqa: F401
from forge_assets.evaluation.metrics.humaneval import humaneval_gate  # noqa: F401
from forge_assets.evaluation.metrics.perplexity import perplexity_gate  # noqa: F401
from forge_assets.evaluation.metrics.quantization import quantization_gate
from forge_assets.evaluation.metrics.served import served_gate  # noqa: F401

EVAL_GATES = metrics.gate_names("eval_scores")
GGUF_GATES = metrics.gate_names("gguf")


def judge_eval(scores: dict, gates) -> list[Verdict]:
    """The eval_scores gates, in EVAL_GATES order."""
    return metrics.judge("eval_scores", scores, gates)


def judge_gguf(figures: dict, gates) -> Verdict:
    """The gguf gate (one today): the first failing verdict, else the last."""
    verdicts = metrics.judge("gguf", figures, gates)
    return next((v for v in verdicts if not v.passed), verdicts[-1])


def failed(verdicts: list[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if not v.passed]


__all__ = ["EVAL_GATES", "GGUF_GATES", "SE_MULTIPLE", "Verdict", "failed", "fim_gate", "humaneval_gate", "judge_eval", "judge_gguf",
           "perplexity_gate", "quantization_gate", "served_gate"]
