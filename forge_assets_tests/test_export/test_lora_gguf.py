"""LoRA adapters as llama.cpp GGUF LoRAs: base GGUF + LoRA GGUF in llama.cpp computes the merged model's logits.

Real PEFT / mlx-lm adapter folders, real llama.cpp (llama-cpp-python), no mocks. The llama.cpp contexts here keep
their KV cache in F32 (type_k/type_v = 0): with llama.cpp's default F16 cache the comparison measures the cache's
rounding (up to ~8e-3 on the random Qwen3), not the adapter. Measured max |logit diff| against the merged model in
PyTorch F32 on forge-tiny, adapters moving the logits by ~5: base GGUF alone ~3e-6; LoRA GGUF F32 ~3e-6 (rsLoRA,
PiSSA, mlx and the random Qwen3 / Llama alike, <6e-6); F16 ~1.8e-3; BF16 ~1.8e-2; Q8_0 (lora_b stays F16) ~3e-2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from forge_assets.export.gguf_export import ExportError, convert_to_gguf, quantize
from forge_assets.export.lora_gguf import apply_lora, convert_lora_to_gguf, unmerged_support

F32_TOLERANCE = 1e-4
F16_TOLERANCE = 1e-2
PROMPT = "def handle_get(request, store):\n    key = request[\"key\"]\n    item = store.get(key)\n"


# ------------------------------------------------------------------------------------------------ helpers

def make_peft_adapter(base: Path, out: Path, seed: int, save_kwargs: dict | None = None, **lora_kwargs) -> Path:
    """A PEFT LoRA on base with random non-zero A and B (init_lora_weights=False), saved with save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forge_assets.architectures import DEFAULT_LORA_MODULES

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    options = {"r": 4, "lora_alpha": 8, "target_modules": list(DEFAULT_LORA_MODULES), "init_lora_weights": False,
               "task_type": "CAUSAL_LM", **lora_kwargs}
    peft_model = get_peft_model(model, LoraConfig(**options))
    peft_model.save_pretrained(out, **(save_kwargs or {}))
    return out


def torch_logits(model_dir: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    """F32 logits of a Hugging Face model folder (with a PEFT adapter applied unmerged, if given)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def merged_logits(base: Path, adapter: Path, tmp: Path, ids: list[int]) -> np.ndarray:
    """Logits of the adapter folded into the base by Forge's own merge (merge_adapter)."""
    from forge_assets.training.adapter import merge_adapter

    merged = tmp / f"merged-{adapter.name}"
    merge_adapter(base, adapter, merged)
    return torch_logits(merged, ids)


def llama(model: Path, lora: Path | None = None):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=256, n_threads=2,
                           verbose=False, logits_all=True, seed=0, type_k=0, type_v=0)


def cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def gguf_fields(path: Path) -> tuple[dict, dict]:
    """(scalar keys, {tensor name: (ggml type name, ne)}) of a GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))
    keys = {}
    for name, f in r.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            keys[name] = bytes(f.parts[f.data[0]]).decode()
        elif f.types and f.types[0] != gguf.GGUFValueType.ARRAY:
            keys[name] = f.parts[f.data[0]][0].item()
    return keys, {t.name: (t.tensor_type.name, [int(x) for x in t.shape]) for t in r.tensors}


def random_base(kind: str, tiny_model: Path, out: Path) -> Path:
    """A tiny random-initialised Qwen3 or Llama saved like a real base (forge-tiny's tokenizer files copied)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    config = AutoConfig.for_model(kind, vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                                  rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.1)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / name).is_file():
            shutil.copy(tiny_model / name, out / name)
    return out


def write_base_gguf(model_dir: Path, out: Path) -> Path:
    """The F32 base GGUF of a tiny qwen3/llama folder, by Forge's own converter."""
    convert_to_gguf(model_dir, out, "F32")
    return out


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora_gguf")


@pytest.fixture(scope="module")
def ids(tiny_model: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)(PROMPT, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def base_gguf(tiny_model: Path, work: Path) -> Path:
    out = work / "base-F32.gguf"
    convert_to_gguf(tiny_model, out, "F32")
    return out


@pytest.fixture(scope="module")
def lora_a(tiny_model: Path, work: Path) -> Path:
    return make_peft_adapter(tiny_model, work / "adapter-a", seed=1)


@pytest.fixture(scope="module")
def lora_b(tiny_model: Path, work: Path) -> Path:
    return make_peft_adapter(tiny_model, work / "adapter-b-rslora", seed=2, use_rslora=True, r=8, lora_alpha=4)


# ------------------------------------------------------------------------------------------------ tests

def test_lora_gguf_metadata_and_tensor_names(tiny_model: Path, lora_a: Path, work: Path):
    out = work / "a-F16.gguf"
    info = convert_lora_to_gguf(lora_a, tiny_model, out, "F16")
    assert info["tensors"] == 14 and info["rank"] == 4 and info["alpha"] == 8.0 and info["outtype"] == "F16"
    assert info["bytes"] == out.stat().st_size
    keys, tensors = gguf_fields(out)
    assert keys["general.type"] == "adapter" and keys["general.architecture"] == "qwen2"
    assert keys["adapter.type"] == "lora" and keys["adapter.lora.alpha"] == pytest.approx(8.0)
    # ggml order: lora_a ne = [in, r], lora_b ne = [r, out]
    assert tensors["blk.0.attn_q.weight.lora_a"] == ("F16", [256, 4])
    assert tensors["blk.0.attn_k.weight.lora_b"] == ("F16", [4, 128])  # 2 kv heads x 64
    assert tensors["blk.0.ffn_down.weight.lora_b"] == ("F16", [4, 256])
    assert {n.rsplit(".", 2)[0] for n in tensors} == {f"blk.0.{t}" for t in
                                                     ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert unmerged_support(lora_a) is None


@pytest.mark.parametrize("outtype, tolerance", [("F32", F32_TOLERANCE), ("F16", F16_TOLERANCE), ("BF16", 0.05), ("Q8_0", 0.1)])
def test_base_plus_lora_in_llama_cpp_matches_the_merged_model(tiny_model, base_gguf, lora_a, ids, work, outtype, tolerance):
    ref = merged_logits(tiny_model, lora_a, work, ids) if outtype == "F32" else torch_logits(tiny_model, ids, lora_a)
    base = torch_logits(tiny_model, ids)
    assert np.abs(ref - base).max() > 20 * tolerance  # the adapter moves the logits far more than the tolerance
    out = work / f"a-{outtype}.gguf"
    convert_lora_to_gguf(lora_a, tiny_model, out, outtype)
    got = cpp_logits(llama(base_gguf, out), ids)  # Llama(lora_path=...) sets it through llama_set_adapters_lora
    assert np.abs(ref - got).max() < tolerance
    assert (ref.argmax(-1) == got.argmax(-1)).all()


def test_rslora_scale_is_alpha_over_sqrt_rank(tiny_model, base_gguf, lora_b, ids, work):
    info = convert_lora_to_gguf(lora_b, tiny_model, work / "b-F32.gguf", "F32")
    assert info["method"] == "rslora" and info["alpha"] == pytest.approx(4 * 8 ** 0.5)  # llama.cpp divides by r=8
    ref = merged_logits(tiny_model, lora_b, work, ids)
    got = cpp_logits(llama(base_gguf, work / "b-F32.gguf"), ids)
    assert np.abs(ref - got).max() < F32_TOLERANCE and (ref.argmax(-1) == got.argmax(-1)).all()


def test_rank_and_alpha_patterns_fold_into_lora_b(tiny_model, base_gguf, ids, work):
    """One adapter.lora.alpha per file: a module whose own alpha/r differs gets the ratio folded into its B."""
    adapter = make_peft_adapter(tiny_model, work / "patterns", seed=6, rank_pattern={"down_proj": 2},
                                alpha_pattern={"q_proj": 32})
    info = convert_lora_to_gguf(adapter, tiny_model, work / "patterns.gguf", "F32")
    assert info["rank"] == [2, 4] and info["alpha"] == 8.0 and info["folded_scales"] == 1  # q_proj: 32/4 vs 8/4
    ref = merged_logits(tiny_model, adapter, work, ids)
    got = cpp_logits(llama(base_gguf, work / "patterns.gguf"), ids)
    assert np.abs(ref - got).max() < F32_TOLERANCE and (ref.argmax(-1) == got.argmax(-1)).all()


@pytest.mark.slow
def test_apply_lora_switches_adapters_on_one_context(tiny_model, base_gguf, lora_a, lora_b, ids, work):
    a_gguf, b_gguf = work / "switch-a.gguf", work / "switch-b.gguf"
    convert_lora_to_gguf(lora_a, tiny_model, a_gguf, "F32")
    convert_lora_to_gguf(lora_b, tiny_model, b_gguf, "F32")
    expected = {None: torch_logits(tiny_model, ids), a_gguf: torch_logits(tiny_model, ids, lora_a),
                b_gguf: torch_logits(tiny_model, ids, lora_b)}
    llm = llama(base_gguf)
    for adapter in (None, a_gguf, b_gguf, a_gguf, None):
        apply_lora(llm, adapter)
        # eval continues at llm.n_tokens and generate() reuses a cached prefix: both need apply_lora's reset
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
        assert np.abs(got - expected[adapter]).max() < F32_TOLERANCE, adapter
    # generation through the prefix cache: the same prompt after a switch must not reuse the other adapter's KV
    apply_lora(llm, b_gguf)
    llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)  # fills the KV cache with adapter b's keys/values
    apply_lora(llm, a_gguf)
    greedy_a = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    fresh = llama(base_gguf, a_gguf)
    assert greedy_a == fresh.create_completion(PROMPT, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    fresh.close()
    apply_lora(llm, a_gguf, scale=0.0)  # scale 0: the base again
    assert np.abs(cpp_logits(llm, ids) - expected[None]).max() < F32_TOLERANCE
    with pytest.raises(ExportError, match="no such LoRA GGUF"):
        apply_lora(llm, work / "missing.gguf")
    llm.close()


def test_pissa_as_forge_saves_it_converts_and_matches(tiny_model, base_gguf, ids, work):
    """peft_backend saves PiSSA converted against the initial adapter: a rank-2r plain LoRA on the unchanged base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forge_assets.architectures import DEFAULT_LORA_MODULES

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, local_files_only=True)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_LORA_MODULES), init_lora_weights="pissa_niter_4",
                                          task_type="CAUSAL_LM"))
    init, out = work / "pissa-init", work / "pissa"
    pm.peft_config["default"].init_lora_weights = True
    pm.save_pretrained(init)
    pm.peft_config["default"].init_lora_weights = "pissa_niter_4"
    with torch.no_grad():  # "training"
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(out, path_initial_model_for_weight_conversion=str(init))
    pm.save_pretrained(work / "pissa-raw")  # unconverted: belongs to the residual base
    assert "init_lora_weights" in unmerged_support(work / "pissa-raw") and "deploy.merge: true" in unmerged_support(work / "pissa-raw")
    info = convert_lora_to_gguf(out, tiny_model, work / "pissa.gguf", "F32")
    assert info["rank"] == 8
    ref = merged_logits(tiny_model, out, work, ids)
    got = cpp_logits(llama(base_gguf, work / "pissa.gguf"), ids)
    assert np.abs(ref - got).max() < F32_TOLERANCE and (ref.argmax(-1) == got.argmax(-1)).all()


def test_mlx_format_adapter_converts_and_matches_mlx_merge(tiny_model, base_gguf, lora_a, ids, work):
    """An mlx-lm adapter folder (lora_a [in, r], lora_b [r, out], its own scale), checked against mlx-lm's fuse."""
    pytest.importorskip("mlx_lm")
    from safetensors.numpy import load_file, save_file

    folder = work / "mlx-adapter"
    folder.mkdir()
    peft = load_file(lora_a / "adapter_model.safetensors")
    weights = {}
    for key, value in peft.items():
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        weights[f"{module}.lora_{'a' if '.lora_A.' in key else 'b'}"] = np.ascontiguousarray(value.T)
    save_file(weights, folder / "adapters.safetensors")
    keys = sorted({k.split("layers.0.", 1)[1].rsplit(".lora_", 1)[0] for k in weights})
    (folder / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 1, "method": "rslora",
        "lora_parameters": {"rank": 4, "scale": 1.5, "dropout": 0.0, "keys": keys}}))
    assert unmerged_support(folder) is None
    info = convert_lora_to_gguf(folder, tiny_model, work / "mlx.gguf", "F32")
    assert info["backend"] == "mlx" and info["alpha"] == pytest.approx(6.0)
    ref = merged_logits(tiny_model, folder, work, ids)  # merge_adapter -> mlx_backend.merge (mlx-lm fuse)
    got = cpp_logits(llama(base_gguf, work / "mlx.gguf"), ids)
    assert np.abs(ref - got).max() < F32_TOLERANCE and (ref.argmax(-1) == got.argmax(-1)).all()
    (folder / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "dora", "lora_parameters": {"rank": 4, "scale": 1.5}}))
    assert "DoRA" in unmerged_support(folder)


