"""Forge's streamed Hugging Face → GGUF converter on random-initialised Qwen2, Qwen3, Llama and Mistral models saved
to disk (built offline with `from_config`, real tokenizer files), loaded by the real llama.cpp.

Parity: llama.cpp's next-token logits on the unquantized GGUF against transformers' in F32 on the same token ids,
llama.cpp's KV cache in F32 (its default F16 cache would measure the cache's rounding). Measured max |logit diff| on
these models, logits of magnitude ~3: F32 GGUF 1.4e-6 to 2.3e-6 (every architecture, sharded, tied, rope-scaled,
LoRA folded in); F16 GGUF 2.4e-3 to 4.4e-3. Tolerances: F32_TOL 1e-4, F16_TOL 2e-2.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from forge_assets.export.gguf_export import ExportError, gguf_summary, quantize, smoke_generate
from forge_assets.export.hf_to_gguf import convert_hf_to_gguf, read_index
from forge_assets.export.random_models import build_random_model, build_tokenizer

F32_TOL = 1e-4
F16_TOL = 2e-2
TEXT = ("def handle_get(request, store):\n    key = request['key']  # ключ, 鍵 ✓\n    if key not in store:\n"
        "        return {'error': 404}\n    return store[key]\n\n\nclass Router:\n    pass\n")


def llama(path: Path, lora: Path | None = None):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=256, n_threads=2,
                           verbose=False, logits_all=True, seed=0, type_k=0, type_v=0)


def hf_logits(model_dir: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_ids(model_dir: Path, text: str = TEXT) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(model_dir, local_files_only=True)(text)["input_ids"])


def parity(model_dir: Path, gguf: Path, adapter: Path | None = None) -> float:
    """max |llama.cpp logits - transformers logits| over every position of TEXT; also asserts that llama.cpp
    tokenizes TEXT to the very ids transformers does."""
    ids = hf_ids(model_dir)
    llm = llama(gguf)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        bos = tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id]
        assert llm.tokenize(TEXT.encode(), add_bos=bos, special=False) == ids, "llama.cpp tokenizes differently"
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    return float(np.abs(got - hf_logits(model_dir, ids, adapter)).max())


@pytest.fixture(scope="module")
def models(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    """One random model per architecture (forge-tiny's tokenizer for the three the chain uses; Mistral with a
    SentencePiece-style tokenizer, as Mistral ships it), sharded into several files with an index. Qwen3 with
    head_dim 128 against hidden/heads = 64, as Qwen3-0.6B has (128 against 64)."""
    root = tmp_path_factory.mktemp("arch")
    out = {}
    for kind, tok in (("qwen2", "forge-tiny"), ("qwen3", "forge-tiny"), ("llama", "forge-tiny"), ("mistral", "spm")):
        out[kind] = build_random_model(kind, root / kind, tokenizer=tok, tokenizer_source=tiny_model, max_shard_size="300KB",
                                       head_dim=128 if kind == "qwen3" else None, seed=3)
    return out


# ------------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama", "mistral"])
def test_unquantized_gguf_computes_what_transformers_computes(models, kind, tmp_path):
    model = models[kind]
    assert len(list(model.glob("*.safetensors"))) > 1 and (model / "model.safetensors.index.json").is_file()
    f32 = tmp_path / "f32.gguf"
    info = convert_hf_to_gguf(model, f32, "F32")
    assert info["architecture"] == {"mistral": "llama"}.get(kind, kind)
    assert parity(model, f32) < F32_TOL
    f16 = tmp_path / "f16.gguf"
    assert convert_hf_to_gguf(model, f16, "auto")["outtype"] == "F16"  # an fp32 checkpoint: F16 intermediate
    assert parity(model, f16) < F16_TOL
    summary = gguf_summary(f16)
    assert summary["tensor_types"]["F16"] > 0 and summary["has_chat_template"]


def test_sharded_checkpoint_converts_to_the_same_file_as_one_shard(tiny_model: Path, tmp_path: Path):
    one = build_random_model("qwen2", tmp_path / "one", tokenizer_source=tiny_model, seed=5)
    many = build_random_model("qwen2", tmp_path / "many", tokenizer_source=tiny_model, seed=5, max_shard_size="100KB")
    shards = sorted(many.glob("*.safetensors"))
    assert len(shards) >= 4 and len(list(one.glob("*.safetensors"))) == 1
    assert set(read_index(one)) == set(read_index(many))
    a, b = tmp_path / "one.gguf", tmp_path / "many.gguf"
    convert_hf_to_gguf(one, a, "F16")
    convert_hf_to_gguf(many, b, "F16")
    assert a.read_bytes() == b.read_bytes()
    shards[1].unlink()
    with pytest.raises(ExportError, match=f"names shard\\(s\\) {shards[1].name}.*copy every shard"):
        convert_hf_to_gguf(many, tmp_path / "x.gguf")


def test_tied_embeddings_and_attention_biases(tiny_model: Path, tmp_path: Path):
    import gguf

    model = build_random_model("qwen2", tmp_path / "tied", tokenizer_source=tiny_model, tie_word_embeddings=True, seed=7)
    out = tmp_path / "tied.gguf"
    convert_hf_to_gguf(model, out, "F32")
    names = {t.name for t in gguf.GGUFReader(str(out)).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names and "blk.0.attn_q.bias" in names
    assert parity(model, out) < F32_TOL


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 64}])
def test_rope_scaling_is_carried(tiny_model: Path, tmp_path: Path, scaling: dict):
    import gguf

    model = build_random_model("llama", tmp_path / "m", tokenizer_source=tiny_model, rope_scaling=scaling, rope_theta=500000.0,
                               seed=9)
    out = tmp_path / "m.gguf"
    convert_hf_to_gguf(model, out, "F32")
    r = gguf.GGUFReader(str(out))
    if scaling["rope_type"] == "linear":
        assert float(r.fields["llama.rope.scaling.factor"].parts[-1][0]) == 4.0
    else:
        assert "rope_freqs.weight" in {t.name for t in r.tensors}
    assert float(r.fields["llama.rope.freq_base"].parts[-1][0]) == 500000.0
    assert parity(model, out) < F32_TOL
    # Without the scaling the same weights give other logits: the parity above is not blind to it.
    cfg = json.loads((model / "config.json").read_text())
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(cfg.get(key), dict):
            cfg[key] = {"rope_type": "default", "rope_theta": 500000.0} if key == "rope_parameters" else None
    (model / "config.json").write_text(json.dumps(cfg))
    assert parity(model, out) > 100 * F32_TOL


def test_yarn_keys(tiny_model: Path, tmp_path: Path):
    import gguf

    model = build_random_model("qwen2", tmp_path / "m", tokenizer_source=tiny_model, seed=2,
                               rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512})
    out = tmp_path / "m.gguf"
    convert_hf_to_gguf(model, out, "F16")
    f = gguf.GGUFReader(str(out)).fields
    assert bytes(f["qwen2.rope.scaling.type"].parts[-1]).decode() == "yarn"
    assert float(f["qwen2.rope.scaling.factor"].parts[-1][0]) == 4.0
    assert int(f["qwen2.rope.scaling.original_context_length"].parts[-1][0]) == 512


@pytest.mark.slow
def test_lora_is_folded_in_while_streaming(models, tmp_path: Path):
    """convert(base, adapter=...) == the PEFT-merged model, for Qwen2 (biases) and Llama (q/k rows permuted)."""
    from forge_assets_tests.test_export.test_lora_gguf import make_peft_adapter

    for kind in ("qwen2", "llama"):
        adapter = make_peft_adapter(models[kind], tmp_path / f"{kind}-lora", seed=11)
        out = tmp_path / f"{kind}-merged.gguf"
        info = convert_hf_to_gguf(models[kind], out, "F32", adapter=adapter)
        assert info["lora_merged_tensors"] == 7 * 2  # q k v o gate up down in both blocks
        diff = parity(models[kind], out, adapter=adapter)
        assert diff < F32_TOL, (kind, diff)
        assert parity(models[kind], out) > 100 * F32_TOL  # the adapter really moved the logits


# ------------------------------------------------------------------------------------------------ dtypes, memory

def test_bfloat16_checkpoint_is_copied_bit_for_bit(tiny_model: Path, tmp_path: Path):
    import gguf
    from safetensors import safe_open

    model = build_random_model("qwen3", tmp_path / "bf16", tokenizer_source=tiny_model, dtype="bfloat16", seed=4)
    out = tmp_path / "bf16.gguf"
    info = convert_hf_to_gguf(model, out, "auto")
    assert info["outtype"] == "BF16" and info["tensor_types"]["BF16"] > 0
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    with safe_open(next(model.glob("*.safetensors")), framework="pt") as fh:
        src = fh.get_tensor("model.layers.0.mlp.down_proj.weight")
    import torch

    assert np.array_equal(tensors["blk.0.ffn_down.weight"].data.view(np.uint16).reshape(-1),
                          src.view(torch.int16).numpy().view(np.uint16).reshape(-1))
    assert smoke_generate(out, "def ", max_tokens=4)["completion_tokens"] > 0


def test_an_adapter_folded_into_a_bf16_checkpoint_is_written_f16(tiny_model: Path, tmp_path: Path):
    """W + s·BA re-rounded to BF16 loses most of a small adapter's delta (SmolLM2-135M: +0.68 % perplexity against
    transformers + PEFT, F16 +0.006 %), so `auto` writes F16 whenever it folds an adapter in; a weight beyond F16's
    range is refused with the fix rather than written as infinity."""
    import torch
    from safetensors.torch import load_file, save_file

    from forge_assets_tests.test_export.test_lora_gguf import make_peft_adapter

    model = build_random_model("llama", tmp_path / "bf16", tokenizer_source=tiny_model, dtype="bfloat16", seed=5)
    adapter = make_peft_adapter(model, tmp_path / "lora", seed=12)
    assert convert_hf_to_gguf(model, tmp_path / "base.gguf", "auto")["outtype"] == "BF16"
    folded = convert_hf_to_gguf(model, tmp_path / "merged.gguf", "auto", adapter=adapter)
    assert folded["outtype"] == "F16" and folded["tensor_types"]["F16"] > 0
    assert convert_hf_to_gguf(model, tmp_path / "asked.gguf", "BF16", adapter=adapter)["outtype"] == "BF16"  # as asked

    shard = next(model.glob("*.safetensors"))
    tensors = load_file(shard)
    tensors["model.layers.0.mlp.down_proj.weight"][0, 0] = torch.tensor(1e6, dtype=torch.bfloat16)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ExportError, match="beyond F16's range.*gguf_intermediate: F32"):
        convert_hf_to_gguf(model, tmp_path / "overflow.gguf", "auto", adapter=adapter)


def test_conversion_memory_is_a_few_chunks_not_the_model(tiny_model: Path, tmp_path: Path):
    """Python-side peak allocation while converting a model of ~40 MB (largest tensor ~4 MB) with 1 MB chunks stays
    a few chunks: nothing reads a whole shard, let alone the model. (bench/export.py measures process RSS at 1 B.)"""
    model = build_random_model("qwen2", tmp_path / "m", tokenizer_source=tiny_model, hidden_size=512, intermediate_size=2048,
                               num_layers=3, num_heads=8, num_kv_heads=2, seed=1)
    size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    assert size > 30e6
    convert_hf_to_gguf(model, tmp_path / "warm.gguf", "F16", chunk_bytes=1 << 20)  # imports, tokenizer caches
    tracemalloc.start()
    try:
        convert_hf_to_gguf(model, tmp_path / "m.gguf", "F16", chunk_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12e6, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB model"


# ------------------------------------------------------------------------------------------------ tokenizers

@pytest.mark.parametrize("kind,pre", [("forge-tiny", "qwen2"), ("llama3", "llama-bpe"), ("spm", "default")])
def test_tokenizer_pre_is_detected_and_llama_cpp_tokenizes_like_transformers(tiny_model: Path, tmp_path: Path, kind, pre):
    model = build_random_model("llama", tmp_path / kind, tokenizer=kind, tokenizer_source=tiny_model, seed=6)
    out = tmp_path / f"{kind}.gguf"
    info = convert_hf_to_gguf(model, out, "F32")
    assert info["tokenizer_pre"] == pre
    assert parity(model, out) < F32_TOL  # asserts identical token ids too


def test_unknown_pre_tokenizer_is_refused_by_name(tiny_model: Path, tmp_path: Path):
    model = build_random_model("qwen2", tmp_path / "m", tokenizer_source=tiny_model, seed=1)
    tj = json.loads((model / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{L}+|\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (model / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ExportError, match=r"tokenizer.json: its pre-tokenizer \(\\p\{L\}\+\|\\s\+\) is not one Forge maps"):
        convert_hf_to_gguf(model, tmp_path / "x.gguf")


@pytest.mark.parametrize("model_type,match", [("deepseek_v3", "model_type `deepseek_v3`"), ("phi3", "model_type `phi3`"),
                                              ("gpt2", "model_type `gpt2`")])
def test_unsupported_architectures_are_refused_by_name(tiny_model: Path, tmp_path: Path, model_type, match):
    model = build_random_model("qwen2", tmp_path / "m", tokenizer_source=tiny_model, seed=1)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "model_type": model_type}))
    with pytest.raises(ExportError, match=f"{match}.*Fix: choose a base model of one of those families, or add the family"):
        convert_hf_to_gguf(model, tmp_path / "x.gguf")


def test_quantized_or_pickled_checkpoints_are_refused(tiny_model: Path, tmp_path: Path):
    model = build_random_model("qwen2", tmp_path / "m", tokenizer_source=tiny_model, seed=1)
    for f in model.glob("*.safetensors"):
        shutil.move(f, tmp_path / f.name)
    (model / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"no \*.safetensors weights \(found pytorch_model.bin\).*safe_serialization=True"):
        convert_hf_to_gguf(model, tmp_path / "x.gguf")


# ------------------------------------------------------------------------------------------------ quantization

@pytest.fixture(scope="module")
def f16_gguf(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "qwen3-F16.gguf"
    convert_hf_to_gguf(models["qwen3"], out, "F16")
    return out


@pytest.mark.parametrize("qtype,expect", [("Q8_0", "Q8_0"), ("Q6_K", "Q6_K"), ("Q5_K_M", "Q5_K"), ("Q4_K_M", "Q4_K"),
                                          ("F16", "F16")])
def test_every_quantization_loads_and_generates(f16_gguf: Path, tmp_path: Path, qtype, expect):
    out = tmp_path / f"m-{qtype}.gguf"
    quantize(f16_gguf, out, qtype)
    types = gguf_summary(out)["tensor_types"]
    assert types.get(expect, 0) > 0, types
    assert types.get("F32", 0) > 0  # norms stay F32
    assert smoke_generate(out, "def ", max_tokens=6)["completion_tokens"] > 0


def test_k_quant_refuses_a_shape_it_cannot_take(tiny_model: Path, tmp_path: Path):
    model = build_random_model("qwen2", tmp_path / "narrow", tokenizer_source=tiny_model, hidden_size=96, intermediate_size=192,
                               num_heads=3, num_kv_heads=1, seed=1)
    f16 = tmp_path / "narrow.gguf"
    convert_hf_to_gguf(model, f16, "F16")
    with pytest.raises(ExportError, match=r"Q4_K_M needs weight rows that are multiples of 256.*rows of 96.*Fix: set "
                                          r"deploy.quantization to Q8_0 or F16"):
        quantize(f16, tmp_path / "q4.gguf", "Q4_K_M")
    quantize(f16, tmp_path / "q8.gguf", "Q8_0")  # 96 = 3 × 32: Q8_0 takes it
    assert gguf_summary(tmp_path / "q8.gguf")["tensor_types"]["Q8_0"] > 0


def test_tokenizers_build_offline(tmp_path: Path, tiny_model: Path):
    """The fixtures' tokenizers really are what they claim (guards the tests above against a vacuous pass)."""
    t = json.loads((build_tokenizer("llama3", tmp_path / "l3") / "tokenizer.json").read_text())
    assert t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].startswith("(?i:'s|'t|'re")
