"""GGUF export for Qwen2-architecture models, written with gguf-py and quantized by llama.cpp."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np

QUANT_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


class ExportError(RuntimeError):
    """A model cannot be exported; the message names the model, the problem and the fix."""


def _tokenizer_vocab(model_dir: Path) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order, their GGUF token types, and BPE merges, from tokenizer.json."""
    import gguf

    tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if tj["model"]["type"] != "BPE":
        raise ExportError(f"{model_dir}/tokenizer.json: a {tj['model']['type']} tokenizer; Forge exports byte-level BPE (Qwen2) tokenizers only.")
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for tok, i in vocab.items():
        tokens[i] = tok
        if tok in added:
            types[i] = gguf.TokenType.CONTROL if added[tok].get("special") else gguf.TokenType.USER_DEFINED
        else:
            types[i] = gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    return tokens, [int(t) for t in types], merges


def _load_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no *.safetensors files. Fix: save the model with safe_serialization=True.")
    for f in files:
        with safe_open(f, framework="pt") as fh:
            for name in fh.keys():
                tensors[name] = fh.get_tensor(name).float().numpy()
    return tensors


def convert_to_gguf(model_dir: Path, out: Path, outtype: str = "F32", name: str = "forge") -> dict:
    """Write a Qwen2 Hugging Face model folder as a GGUF file (F32 or F16), tokenizer and chat template included."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text())
    arch = config.get("model_type")
    if arch != "qwen2":
        raise ExportError(f"{model_dir}/config.json: model_type `{arch}`; Forge's GGUF export handles `qwen2` (Qwen2, Qwen2.5, Qwen2.5-Coder, forge-tiny). Fix: choose a Qwen2-family base model.")
    n_layers = config["num_hidden_layers"]
    tokens, types, merges = _tokenizer_vocab(model_dir)
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    w = gguf.GGUFWriter(str(out), "qwen2")
    w.add_name(name)
    w.add_context_length(config.get("max_position_embeddings", 32768))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    w.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "F32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")  # forge-tiny and Qwen tokenizers split text with Qwen2's regex
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        special.merges = merges
    special.add_to_gguf(w)
    w.add_add_bos_token(False)
    if "<|im_end|>" in tokens:
        w.add_eot_token_id(tokens.index("<|im_end|>"))
    if not special.chat_template and tok_cfg.get("chat_template"):
        w.add_chat_template(tok_cfg["chat_template"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    tied = config.get("tie_word_embeddings", False)
    count = 0
    for hf_name, data in sorted(_load_tensors(model_dir).items()):
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd for the output when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ExportError(f"{model_dir}: tensor `{hf_name}` has no GGUF name for qwen2. Fix: this is not a plain Qwen2 checkpoint; merge adapters first.")
        if outtype == "F16" and data.ndim == 2:
            data = data.astype(np.float16)
        else:
            data = data.astype(np.float32)  # norms and biases stay F32
        w.add_tensor(new, data)
        count += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"tensors": count, "vocab_size": len(tokens), "merges": len(special.merges), "outtype": outtype}


def quantize(src: Path, dst: Path, qtype: str = "Q8_0", threads: int = 0) -> None:
    """Quantize a F32/F16 GGUF with llama.cpp's own quantizer (K-quants need 256-multiple rows)."""
    import llama_cpp

    if qtype not in QUANT_TYPES:
        raise ExportError(f"unknown quantization `{qtype}`; choose one of {', '.join(QUANT_TYPES)}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ExportError(f"llama.cpp could not quantize {src} to {qtype} (return code {rc}). Fix: quantize from an F32/F16 file; see llama.cpp's log above.")


def load_llama(path: Path, n_ctx: int = 512, logits_all: bool = False, lora: Path | None = None):
    """A llama.cpp model for a GGUF file (CPU, quiet), with a LoRA GGUF applied when given."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, verbose=False, logits_all=logits_all, seed=0,
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

    return {"architecture": _str("general.architecture"), "tokenizer_pre": _str("tokenizer.ggml.pre"),
            "tensor_types": types, "bytes": path.stat().st_size, "has_chat_template": "tokenizer.chat_template" in r.fields}
