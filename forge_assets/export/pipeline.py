"""The gguf stage as plain code: what llama.cpp serves for one language, proven to load and scored.

Two shapes (``deploy.merge``):

- **base + LoRA** (the default): the base model converted and quantized once per base version into
  ``<artifact_root>/base_gguf/<key>/base-<qtype>.gguf`` (shared by every language, written atomically under a lock),
  and the language's adapter as a llama.cpp LoRA GGUF (``adapter-F16.gguf``) in the artifact. The server holds the
  base once and applies each language's adapter per request.
- **merged**: the adapter merged into the base, converted and quantized (``model-<qtype>.gguf``), as Ollama needs
  for Qwen. Also the fallback for an adapter llama.cpp cannot apply unmerged (DoRA, modules_to_save).

**The quantization gate's reference** is what training produced, in llama.cpp: the *unquantized* base GGUF (the
checkpoint's own dtype: a BF16 checkpoint is copied bit for bit) with the F16 LoRA GGUF applied unmerged, which
llama.cpp computes in F32 beside the base matmul. It is *not* a merged GGUF: folding W + s·BA into a BF16 (or F16)
file rounds every weight of the sum again, a noise of the same order as Q8_0's, so on a real bf16 model (SmolLM2-135M)
the merged BF16 file scored *worse* than the served Q8_0 base + LoRA and the gate read -1.79 % where transformers +
PEFT on the same tokens gave +0.47 %. The reference above agrees with transformers + PEFT (tested on that model in
`test_real_model_chain.py`). For a PEFT adapter that has no LoRA GGUF (DoRA, modules_to_save) the reference is
transformers + PEFT itself, on the same bounded windows; for such an mlx adapter, the merged GGUF written in F16.

Disk: one unquantized copy of the model (about the checkpoint's size) at a time in `work`, removed when its stage
ends; the shipped file is written into the artifact (or the shared base folder) directly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from forge_assets.export.gguf_export import ExportError, gguf_summary, quantize, smoke_generate
from forge_assets.export.hf_to_gguf import convert_hf_to_gguf
from forge_assets.files import locked
from forge_assets.private import private_umask

KEEP = ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "config.json")  # what serving needs besides the GGUF
LORA_FILE = "adapter-F16.gguf"


def _finish(src: Path, dst: Path, qtype: str, outtype: str, keep_src: bool) -> None:
    """dst in qtype from the unquantized src: renamed (or copied when src is still needed) if it already is that
    type, else quantized by llama.cpp."""
    if qtype == outtype:
        (shutil.copyfile if keep_src else os.replace)(src, dst)
    else:
        quantize(src, dst, qtype)


def base_gguf(base: Path, folder: Path, qtype: str, work: Path, phase: Callable[[str], None], log: Callable[[str], None],
              intermediate: str = "auto", keep: Path | None = None) -> Path:
    """The base model as a quantized GGUF in `folder` (made once; later calls and other languages reuse it).
    Streamed from the safetensors shards into an F16/BF16 intermediate in `work`, quantized, the intermediate removed
    (or, with `keep`, moved there when this call made it: the scoring reference need not be converted twice)."""
    target = folder / f"base-{qtype}.gguf"
    if target.is_file():
        return target
    private_umask()  # the folder, the lock, the GGUF and what llama.cpp writes: the owner's alone
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):
        if target.is_file():  # another language's export made it meanwhile
            return target
        phase("convert_base")
        inter = work / "base-intermediate.gguf"
        conversion = convert_hf_to_gguf(base, inter, intermediate, name="base")
        # llama.cpp's quantizer writes the file itself (not through files.atomic_write): a temp name, then one rename
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        try:
            phase("quantize_base")
            _finish(inter, tmp, qtype, conversion["outtype"], keep_src=keep is not None)
            os.replace(tmp, target)
            if keep is not None and inter.is_file():
                os.replace(inter, keep)
        finally:
            inter.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
        log(f"base GGUF {target} ({target.stat().st_size / 1e6:.1f} MB, from a {conversion['outtype']} intermediate)")
    return target


def merged_gguf(base: Path, adapter: Path, out: Path, work: Path, name: str, intermediate: str, log: Callable[[str], None]) -> dict:
    """The adapter folded into the base, written as one unquantized GGUF, streamed tensor by tensor. An adapter that
    does not fold in as W + s·BA (DoRA, modules_to_save) is merged by its training backend into a model folder in
    `work` first (in the base's dtype), converted, and that folder removed."""
    from forge_assets.training.adapter import merge_adapter

    try:
        return convert_hf_to_gguf(base, out, intermediate, name=name, adapter=adapter)
    except ExportError as exc:
        if "cannot be served as an unmerged" not in str(exc):
            raise
        log(f"merging {adapter.name} with its training backend first: {exc}")
    folder = work / "merged"
    try:
        merge_adapter(base, adapter, folder)
        return convert_hf_to_gguf(folder, out, intermediate, name=name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def export_gguf(base: Path, adapter: Path, out: Path, work: Path, qtype: str, name: str,
                phase: Callable[[str], None] = lambda _: None, held_out: list[str] | None = None,
                extra_quantizations: list[str] = (), windows: int = 24, window_tokens: int = 512,
                log: Callable[[str], None] = print, merge: bool = True, base_folder: Path | None = None,
                intermediate: str = "auto") -> dict:
    """Write what llama.cpp serves for one language into out; return figures for metadata.

    merge=False (needs base_folder): the base GGUF (shared) + `adapter-F16.gguf`; an adapter llama.cpp cannot
    apply unmerged falls back to the merged file, and the figures say why. merge=True: `model-<qtype>.gguf`.
    With `held_out` texts the shipped combination is scored through llama.cpp against the reference (the unquantized
    base GGUF + the F16 LoRA GGUF; transformers + PEFT for an adapter without a LoRA GGUF; see the module docstring)
    on the same token windows; so is each of `extra_quantizations` (the base quantized to that type in `work`, with
    the same LoRA; not shipped). Nothing holds the whole model in memory: conversion streams from the shards,
    llama.cpp quantizes and scores from mmapped files; every intermediate is removed when done.
    `phase` is told each step's name before it starts, so a crash can be attributed to it.
    """
    from forge_assets.export.lora_gguf import convert_lora_to_gguf, unmerged_support
    from forge_assets.training.adapter import adapter_backend

    private_umask()  # every file below, and every llama.cpp process started for them, writes 0600
    no_lora = unmerged_support(adapter)  # None: the adapter has a llama.cpp LoRA GGUF
    why_merged = None
    if not merge:
        why_merged = no_lora if base_folder is not None else "no base GGUF folder was given"
        if why_merged:
            log(f"serving {name} merged: {why_merged}")
    unmerged = not merge and why_merged is None
    for keep in KEEP:
        if (base / keep).is_file():
            shutil.copyfile(base / keep, out / keep)
    figures: dict = {"served_as": "base+lora" if unmerged else "merged"}
    if why_merged:
        figures["merged_because"] = why_merged
    merged_inter = work / "merged-intermediate.gguf"
    ref_base = work / "reference-base.gguf"  # the unquantized base, scored with the LoRA GGUF
    ref_lora = out / LORA_FILE if unmerged else work / "reference-lora.gguf"
    conversion: dict = {}
    try:
        if unmerged:
            base_file = base_gguf(base, base_folder, qtype, work, phase, log, intermediate, keep=ref_base if held_out else None)
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
            phase("convert")
            conversion = merged_gguf(base, adapter, merged_inter, work, name, intermediate, log)
            target, lora_path = out / f"model-{qtype}.gguf", None
            phase("quantize")
            _finish(merged_inter, target, qtype, conversion["outtype"], keep_src=False)
            merged_inter.unlink(missing_ok=True)  # one unquantized copy on scratch disk at a time
        phase("smoke_generate")
        smoke = smoke_generate(target, "def ", max_tokens=12, lora=lora_path)
        summary = gguf_summary(target)
        scored = {}
        if held_out:
            if no_lora is None:
                if not ref_lora.is_file():
                    phase("convert_lora")
                    convert_lora_to_gguf(adapter, base, ref_lora, "F16")
                if not ref_base.is_file():
                    phase("convert_reference")
                    ref_conv = convert_hf_to_gguf(base, ref_base, intermediate, name="reference")
                    conversion = conversion or ref_conv
                conversion = conversion or {"outtype": gguf_file_type(ref_base)}
                reference: tuple = ("gguf", ref_base, ref_lora)
            elif adapter_backend(adapter) == "peft":
                reference = ("peft", base, adapter)
            else:  # an mlx adapter without a LoRA GGUF (DoRA): transformers cannot apply it; the merged F16 GGUF is the reference
                if not merged_inter.is_file():
                    phase("convert_reference")
                    conversion = conversion or merged_gguf(base, adapter, merged_inter, work, name, intermediate, log)
                reference = ("gguf", merged_inter, None)
            scored = score_quantizations(base, target, qtype, reference, work, held_out, list(extra_quantizations),
                                         windows, window_tokens, phase, log, lora=lora_path)
    finally:
        for scratch in (merged_inter, ref_base, work / "reference-lora.gguf"):
            scratch.unlink(missing_ok=True)
    return {**figures, **scored, "file": target.name, "bytes": summary["bytes"],
            "tensors": conversion.get("tensors", summary["tensors"]), "vocab_size": conversion.get("vocab_size", summary["vocab_size"]),
            "architecture": summary["architecture"], "tokenizer_pre": summary["tokenizer_pre"],
            "intermediate": conversion.get("outtype"), "smoke_completion": smoke["completion"],
            "smoke_completion_tokens": smoke["completion_tokens"], "tensor_types": summary["tensor_types"]}


def score_quantizations(base: Path, shipped: Path, qtype: str, reference: tuple, work: Path, texts: list[str], extra: list[str],
                        windows: int, window_tokens: int, phase: Callable[[str], None], log: Callable[[str], None],
                        lora: Path | None = None) -> dict:
    """Perplexity of the reference and of each quantized GGUF on the same held-out token windows; the loss in percent
    per type.

    `reference` is ``("gguf", unquantized base GGUF, LoRA GGUF)``, scored by llama.cpp like the served files, or
    ``("peft", base folder, PEFT adapter folder)``, scored by transformers in F32 (an adapter without a LoRA GGUF).
    `shipped` (+ `lora` when served unmerged) is what the server runs; each extra type is the reference's base
    quantized to that type with the same LoRA GGUF (only with a GGUF reference). Token ids come from the base's
    Hugging Face tokenizer (the GGUF's tokenizer is tested to agree with it).
    """
    from transformers import AutoTokenizer

    from forge_assets.export.gguf_eval import gguf_perplexity, hf_perplexity, quantization_loss_pct, token_windows

    phase("score_gguf")
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    wins = token_windows(tokenizer, texts, window_tokens, windows)
    if not wins:
        return {}
    kind, ref_model, ref_adapter = reference
    if kind == "gguf":
        ref, tokens = gguf_perplexity(ref_model, wins, lora=ref_adapter)
        described = (f"unquantized base GGUF ({gguf_file_type(ref_model)}) + F16 LoRA GGUF" if ref_adapter
                     else f"unquantized merged GGUF ({gguf_file_type(ref_model)})")
    else:
        ref, tokens = hf_perplexity(ref_model, wins, adapter=ref_adapter)
        described = "transformers + PEFT (F32)"
    ppl, _ = gguf_perplexity(shipped, wins, lora=lora)
    served = f"{qtype} base + F16 LoRA" if lora else f"{qtype} merged"
    figures = {"quantization": qtype, "reference": described, "reference_perplexity": round(ref, 4), "gguf_perplexity": round(ppl, 4),
               "quantization_loss_pct": quantization_loss_pct(ref, ppl), "quantization_scored_tokens": tokens,
               "quantization_loss_by_type": {served: quantization_loss_pct(ref, ppl)}}
    log(f"quantization: {served} perplexity {ppl:.4f} vs {described} {ref:.4f} on {tokens} held-out tokens "
        f"({figures['quantization_loss_pct']:+.3f} %)")
    if extra and (kind != "gguf" or ref_adapter is None):
        log(f"quantization: extra types {extra} are not scored: this adapter has no LoRA GGUF to apply to a quantized base")
        extra = []
    for other in extra:
        if other == qtype and lora:
            continue
        path = work / f"base-{other}.gguf"
        try:
            quantize(ref_model, path, other)
            p, _ = gguf_perplexity(path, wins, lora=ref_adapter)
        finally:
            path.unlink(missing_ok=True)
        figures["quantization_loss_by_type"][f"{other} base + F16 LoRA"] = quantization_loss_pct(ref, p)
        log(f"quantization: {other} base + F16 LoRA perplexity {p:.4f} ({quantization_loss_pct(ref, p):+.3f} %), not shipped")
    return figures


def gguf_file_type(path: Path) -> str:
    """The dominant weight type of a GGUF file (F16, BF16, F32, Q8_0, ...)."""
    types = gguf_summary(path)["tensor_types"]
    return max(types, key=types.get) if types else "?"