def test_dora_modules_to_save_and_other_targets_are_refused(tiny_model, work):
    cases = {
        "dora": ({"use_dora": True}, "DoRA"),
        "mts": ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        "embed": ({"target_modules": ["q_proj", "embed_tokens"]}, "`model.embed_tokens`"),
    }
    for name, (kwargs, words) in cases.items():
        folder = make_peft_adapter(tiny_model, work / f"refused-{name}", seed=4, **kwargs)
        reason = unmerged_support(folder)
        assert reason is not None and words in reason and "set deploy.merge: true to serve a merged GGUF" in reason, reason
        assert str(folder) in reason
        with pytest.raises(ExportError, match="deploy.merge: true"):
            convert_lora_to_gguf(folder, tiny_model, work / f"refused-{name}.gguf")
        assert not (work / f"refused-{name}.gguf").exists()
    with pytest.raises(ExportError, match="outtype"):
        convert_lora_to_gguf(work / "adapter-a", tiny_model, work / "x.gguf", "Q4_K_M")


def test_q8_0_base_with_lora_loads_and_generates(base_gguf, tiny_model, lora_a, ids, work):
    q8 = work / "base-Q8_0.gguf"
    quantize(base_gguf, q8, "Q8_0")
    lora = work / "a-F16.gguf"
    if not lora.exists():
        convert_lora_to_gguf(lora_a, tiny_model, lora, "F16")
    llm = llama(q8, lora)
    out = llm.create_completion("def handle_", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0 and isinstance(out["choices"][0]["text"], str)
    with_lora = cpp_logits(llm, ids)
    apply_lora(llm, None)
    plain = cpp_logits(llm, ids)
    ref = torch_logits(tiny_model, ids, lora_a)
    # Q8_0 weights move logits a little; the adapter's effect is still there and close to the F32 reference
    assert np.abs(with_lora - plain).max() > 1.0
    assert np.abs(with_lora - ref).max() < np.abs(plain - ref).max()


@pytest.mark.parametrize("kind", ["qwen3", "llama", "mistral"])
def test_qwen3_llama_and_mistral_loras_match_their_merged_models(kind, tiny_model, work):
    """Random tiny Qwen3 / Llama / Mistral bases (gguf_export converts qwen2 only; a test-local writer makes their base
    GGUF). Mistral's LoRA GGUF used to be refused while its base converted, so it fell back to merged serving."""
    base = random_base(kind, tiny_model, work / f"{kind}-base")
    adapter = make_peft_adapter(base, work / f"{kind}-adapter", seed=5, r=4, lora_alpha=16)
    out = work / f"{kind}-lora.gguf"
    info = convert_lora_to_gguf(adapter, base, out, "F32")
    keys, tensors = gguf_fields(out)
    arch = {"mistral": "llama"}.get(kind, kind)  # Mistral's GGUF architecture is llama's
    assert info["architecture"] == arch and keys["general.architecture"] == arch and keys["general.type"] == "adapter"
    assert info["tensors"] == 2 * 7 * 2 and "blk.1.attn_q.weight.lora_b" in tensors
    assert tensors["blk.1.attn_q.weight.lora_b"] == ("F32", [4, 64]) and tensors["blk.0.attn_k.weight.lora_a"] == ("F32", [64, 4])
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(base, local_files_only=True)(PROMPT, add_special_tokens=False)["input_ids"]
    ref = merged_logits(base, adapter, work, ids)
    assert np.abs(ref - torch_logits(base, ids)).max() > 100 * F32_TOLERANCE
    base_gguf = write_base_gguf(base, work / f"{kind}-base.gguf")
    got = cpp_logits(llama(base_gguf, out), ids)
    assert np.abs(ref - got).max() < F32_TOLERANCE and (ref.argmax(-1) == got.argmax(-1)).all()
    # an adapter for another base is refused with the module and both shapes named
    with pytest.raises(ExportError, match="do not fit the base weight"):
        convert_lora_to_gguf(adapter, tiny_model, work / f"{kind}-wrong.gguf")
