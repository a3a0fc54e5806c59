"""The gguf stage as plain code: what llama.cpp serves for one language, proven to load and scored.

Two shapes (``deploy.merge``):

- **base + LoRA** (the default): the base model converted and quantized once per base version into
  ``<artifact_root>/base_gguf/<key>/base-<qtype>.gguf`` (shared by every language, written atomically under a lock),
  and the language's adapter as a llama.cpp LoRA GGUF (``adapter-F16.gguf``) in the artifact. The server holds the
  base once and applies each language's adapter per request.
- **merged**: the adapter merged into the base, converted and quantized (``model-<qtype>.gguf``), as Ollama needs
  for Qwen. Also the fallback for an adapter llama.cpp cannot apply unmerged (DoRA, modules_to_save).

Either way the shipped combination is scored through llama.cpp against the merged Hugging Face model on the same
held-out tokens (the quantization gate's figure).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from forge_assets.export.gguf_export import convert_to_gguf, gguf_summary, quantize, smoke_generate
from forge_assets.training.adapter import merge_adapter

KEEP = ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "config.json")  # what serving needs besides the GGUF
LORA_FILE = "adapter-F16.gguf"


def base_gguf(base: Path, folder: Path, qtype: str, work: Path, phase: Callable[[str], None], log: Callable[[str], None]) -> Path:
    """The base model as a quantized GGUF in `folder` (made once; later calls and other languages reuse it)."""
    target = folder / f"base-{qtype}.gguf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # another language's export made it meanwhile
            return target
        phase("convert_base")
        f32 = work / "base-F32.gguf"
        convert_to_gguf(base, f32, "F32", name="base")
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        phase("quantize_base")
        if qtype == "F32":
            shutil.copyfile(f32, tmp)
        else:
            quantize(f32, tmp, qtype)
        os.replace(tmp, target)
        f32.unlink(missing_ok=True)
        log(f"base GGUF {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def export_gguf(base: Path, adapter: Path, out: Path, work: Path, qtype: str, name: str,
                phase: Callable[[str], None] = lambda _: None, held_out: list[str] | None = None,
                extra_quantizations: list[str] = (), windows: int = 24, window_tokens: int = 512,
                log: Callable[[str], None] = print, merge: bool = True, base_folder: Path | None = None) -> dict:
    """Write what llama.cpp serves for one language into out; return figures for metadata.

    merge=False (needs base_folder): the base GGUF (shared) + `adapter-F16.gguf`; an adapter llama.cpp cannot
    apply unmerged falls back to the merged file, and the figures say why. merge=True: `model-<qtype>.gguf`.
    With `held_out` texts the shipped combination is scored through llama.cpp against the merged Hugging Face model on
    the same token windows; so is each of `extra_quantizations` (merged files quantized in `work`, not shipped).
    `phase` is told each step's name before it starts, so a crash can be attributed to it.
    """
    from forge_assets.export.lora_gguf import convert_lora_to_gguf, unmerged_support

    why_merged = None
    if not merge:
        why_merged = unmerged_support(adapter) if base_folder is not None else "no base GGUF folder was given"
        if why_merged:
            log(f"serving {name} merged: {why_merged}")
    unmerged = not merge and why_merged is None
    phase("merge")
    merge_adapter(base, adapter, work / "merged")  # the reference the shipped file is scored against, and the merged export
    for keep in KEEP:
        if (work / "merged" / keep).is_file():
            shutil.copyfile(work / "merged" / keep, out / keep)
    figures: dict = {"served_as": "base+lora" if unmerged else "merged"}
    if why_merged:
        figures["merged_because"] = why_merged
    phase("convert")
    f32 = work / "model-F32.gguf"
    conversion = convert_to_gguf(work / "merged", f32, "F32", name=name)
    if unmerged:
        base_file = base_gguf(base, base_folder, qtype, work, phase, log)
        phase("convert_lora")
        lora = convert_lora_to_gguf(adapter, base, out / LORA_FILE, "F16")
        target, lora_path = base_file, out / LORA_FILE
        # The base file lives outside the artifact (shared by every language); naming it here makes the artifact's
        # content, and so its version, differ with the base version and quantization it is served on.
        (out / "served.json").write_text(json.dumps({"base_gguf": str(base_file), "base_folder": base_folder.name,
                                                     "quantization": qtype, "base_bytes": base_file.stat().st_size,
                                                     "lora": LORA_FILE}, indent=2, sort_keys=True))
        figures.update({"base_gguf": str(base_file), "lora_file": LORA_FILE, "lora_bytes": (out / LORA_FILE).stat().st_size,
                        "base_bytes": base_file.stat().st_size, "lora_rank": lora.get("rank"), "lora_tensors": lora.get("tensors")})
    else:
        target, lora_path = out / f"model-{qtype}.gguf", None
        phase("quantize")
        if qtype == "F32":
            shutil.copyfile(f32, target)
        else:
            quantize(f32, target, qtype)
    phase("smoke_generate")
    smoke = smoke_generate(target, "def ", max_tokens=12, lora=lora_path)
    summary = gguf_summary(target)
    scored = {}
    if held_out:
        scored = score_quantizations(work / "merged", target, qtype, f32, work, held_out, list(extra_quantizations),
                                     windows, window_tokens, phase, log, lora=lora_path)
    return {**figures, **scored, "file": target.name, "bytes": summary["bytes"], "tensors": conversion["tensors"],
            "vocab_size": conversion["vocab_size"], "tokenizer_pre": summary["tokenizer_pre"], "smoke_completion": smoke["completion"],
            "smoke_completion_tokens": smoke["completion_tokens"], "tensor_types": summary["tensor_types"]}


def score_quantizations(merged: Path, shipped: Path, qtype: str, f32: Path, work: Path, texts: list[str], extra: list[str],
                        windows: int, window_tokens: int, phase: Callable[[str], None], log: Callable[[str], None],
                        lora: Path | None = None) -> dict:
    """Perplexity of the merged model and of each GGUF on the same held-out token windows; the loss in percent per type.

    `shipped` (+ `lora` when served unmerged) is what the server runs; extra types are merged files for comparison.
    """
    from transformers import AutoTokenizer

    from forge_assets.export.gguf_eval import gguf_perplexity, hf_perplexity, quantization_loss_pct, token_windows

    phase("score_gguf")
    tokenizer = AutoTokenizer.from_pretrained(merged, local_files_only=True)
    wins = token_windows(tokenizer, texts, window_tokens, windows)
    if not wins:
        return {}
    reference, tokens = hf_perplexity(merged, wins)
    ppl, _ = gguf_perplexity(shipped, wins, lora=lora)
    served = f"{qtype} base + F16 LoRA" if lora else qtype
    figures = {"quantization": qtype, "merged_perplexity": round(reference, 4), "gguf_perplexity": round(ppl, 4),
               "quantization_loss_pct": quantization_loss_pct(reference, ppl), "quantization_scored_tokens": tokens,
               "quantization_loss_by_type": {served: quantization_loss_pct(reference, ppl)}}
    log(f"quantization: {served} perplexity {ppl:.4f} vs merged {reference:.4f} on {tokens} held-out tokens "
        f"({figures['quantization_loss_pct']:+.3f} %)")
    for other in extra:
        if other == qtype and not lora:
            continue
        path = work / f"model-{other}.gguf"
        if other != "F32":
            quantize(f32, path, other)
        p, _ = gguf_perplexity(path if other != "F32" else f32, wins)
        figures["quantization_loss_by_type"][f"{other} merged"] = quantization_loss_pct(reference, p)
        log(f"quantization: {other} merged perplexity {p:.4f} ({quantization_loss_pct(reference, p):+.3f} %), not shipped")
        if other != "F32":
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        f32.unlink()
    return figures
