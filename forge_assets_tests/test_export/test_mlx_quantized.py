"""MLX-quantized base models (mlx-lm `convert -q`, as the mlx-community 4-bit and 8-bit models are made) as
`base_model`: dequantized by Forge's streamed GGUF converter, trained on by the mlx backend as they are, refused by
PEFT with the fix, scored through mlx-lm, and served by `mlx_lm server` with the adapter.

The quantized folders are built offline: a random Qwen2 (random_models.py, forge-tiny's tokenizer) quantized by
mlx-lm's own `convert` — 4-bit with bfloat16 scales, 8-bit with float16 scales, and mlx-lm's mixed 3/6-bit recipe
(per-module overrides in config.json, group size 32) on a model with tied, quantized embeddings.

Figures measured here (2 CPU cores, mlx[cpu] 0.32, mlx-lm 0.32.2, llama-cpp-python 0.3.36):
- the converter's dequantized values equal scales·q + biases exactly (float32) for every tensor and every bit width
  mlx packs (2, 3, 4, 5, 6, 8), so equal `mlx.core.dequantize` bit for bit with float32 scales; with float16/bfloat16
  scales mlx's dequantize rounds twice, and the converter's F16/BF16 output is at most one unit in the last place
  from it, never farther from the exact value;
- llama.cpp's logits on the F32 GGUF against mlx-lm's on the quantized model (its weights as saved, float32
  compute): max |diff| 1.5e-6 to 1.7e-6 on logits of magnitude ~2.5 (tolerance F32_TOL 1e-4); the BF16 GGUF of the
  4-bit model 1.3e-2 (BF16_TOL 5e-2), the F16 GGUF of the 8-bit one 1.8e-3 (F16_TOL 2e-2);
- an mlx adapter trained on the 4-bit base, folded in while converting or as an F32 LoRA GGUF on the F32 base GGUF:
  1.7e-6 / 1.8e-6 against mlx-lm with the adapter (F32_TOL), where the adapter itself moves the logits by ~1;
- evaluation through mlx-lm: the same summed loss as transformers on a float32 model (relative 1e-7, held to 1e-5)
  and the same greedy texts; on the 4-bit base its perplexity is within 4.6e-4 (relative, held to 5e-3) of
  transformers' on mlx-lm's dequantized copy (bf16 activations against fp32);
- the asset chain (base_model = the 4-bit folder): the served F16 base GGUF (from the BF16 intermediate) + F16 LoRA
  GGUF against mlx-lm with the adapter: 1.1e-2 on logits of magnitude ~2.2 (SERVED_TOL 3e-2; the adapter moves them
  by 0.24); quantization loss of the F16 base + LoRA -0.02 %. The whole file: 20 tests in 2 min 10 s, 64 s of it the
  chain.

MoE bases in mlx-lm's layout (experts stacked as `mlp.switch_mlp.*` [E, out, in], routers at 8 bits): a random
qwen3_moe (Qwen3-Coder-30B-A3B's architecture) and qwen3_next (Qwen3-Coder-Next's), 8 experts, top-2, quantized by
mlx-lm to 4 bits with bfloat16 scales as mlx-community's are. llama.cpp on the F32 GGUF against mlx-lm on the
quantized model: 6.9e-7 (qwen3_moe) and 5.5e-6 (qwen3_next) relative to the largest logit (F32_TOL; 4-bit quantizing
moved them by 0.42 and 1.5); an mlx adapter trained on the 4-bit base with expert LoRA, folded in or as an F32 LoRA
GGUF: 8.4e-7 / 7.9e-7 (qwen3_moe), 1.5e-5 / 1.2e-5 (qwen3_next). The GGUF of mlx-lm's unquantized save is byte for
byte the GGUF of the Hugging Face checkpoint (experts, Qwen3-Next's +1 norms and conv1d layout mapped back).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from forge_assets.training import mlx_backend

pytestmark = pytest.mark.skipif(not mlx_backend.available(), reason="mlx[cpu] / mlx-lm not installed")

F32_TOL = 1e-4
F16_TOL = 2e-2
BF16_TOL = 5e-2
TEXT = ("def handle_get(request, store):\n    key = request['key']  # ключ ✓\n    if key not in store:\n"
        "        return {'error': 404}\n    return store[key]\n")
SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_heads": 4, "num_kv_heads": 2, "max_position_embeddings": 512}


def _quantize(hf: Path, out: Path, **kwargs) -> Path:
    from mlx_lm import convert

    convert(hf_path=str(hf), mlx_path=str(out), quantize=True, **kwargs)
    return out


@pytest.fixture(scope="session")
def mlx_quantized(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    """{"hf": the float32 Qwen2, "q4": 4-bit bf16 scales, "q8": 8-bit f16 scales, "mixed": mixed 3/6-bit, group 32,
    tied embeddings}, built once per session by mlx-lm's convert (offline, from local folders)."""
    from forge_assets.export.random_models import build_random_model

    root = tmp_path_factory.mktemp("mlxq")
    hf = build_random_model("qwen2", root / "hf", tokenizer_source=tiny_model, seed=1, **SHAPE)
    tied = build_random_model("qwen2", root / "tied", tokenizer_source=tiny_model, seed=2, tie_word_embeddings=True, **SHAPE)
    return {"hf": hf,
            "q4": _quantize(hf, root / "q4", q_bits=4, q_group_size=64, dtype="bfloat16"),
            "q8": _quantize(hf, root / "q8", q_bits=8, q_group_size=64, dtype="float16"),
            "mixed": _quantize(tied, root / "mixed", q_group_size=32, quant_predicate="mixed_3_6", dtype="bfloat16")}


