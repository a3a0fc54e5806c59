"""The gguf stage as plain code: merge an adapter into its base, convert to GGUF, quantize, prove it loads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from forge_assets.export.gguf_export import convert_to_gguf, gguf_summary, quantize, smoke_generate
from forge_assets.training.adapter import merge_adapter

KEEP = ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "config.json")  # what serving needs besides the GGUF


def export_gguf(base: Path, adapter: Path, out: Path, work: Path, qtype: str, name: str,
                phase: Callable[[str], None] = lambda _: None, held_out: list[str] | None = None,
                extra_quantizations: list[str] = (), windows: int = 24, window_tokens: int = 512,
                log: Callable[[str], None] = print) -> dict:
    """Write `model-<qtype>.gguf` (plus tokenizer files) into out; return figures for metadata.

    With `held_out` texts, the shipped GGUF is scored through llama.cpp on the same token windows as the merged
    Hugging Face model, and the quantization loss reported in percent; so is each of `extra_quantizations`
    (quantized in `work` and removed, not shipped). `phase` is told each step's name before it starts, so a crash
    can be attributed to it.
    """
    phase("merge")
    merge_adapter(base, adapter, work / "merged")
    phase("convert")
    conversion = convert_to_gguf(work / "merged", work / "model-F32.gguf", "F32", name=name)
    target = out / f"model-{qtype}.gguf"
    phase("quantize")
    if qtype == "F32":
        shutil.copyfile(work / "model-F32.gguf", target)
    else:
        quantize(work / "model-F32.gguf", target, qtype)
    for keep in KEEP:
        if (work / "merged" / keep).is_file():
            shutil.copyfile(work / "merged" / keep, out / keep)
    phase("smoke_generate")
    smoke = smoke_generate(target, "def ", max_tokens=12)
    summary = gguf_summary(target)
    scored = {}
    if held_out:
        scored = score_quantizations(work / "merged", target, qtype, work / "model-F32.gguf", work, held_out, list(extra_quantizations),
                                     windows, window_tokens, phase, log)
    return {**scored, "file": target.name, "bytes": summary["bytes"], "tensors": conversion["tensors"], "vocab_size": conversion["vocab_size"],
            "tokenizer_pre": summary["tokenizer_pre"], "smoke_completion": smoke["completion"],
            "smoke_completion_tokens": smoke["completion_tokens"], "tensor_types": summary["tensor_types"]}


def score_quantizations(merged: Path, shipped: Path, qtype: str, f32: Path, work: Path, texts: list[str], extra: list[str],
                        windows: int, window_tokens: int, phase: Callable[[str], None], log: Callable[[str], None]) -> dict:
    """Perplexity of the merged model and of each GGUF on the same held-out token windows; the loss in percent per type."""
    from transformers import AutoTokenizer

    from forge_assets.export.gguf_eval import gguf_perplexity, hf_perplexity, quantization_loss_pct, token_windows

    phase("score_gguf")
    tokenizer = AutoTokenizer.from_pretrained(merged, local_files_only=True)
    wins = token_windows(tokenizer, texts, window_tokens, windows)
    if not wins:
        return {}
    reference, tokens = hf_perplexity(merged, wins)
    ppl, _ = gguf_perplexity(shipped, wins)
    figures = {"quantization": qtype, "merged_perplexity": round(reference, 4), "gguf_perplexity": round(ppl, 4),
               "quantization_loss_pct": quantization_loss_pct(reference, ppl), "quantization_scored_tokens": tokens,
               "quantization_loss_by_type": {qtype: quantization_loss_pct(reference, ppl)}}
    log(f"quantization: {qtype} perplexity {ppl:.4f} vs merged {reference:.4f} on {tokens} held-out tokens "
        f"({figures['quantization_loss_pct']:+.3f} %)")
    for other in extra:
        if other == qtype:
            continue
        path = work / f"model-{other}.gguf"
        if other != "F32":
            quantize(f32, path, other)
        p, _ = gguf_perplexity(path if other != "F32" else f32, wins)
        figures["quantization_loss_by_type"][other] = quantization_loss_pct(reference, p)
        log(f"quantization: {other} perplexity {p:.4f} ({figures['quantization_loss_by_type'][other]:+.3f} %), not shipped")
        if other != "F32":
            path.unlink(missing_ok=True)
    return figures
