"""GGUF files: conversion (hf_to_gguf, streamed), llama.cpp's quantizer, load-and-generate smoke test, summary."""

from __future__ import annotations

import ctypes
from pathlib import Path

QUANT_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


class ExportError(RuntimeError):
    """A model cannot be exported; the message names the model, the problem and the fix."""


def convert_to_gguf(model_dir: Path, out: Path, outtype: str = "auto", name: str = "forge", adapter: Path | None = None) -> dict:
    """A Hugging Face model folder (Qwen2, Qwen3, Llama, Mistral; sharded or not) as one GGUF file, streamed: see
    `forge_assets.export.hf_to_gguf`. outtype "auto" is BF16 for a bfloat16 checkpoint and F16 otherwise."""
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf

    return convert_hf_to_gguf(model_dir, out, outtype, name=name, adapter=adapter)


def k_quant_problem(src: Path, qtype: str) -> str | None:
    """Why llama.cpp cannot quantize every weight matrix of src to qtype as asked (rows of 256 for K-quants, of 32
    for Q8_0), naming the tensors; None when it can. llama.cpp itself would silently fall back to other types."""
    import gguf

    block = 256 if qtype.endswith(("_K", "_K_M", "_K_S")) else 32 if qtype == "Q8_0" else 0
    if not block:
        return None
    bad = [(t.name, int(t.shape[0])) for t in gguf.GGUFReader(str(src)).tensors
           if len(t.shape) == 2 and t.name.endswith(".weight") and int(t.shape[0]) % block]
    if not bad:
        return None
    widths = sorted({w for _, w in bad})
    return (f"{qtype} needs weight rows that are multiples of {block} values, and {len(bad)} weight matrices of "
            f"{src.name} have rows of {', '.join(map(str, widths[:4]))} (e.g. `{bad[0][0]}`): the model's hidden or "
            f"intermediate size is not a multiple of {block}. Fix: set deploy.quantization to "
            f"{'Q8_0 or F16' if block == 256 else 'F16'}, which this shape takes.")


def quantize(src: Path, dst: Path, qtype: str = "Q8_0", threads: int = 0) -> None:
    """Quantize a F32/F16 GGUF with llama.cpp's own quantizer (K-quants need 256-multiple rows)."""
    import llama_cpp

    if qtype not in QUANT_TYPES:
        raise ExportError(f"unknown quantization `{qtype}`; choose one of {', '.join(QUANT_TYPES)}.")
    problem = k_quant_problem(src, qtype) if src.is_file() else None
    if problem:
        raise ExportError(f"cannot quantize {src} to {qtype}: {problem}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ExportError(f"llama.cpp could not quantize {src} to {qtype} (return code {rc}). Fix: quantize from an F32/F16 file; see llama.cpp's log above.")


def load_llama(path: Path, n_ctx: int = 512, logits_all: bool = False, lora: Path | None = None):
    """A llama.cpp model for a GGUF file (CPU, quiet), with a LoRA GGUF applied when given."""
    from forge_assets.export.lora_gguf import open_llama

    return open_llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, verbose=False, logits_all=logits_all, seed=0,
                      lora_path=str(lora) if lora else None)


def smoke_generate(path: Path, prompt: str, max_tokens: int = 16, lora: Path | None = None) -> dict:
    """Load a GGUF (and its LoRA) with llama.cpp and generate greedily; proves the files are usable."""
    llm = load_llama(path, lora=lora)
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
    text = out["choices"][0]["text"]
    return {"prompt": prompt, "completion": text, "completion_tokens": out["usage"]["completion_tokens"]}


def gguf_summary(path: Path) -> dict:
    """What a GGUF file says about itself: architecture, tensor types, tokenizer keys."""
    import gguf

    r = gguf.GGUFReader(str(path))
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1

    def _str(key: str) -> str | None:
        f = r.fields.get(key)
        return None if f is None else bytes(f.parts[f.data[0]]).decode()

    tokens = r.fields.get("tokenizer.ggml.tokens")
    return {"architecture": _str("general.architecture"), "tokenizer_pre": _str("tokenizer.ggml.pre"),
            "tensors": len(r.tensors), "vocab_size": len(tokens.data) if tokens is not None else None,
            "tensor_types": types, "bytes": path.stat().st_size, "has_chat_template": "tokenizer.chat_template" in r.fields}