@pytest.fixture(scope="session")
def q4_adapter(mlx_quantized: dict, tiny_dataset: Path, tmp_path_factory) -> Path:
    """An mlx adapter trained for 4 steps on the 4-bit base (backend auto: mlx, because the base is MLX-quantized)."""
    from forge_assets.config import TrainingConfig
    from forge_assets.training.adapter import train_adapter

    out = tmp_path_factory.mktemp("q4-adapter") / "adapter"
    cfg = TrainingConfig(backend="auto", rank=4, alpha=8, learning_rate=0.01, max_steps=4, batch_size=2, seq_len=96)
    train_adapter(mlx_quantized["q4"], tiny_dataset, out, cfg, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def code_dataset(tmp_path_factory) -> Path:
    """train/valid/test splits of the test corpus with repository headers (so FIM cases are cut from the test split)."""
    from forge_assets.chat import EOT
    from forge_assets.mining.fim import header
    from forge_assets_tests.conftest import PY_FILES

    folder = tmp_path_factory.mktemp("code-dataset")
    recs = [{"kind": "code", "repo": "shop", "path": path, "text": header("shop", path) + src + EOT} for path, src in PY_FILES.items()]
    for split, rows in {"train": recs * 3, "valid": recs[:1], "test": recs}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def mlx_logits(folder: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    """mlx-lm's logits for ids: the quantized weights as saved, computed in float32 (set_dtype casts scales, biases and
    norms only, exactly), so they can be held to llama.cpp's F32 GGUF."""
    import mlx.core as mx
    from mlx_lm.utils import load

    model, _ = load(str(folder), adapter_path=str(adapter) if adapter else None, model_config=mlx_backend._model_config(folder))
    model.set_dtype(mx.float32)
    return np.array(model(mx.array([ids]))[0])


def llama_logits(gguf: Path, ids: list[int], text: str | None = None, lora: Path | None = None) -> np.ndarray:
    """llama.cpp's logits for ids (F32 KV cache); with `text`, also asserts llama.cpp tokenizes it to ids."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, n_ctx=256, n_threads=2, verbose=False,
                          logits_all=True, type_k=0, type_v=0)
    try:
        if text is not None:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, "llama.cpp tokenizes differently"
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def hf_ids(folder: Path, text: str = TEXT) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(folder, local_files_only=True)(text, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------------------------------------ dequantizing

@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_unpacking_matches_mlx_for_every_width(bits: int):
    import mlx.core as mx

    from forge_assets.export.hf_to_gguf import _unpack

    rng = np.random.default_rng(bits)
    for group_size in (32, 64, 128):
        w = mx.array(rng.normal(size=(6, 256)).astype(np.float32))
        q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
        values = _unpack(np.array(q), bits)
        assert values.shape == (6, 256) and values.max() <= (1 << bits) - 1
        ours = (values.reshape(6, -1, group_size) * np.array(s)[:, :, None] + np.array(b)[:, :, None]).reshape(6, 256)
        assert np.array_equal(ours, np.array(mx.dequantize(q, s, b, group_size=group_size, bits=bits)))


@pytest.mark.parametrize("kind", ["q4", "q8", "mixed"])
def test_every_quantized_tensor_reads_back_exactly(mlx_quantized: dict, kind: str):
    """The converter's float32 values are scales·q + biases exactly (float64 reference), which is mx.dequantize with
    float32 scales bit for bit; rounded to the checkpoint's type they are within one unit in the last place of
    mx.dequantize in that type (which rounds product and sum separately), and never farther from the exact value."""
    import mlx.core as mx

    from forge_assets.export.hf_to_gguf import _Quantized, _read_rows, _unpack, read_index

    folder = mlx_quantized[kind]
    weights = {}
    for f in folder.glob("*.safetensors"):
        weights.update(mx.load(str(f)))
    sources = read_index(folder)
    quantized = {n: s for n, s in sources.items() if isinstance(s, _Quantized)}
    assert not any(n.endswith((".scales", ".biases")) for n in sources)
    if kind == "mixed":  # mixed_3_6: per-module widths from the shapes, tied embeddings quantized (no lm_head)
        assert {s.bits for s in quantized.values()} == {3, 6} and {s.group_size for s in quantized.values()} == {32}
        assert "model.embed_tokens.weight" in quantized and "lm_head.weight" not in sources
    else:
        assert {(s.bits, s.group_size) for s in quantized.values()} == {(int(kind[1:]), 64)}
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(quantized)  # embedding and head quantized too
    assert len(quantized) == 14 + (1 if kind == "mixed" else 2)  # 7 projections × 2 blocks, embedding (and head)
    low = mx.bfloat16 if kind != "q8" else mx.float16
    for name, src in quantized.items():
        module = name.removesuffix(".weight")
        q, s, b = weights[name], weights[f"{module}.scales"], weights[f"{module}.biases"]
        assert s.dtype == low
        with open(src.file, "rb") as fh:
            ours = _read_rows(src, fh, 0, src.rows)
        assert ours.shape == (src.rows, src.shape[1]) and ours.dtype == np.float32
        exact = (_unpack(np.array(q), src.bits).reshape(src.rows, -1, src.group_size) * np.array(s.astype(mx.float32), np.float64)[:, :, None]
                 + np.array(b.astype(mx.float32), np.float64)[:, :, None]).reshape(ours.shape)
        assert np.array_equal(ours, exact.astype(np.float32)), name
        f32 = mx.dequantize(q, s.astype(mx.float32), b.astype(mx.float32), group_size=src.group_size, bits=src.bits)
        assert np.array_equal(ours, np.array(f32)), name
        theirs = np.array(mx.dequantize(q, s, b, group_size=src.group_size, bits=src.bits).astype(mx.float32))
        rounded = np.array(mx.array(ours).astype(low).astype(mx.float32))  # what an F16/BF16 GGUF holds
        # mlx rounds scales·q to `low`, then the sum: each rounding is at most half a unit in the last place of the
        # larger of |scales·q|, |biases|, so the two differ by at most 1.5 such units; ours is the nearer one.
        largest = np.maximum(np.abs(exact - np.repeat(np.array(b.astype(mx.float32)), src.group_size, axis=1)), np.abs(exact))
        largest = np.maximum(largest, np.abs(np.repeat(np.array(b.astype(mx.float32)), src.group_size, axis=1)))
        unit = np.exp2(np.floor(np.log2(np.maximum(largest, 1e-30))) - (7 if low == mx.bfloat16 else 10))
        assert (np.abs(rounded - theirs) <= 1.5 * unit).all(), name
        assert (np.abs(rounded - exact) <= np.abs(theirs - exact)).all(), name


# ------------------------------------------------------------------------------------------------ GGUF

@pytest.mark.parametrize("kind", ["q4", "q8", "mixed"])
def test_gguf_of_a_quantized_base_computes_what_mlx_lm_computes(mlx_quantized: dict, kind: str, tmp_path: Path):
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf

    folder = mlx_quantized[kind]
    ids = hf_ids(folder)
    want = mlx_logits(folder, ids)
    info = convert_hf_to_gguf(folder, tmp_path / "f32.gguf", "F32")
    assert info["tensors"] == (26 if kind == "mixed" else 27) and info["tensor_types"] == {"F32": info["tensors"]}
    assert np.abs(llama_logits(tmp_path / "f32.gguf", ids, TEXT) - want).max() < F32_TOL
    auto = convert_hf_to_gguf(folder, tmp_path / "auto.gguf", "auto")
    assert auto["outtype"] == ("F16" if kind == "q8" else "BF16")  # the scales' type
    assert np.abs(llama_logits(tmp_path / "auto.gguf", ids) - want).max() < (F16_TOL if kind == "q8" else BF16_TOL)
    if kind != "mixed":  # not blind: quantizing moved the logits further than the tolerance (from the float32 model's)
        from forge_assets.export.hf_to_gguf import convert_hf_to_gguf as convert

        convert(mlx_quantized["hf"], tmp_path / "hf.gguf", "F32")
        assert np.abs(llama_logits(tmp_path / "hf.gguf", ids) - want).max() > 10 * F32_TOL


def test_an_mlx_adapter_folds_into_the_dequantized_base_or_serves_as_a_lora_gguf(mlx_quantized: dict, q4_adapter: Path,
                                                                                   tmp_path: Path):
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf
    from forge_assets.export.lora_gguf import convert_lora_to_gguf

    q4 = mlx_quantized["q4"]
    ids = hf_ids(q4)
    want = mlx_logits(q4, ids, q4_adapter)
    assert np.abs(want - mlx_logits(q4, ids)).max() > 100 * F32_TOL
    merged = convert_hf_to_gguf(q4, tmp_path / "merged.gguf", "F32", adapter=q4_adapter)
    assert merged["lora_merged_tensors"] == 14
    assert np.abs(llama_logits(tmp_path / "merged.gguf", ids) - want).max() < F32_TOL
    convert_hf_to_gguf(q4, tmp_path / "base.gguf", "F32")
    lora = convert_lora_to_gguf(q4_adapter, q4, tmp_path / "lora.gguf", "F32")  # checked against the dequantized shapes
    assert lora["tensors"] == 28
    assert np.abs(llama_logits(tmp_path / "base.gguf", ids, lora=tmp_path / "lora.gguf") - want).max() < F32_TOL


def test_a_quantized_weight_split_from_its_scales_across_shards_converts_the_same(mlx_quantized: dict, tmp_path: Path):
    """mlx-lm shards by size, so a packed weight and its scales/biases can sit in different files: the same GGUF bytes."""
    import mlx.core as mx

    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf

    src = mlx_quantized["q4"]
    split = tmp_path / "split"
    shutil.copytree(src, split, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = mx.load(str(src / "model.safetensors"))
    first = {n: t for n, t in tensors.items() if not n.endswith((".scales", ".biases"))}
    second = {n: t for n, t in tensors.items() if n not in first}
    mx.save_safetensors(str(split / "model-00001-of-00002.safetensors"), first, metadata={"format": "mlx"})
    mx.save_safetensors(str(split / "model-00002-of-00002.safetensors"), second, metadata={"format": "mlx"})
    weight_map = {n: "model-00001-of-00002.safetensors" for n in first} | {n: "model-00002-of-00002.safetensors" for n in second}
    (split / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    convert_hf_to_gguf(src, tmp_path / "one.gguf", "F16", chunk_bytes=1 << 16)
    convert_hf_to_gguf(split, tmp_path / "two.gguf", "F16", chunk_bytes=1 << 20)
    assert (tmp_path / "one.gguf").read_bytes() == (tmp_path / "two.gguf").read_bytes()


def test_quantized_formats_forge_cannot_dequantize_are_refused_with_the_fix(mlx_quantized: dict, tmp_path: Path):
    from forge_assets.export.gguf_export import ExportError
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf

    fp4 = _quantize(mlx_quantized["hf"], tmp_path / "mxfp4", q_mode="mxfp4")  # no biases, uint8 scales
    with pytest.raises(ExportError, match=r"mode `mxfp4`.*affine.*Fix:"):
        convert_hf_to_gguf(fp4, tmp_path / "x.gguf", "F16")
    wrong = tmp_path / "wrong"
    shutil.copytree(mlx_quantized["q4"], wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["quantization"]["model.layers.0.mlp.up_proj"] = {"group_size": 64, "bits": 8, "mode": "affine"}
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"up_proj.*says 8 bits.*shapes hold 4 bits.*Fix:"):
        convert_hf_to_gguf(wrong, tmp_path / "y.gguf", "F16")


# ------------------------------------------------------------------------------------------------ training

def test_peft_refuses_a_quantized_base_with_the_fix_and_auto_picks_mlx(mlx_quantized: dict, tiny_dataset: Path, tmp_path: Path):
    import platform

    from forge_assets.config import TrainingConfig
    from forge_assets.training import peft_backend
    from forge_assets.training.adapter import choose_backend, train_adapter
    from forge_assets.training.base_model import check_base_model, resolve_base_model

    q4 = mlx_quantized["q4"]
    assert resolve_base_model(str(q4), tmp_path) == q4.resolve()  # an MLX folder (no torch_dtype, an index) is a base
    info = check_base_model(q4)
    assert info["model_type"] == "qwen2" and info["quantization"] == "mlx affine 4-bit, group size 64" and info["quantization_bits"] == 4
    assert "quantization" not in check_base_model(mlx_quantized["hf"])
    assert "modules with their own settings" in check_base_model(mlx_quantized["mixed"])["quantization"]
    assert choose_backend("auto", q4) == "mlx"
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    assert choose_backend("auto", mlx_quantized["hf"]) == ("mlx" if apple else "peft")
    cfg = TrainingConfig(backend="peft", rank=4, alpha=8, max_steps=1, batch_size=2, seq_len=96)
    with pytest.raises(ValueError, match=r"MLX-quantized model \(mlx affine 4-bit, group size 64.*Fix: set training\.backend: mlx"):
        train_adapter(q4, tiny_dataset, tmp_path / "adapter", cfg, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"MLX-quantized.*Fix:"):
        peft_backend.load_model(q4)


def test_mlx_trains_lora_over_the_quantized_layers_as_loaded(mlx_quantized: dict, q4_adapter: Path, tmp_path: Path, monkeypatch):
    import mlx.nn as nn
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.utils import load

    from forge_assets.config import TrainingConfig

    q4 = mlx_quantized["q4"]
    config = json.loads((q4_adapter / "adapter_config.json").read_text())
    assert json.loads((q4_adapter / "forge_adapter.json").read_text())["backend"] == "mlx"
    assert config["base_quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    model, _ = load(str(q4), adapter_path=str(q4_adapter), model_config=mlx_backend._model_config(q4))
    q_proj = model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, LoRALinear) and isinstance(q_proj.linear, nn.QuantizedLinear) and q_proj.linear.bits == 4
    ids = hf_ids(q4)
    assert np.abs(mlx_logits(q4, ids, q4_adapter) - mlx_logits(q4, ids)).max() > 1e-2  # the adapter loads and acts

    # qlora on an already quantized base: no requantizing (the mixed 3/6-bit base keeps its own widths)
    def requantize(_model):
        raise AssertionError("a pre-quantized base was quantized again")

    monkeypatch.setattr(mlx_backend, "_quantize_base", requantize)
    lines: list[str] = []
    cfg = TrainingConfig(backend="mlx", method="qlora", rank=4, alpha=8, max_steps=1, batch_size=2, seq_len=64)
    result = mlx_backend.train(mlx_quantized["mixed"], [TEXT * 2] * 4, [], tmp_path / "qlora", cfg, log=lines.append)
    assert result["steps"] == 1 and any("not requantized" in line for line in lines)
    saved = json.loads((tmp_path / "qlora" / "adapter_config.json").read_text())
    assert saved["base_quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}  # the base's own block


# ------------------------------------------------------------------------------------------------ evaluation

@pytest.mark.slow
def test_mlx_scoring_computes_what_transformers_computes(mlx_quantized: dict):
    """The mlx scoring path against transformers' on the same float32 (unquantized) model: summed loss and greedy
    texts, batched with left padding, with and without the newline stop."""
    from forge_assets.evaluation import mlx_eval
    from forge_assets.evaluation.generate import greedy
    from forge_assets.evaluation.scores import summed_loss
    from forge_assets.training import peft_backend

    hf = mlx_quantized["hf"]
    torch_model, torch_tok = peft_backend.load_model(hf)
    mlx_model, mlx_tok = mlx_eval.load_model(hf)
    texts = [TEXT, TEXT[:40], "class Router:\n    pass\n" * 5, "x = 1\n"]
    want, got = summed_loss(torch_model, torch_tok, texts, 48), summed_loss(mlx_model, mlx_tok, texts, 48)
    assert got[1] == want[1] and abs(got[0] - want[0]) <= 1e-5 * want[0]
    prompts = [TEXT[:n] for n in (10, 25, 60, 90)] + ["def add(a, b):", "x"]
    for newline in (False, True):
        expected = greedy(torch_model, torch_tok, prompts, 12, batch_size=4, stop_at_newline=newline)
        assert greedy(mlx_model, mlx_tok, prompts, 12, batch_size=4, stop_at_newline=newline) == expected
        assert any(expected)


@pytest.mark.slow
def test_evaluation_of_a_quantized_base_scores_both_sides_through_mlx(mlx_quantized: dict, q4_adapter: Path,
                                                                        code_dataset: Path, tmp_path: Path):
    from mlx_lm import convert

    from forge_assets.evaluation.scores import evaluate, perplexity
    from forge_assets.training import peft_backend
    from forge_assets.training.data import read_records

    q4 = mlx_quantized["q4"]
    ev = {"perplexity_samples": 8, "fim_cases": 4, "fim_max_new_tokens": 8, "codebleu_samples": 0, "humaneval": {"problems": 0}}
    scores = evaluate(q4, q4_adapter, code_dataset, seq_len=96, ev=ev, language="python", log=lambda *_: None)
    assert scores["scored_with"] == "mlx" and scores["fim_cases"] == 4
    for side in ("base", "adapter"):
        assert 1 < scores[f"{side}_perplexity"] < 1e6 and 0 <= scores[f"{side}_fim_edit_similarity"] <= 1
    assert scores["adapter_perplexity"] != scores["base_perplexity"]
    # the base's figure is the quantized model's: transformers on mlx-lm's dequantized copy (bf16 weights, fp32 compute)
    # gives the same perplexity within the bf16 activations' rounding
    convert(hf_path=str(q4), mlx_path=str(tmp_path / "dequantized"), dequantize=True)
    model, tokenizer = peft_backend.load_model(tmp_path / "dequantized")
    reference, _ = perplexity(model, tokenizer, [r["text"] for r in read_records(code_dataset, "test")], 96)
    assert abs(scores["base_perplexity"] / reference - 1) < 5e-3, (scores["base_perplexity"], reference)


# ------------------------------------------------------------------------------------------------ serving

@pytest.mark.slow
def test_mlx_lm_serves_the_quantized_base_with_its_adapter(mlx_quantized: dict, q4_adapter: Path, tmp_path: Path):
    from mlx_lm.generate import generate
    from mlx_lm.utils import load

    from forge_assets.deploy import mlx_target
    from forge_assets_tests.conftest import free_port
    from forge_assets_tests.test_deploy.test_mlx_target import mlx_servers

    q4 = mlx_quantized["q4"]
    record = mlx_target.start(q4, {"python": q4_adapter}, "127.0.0.1", free_port(), tmp_path / "state" / "server.log", timeout=60)
    try:
        # the view mlx-lm loads (rope_theta spelled out) keeps the quantization block and links the packed weights
        view = Path(record["model"])
        assert json.loads((view / "config.json").read_text())["quantization"]["bits"] == 4
        assert (view / "model.safetensors").resolve() == (q4 / "model.safetensors").resolve()
        answers = mlx_target.smoke(record, max_tokens=8)
        assert answers["python"]["completion"] and answers["python"]["chat"], answers
        config = mlx_target._model_config(q4)
        model, tokenizer = load(str(q4), adapter_path=record["adapters"]["python"]["path"], model_config=config)
        assert answers["python"]["completion"] == generate(model, tokenizer, "def add(a, b):", max_tokens=8)
        base_model, tokenizer = load(str(q4), model_config=config)
        assert answers["python"]["completion"] != generate(base_model, tokenizer, "def add(a, b):", max_tokens=8)
    finally:
        mlx_target.stop(record)
    assert mlx_servers() == []


# ------------------------------------------------------------------------------------------------ the asset chain

SERVED_TOL = 3e-2


@pytest.mark.slow
def test_a_quantized_base_goes_from_base_model_to_a_deployed_tag(mlx_quantized: dict, two_language_repo: Path, tmp_path: Path):
    """The 4-bit folder named as base_model, training.backend auto: trained by mlx on the quantized weights, scored by
    mlx-lm, exported (the base dequantized into a BF16 intermediate, F16 served, + the adapter's LoRA GGUF), deployed
    and answering; what the server runs computes what mlx-lm computes with the adapter."""
    import urllib.request

    from forge_assets_tests.conftest import free_port, materialized_chain, write_config

    q4 = mlx_quantized["q4"]
    port = free_port()
    cfg = write_config(tmp_path, [two_language_repo], base_model=str(q4), deploy={"port": port, "quantization": "F16"},
                       eval={"perplexity_samples": 4, "fim_cases": 0, "codebleu_samples": 0, "humaneval": {"problems": 0},
                             "gguf_windows": 2},
                       gates={"max_perplexity_ratio": 100.0, "fim_not_worse": False, "max_humaneval_regression_points": 100.0,
                              "max_quantization_loss_pct": 50.0},
                       training={"max_steps": 2, "backend": "auto"})
    root = tmp_path / "artifacts"
    with materialized_chain(cfg) as (result, meta):
        assert result.success
        assert meta("base_model")["quantization"] == "mlx affine 4-bit, group size 64"
        assert meta("adapter")["backend"] == "mlx"
        assert meta("eval_scores")["scored_with"] == "mlx"
        gguf = meta("gguf")
        assert gguf["served_as"] == "base+lora" and gguf["intermediate"] == "BF16"

        body = json.dumps({"model": "forge-python:latest", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert reply["choices"][0]["message"]["role"] == "assistant" and reply["usage"]["completion_tokens"] > 0

        served = json.loads((root / "gguf" / "python" / "promoted" / "served.json").read_text())
        lora = root / "gguf" / "python" / "promoted" / served["lora"]
        ids = hf_ids(q4)
        want = mlx_logits(q4, ids, root / "adapter" / "python" / "promoted")
        assert np.abs(llama_logits(Path(served["base_gguf"]), ids, lora=lora) - want).max() < SERVED_TOL
        assert np.abs(mlx_logits(q4, ids) - want).max() > SERVED_TOL  # not blind: the adapter moves them further


# ------------------------------------------------------------------------------------------------ MoE bases

MOE_TEXT = "def handle(request, store):\n    key = request['key']  # 42 clés ünïcode\n    return store.get(key)\n"
MOE_SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_heads": 4, "num_kv_heads": 2, "head_dim": 32,
             "moe_intermediate_size": 64, "num_experts": 8, "num_experts_per_tok": 2}
MOE_KINDS = {"qwen3_moe": {}, "qwen3_next": {"num_layers": 4, "shared_expert_intermediate_size": 64}}


def _convert(hf: Path, out: Path) -> Path:
    from mlx_lm import convert

    convert(hf_path=str(hf), mlx_path=str(out))
    return out


@pytest.fixture(scope="module", params=list(MOE_KINDS))
def mlx_moe(request, tmp_path_factory) -> dict[str, Path]:
    """{"hf": a random float32 MoE base (config.json with the keys mlx-lm reads: num_experts, rope_theta,
    partial_rotary_factor), "q4": mlx-lm's 4-bit conversion with bfloat16 scales, "plain": mlx-lm's unquantized save}."""
    from forge_assets.export.random_models import build_random_model

    root = tmp_path_factory.mktemp(f"mlx-{request.param}")
    hf = build_random_model(request.param, root / "hf", tokenizer="llama3", seed=4, **MOE_SHAPE, **MOE_KINDS[request.param])
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, **mlx_backend._model_config(hf)}, indent=2))
    return {"hf": hf, "q4": _quantize(hf, root / "q4", q_bits=4, q_group_size=64, dtype="bfloat16"),
            "plain": _convert(hf, root / "plain")}


def test_mlx_lm_stacked_quantized_experts_read_back_exactly(mlx_moe: dict):
    """Each `switch_mlp` tensor (packed [E, out, in·bits/32], scales/biases [E, out, groups]) reads as E per-expert
    matrices [out, in] equal to mx.dequantize of that expert with float32 scales; input widths (and so bit widths)
    come out right for expert, shared-expert and router projections, the routers at mlx-lm's 8 bits."""
    import mlx.core as mx

    from forge_assets.export.hf_to_gguf import _Quantized, _read_rows, read_index

    folder = mlx_moe["q4"]
    config = json.loads((folder / "config.json").read_text())
    weights = {}
    for f in folder.glob("*.safetensors"):
        weights.update(mx.load(str(f)))
    assert any(n.endswith(".mlp.switch_mlp.down_proj.weight") for n in weights)  # mlx-lm's layout, as mlx-community ships it
    sources = read_index(folder)
    assert not any(".switch_mlp." in n or n.endswith((".scales", ".biases")) for n in sources)
    quantized = {n: s for n, s in sources.items() if isinstance(s, _Quantized)}
    routers = {n for n in quantized if n.endswith(("mlp.gate.weight", "shared_expert_gate.weight"))}
    assert routers and {quantized[n].bits for n in routers} == {8}
    assert {s.bits for n, s in quantized.items() if n not in routers} == {4}
    hidden, moe_ff = config["hidden_size"], config["moe_intermediate_size"]
    for layer in range(config["num_hidden_layers"]):
        for e in range(config["num_experts"]):
            name = f"model.layers.{layer}.mlp.experts.{e}.{{}}_proj.weight"
            assert [sources[name.format(p)].shape for p in ("gate", "up", "down")] == [(moe_ff, hidden)] * 2 + [(hidden, moe_ff)]
        if config["model_type"] == "qwen3_next":
            shared = config["shared_expert_intermediate_size"]
            assert sources[f"model.layers.{layer}.mlp.shared_expert.down_proj.weight"].shape == (hidden, shared)
            assert sources[f"model.layers.{layer}.mlp.shared_expert_gate.weight"].shape == (1, hidden)
    checked = 0
    for name, stacked in weights.items():
        if ".switch_mlp." not in name or not name.endswith(".weight"):
            continue
        module = name.removesuffix(".weight")
        s, b = weights[f"{module}.scales"].astype(mx.float32), weights[f"{module}.biases"].astype(mx.float32)
        for e in range(stacked.shape[0]):
            src = sources[name.replace(".switch_mlp.", f".experts.{e}.")]
            with open(src.file, "rb") as fh:
                ours = _read_rows(src, fh, 0, src.rows)
            want = mx.dequantize(stacked[e], s[e], b[e], group_size=src.group_size, bits=src.bits)
            assert np.array_equal(ours, np.array(want)), (name, e)
            checked += 1
    assert checked == 3 * config["num_experts"] * config["num_hidden_layers"]


def test_gguf_of_an_mlx_quantized_moe_computes_what_mlx_lm_computes(mlx_moe: dict, tmp_path: Path):
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf

    q4 = mlx_moe["q4"]
    ids = hf_ids(q4, MOE_TEXT)
    want = mlx_logits(q4, ids)
    info = convert_hf_to_gguf(q4, tmp_path / "f32.gguf", "F32")
    reference = convert_hf_to_gguf(mlx_moe["hf"], tmp_path / "hf.gguf", "F32")
    assert (info["architecture"], info["tensors"]) == (reference["architecture"], reference["tensors"])
    assert info["tensor_types"] == {"F32": info["tensors"]}
    scale = np.abs(want).max()
    assert np.abs(llama_logits(tmp_path / "f32.gguf", ids) - want).max() / scale < F32_TOL
    # not blind: 4-bit quantizing moved the logits further than the tolerance (from the float32 model's GGUF)
    assert np.abs(llama_logits(tmp_path / "hf.gguf", ids) - want).max() / scale > 10 * F32_TOL
    assert convert_hf_to_gguf(q4, tmp_path / "auto.gguf", "auto")["outtype"] == "BF16"  # the scales' type


def test_gguf_of_an_mlx_lm_saved_moe_is_the_hf_checkpoints_gguf(mlx_moe: dict, tmp_path: Path):
    """mlx-lm's save (experts stacked as switch_mlp; Qwen3-Next's norms stored + 1 and conv1d as [C, K, 1]) converts
    to the very bytes the Hugging Face checkpoint converts to."""
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf, read_index

    plain = mlx_moe["plain"]
    names = json.loads((plain / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(".switch_mlp." in n for n in names) and set(read_index(plain)) == set(read_index(mlx_moe["hf"]))
    convert_hf_to_gguf(mlx_moe["hf"], tmp_path / "hf.gguf", "F32")
    convert_hf_to_gguf(plain, tmp_path / "mlx.gguf", "F32")
    assert (tmp_path / "hf.gguf").read_bytes() == (tmp_path / "mlx.gguf").read_bytes()


@pytest.mark.slow
def test_an_mlx_expert_lora_on_the_quantized_moe_folds_in_or_serves_as_a_lora_gguf(mlx_moe: dict, tmp_path: Path):
    """An mlx adapter trained on the 4-bit MoE base (LoRA on the SwitchLinear experts too): folded in per expert while
    converting, or as an F32 LoRA GGUF on the F32 base GGUF, it computes what mlx-lm computes with it."""
    from forge_assets.config import TrainingConfig
    from forge_assets.export.hf_to_gguf import convert_hf_to_gguf
    from forge_assets.export.lora_gguf import convert_lora_to_gguf

    q4 = mlx_moe["q4"]
    adapter = tmp_path / "adapter"
    text = MOE_TEXT * 3
    mlx_backend.train(q4, [text] * 16, [text] * 4, adapter,
                      TrainingConfig(backend="mlx", max_steps=2, batch_size=2, seq_len=128, rank=4), log=lambda *_: None)
    assert "mlp.switch_mlp.down_proj" in json.loads((adapter / "adapter_config.json").read_text())["lora_parameters"]["keys"]
    ids = hf_ids(q4, MOE_TEXT)
    want = mlx_logits(q4, ids, adapter)
    scale = np.abs(want).max()
    assert np.abs(mlx_logits(q4, ids) - want).max() / scale > 100 * F32_TOL  # the adapter moves the logits
    merged = convert_hf_to_gguf(q4, tmp_path / "merged.gguf", "F32", adapter=adapter)
    assert merged["lora_merged_tensors"] > 3 * MOE_SHAPE["num_experts"]  # every expert of the adapted projections
    assert np.abs(llama_logits(tmp_path / "merged.gguf", ids) - want).max() / scale < F32_TOL
    convert_hf_to_gguf(q4, tmp_path / "base.gguf", "F32")
    convert_lora_to_gguf(adapter, q4, tmp_path / "lora.gguf", "F32")
    assert np.abs(llama_logits(tmp_path / "base.gguf", ids, lora=tmp_path / "lora.gguf") - want).max() / scale < F32_TOL
