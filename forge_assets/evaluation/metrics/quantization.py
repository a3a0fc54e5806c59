"""The shipped GGUF's quantization loss (figures of the `gguf` asset), and its gate `quantization_loss`."""

from __future__ import annotations

from forge_assets.evaluation.metrics import Gate, Metric, StatusLine, Verdict, setting

NAME = "quantization_loss"


def quantization_gate(figures: dict, gates) -> Verdict:
    """The gguf gate: the shipped file's perplexity may exceed the reference's (the unquantized base GGUF + the LoRA GGUF,
    see export/pipeline.py) by at most gates.max_quantization_loss_pct."""
    limit = float(setting(gates, "max_quantization_loss_pct"))
    loss = figures.get("quantization_loss_pct")
    qtype = figures.get("quantization", "?")
    if loss is None:
        return Verdict(NAME, True, "No quantization loss was measured (no held-out text to score): not judged.", {"limit_pct": limit})
    data = {"quantization_loss_pct": float(loss), "limit_pct": limit, "quantization": qtype,
            "gguf_perplexity": figures.get("gguf_perplexity"), "reference_perplexity": figures.get("reference_perplexity")}
    ref = figures.get("reference", "the unquantized reference")
    if float(loss) <= limit:
        return Verdict(NAME, True, f"The {qtype} GGUF's perplexity is {float(loss):+.3f} % vs the reference's ({ref}; limit {limit} %): it passes.", data)
    return Verdict(NAME, False,
                   f"The {qtype} GGUF's held-out perplexity is {figures.get('gguf_perplexity')} against {figures.get('reference_perplexity')} "
                   f"for the reference ({ref}): a quantization loss of {float(loss):.3f} %, more than gates.max_quantization_loss_pct {limit}. "
                   "It is not promoted or deployed; what is served stays. Fix: pick a wider type in deploy.quantization (Q8_0 or F16), "
                   "or raise gates.max_quantization_loss_pct in forge.yaml.", data)


METRICS = [Metric(
    "quantization_loss", ("quantization_loss_pct", "quantization_loss_by_type", "gguf_perplexity", "reference_perplexity"),
    "(`gguf` figures) the served GGUF's perplexity through llama.cpp against its reference's (the unquantized base GGUF with "
    "the F16 LoRA GGUF applied) on the same token ids: (served / reference - 1) x 100; per type of `eval.extra_quantizations` "
    "in `quantization_loss_by_type`",
    settings=("gguf_windows", "gguf_window_tokens", "extra_quantizations"), order=95,
    status=(StatusLine("quantization_loss_pct", "quant loss %", "quant loss {v:.2f}%", asset="gguf"),))]
GATES = [Gate(
    NAME, "gguf", quantization_gate,
    "Blocks a GGUF whose held-out perplexity exceeds the reference's (unquantized base GGUF + LoRA GGUF) by more than gates.max_quantization_loss_pct.",
    "`quantization_loss_pct` > `gates.max_quantization_loss_pct`", settings=("max_quantization_loss_pct",), order=95)]
