"""GGUF export: the file llama.cpp loads computes the same logits as transformers; Q8_0 loads and generates."""

from pathlib import Path

import numpy as np
import pytest

from forge_assets.export.gguf_export import ExportError, convert_to_gguf, gguf_summary, load_llama, quantize, smoke_generate

# F32 GGUF vs F32 PyTorch on the same prompt: llama.cpp's kernels differ only in summation order.
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def f32_gguf(tiny_model: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "model-F32.gguf"
    info = convert_to_gguf(tiny_model, out, "F32")
    assert info["tensors"] > 0 and info["merges"] > 0
    return out


def test_gguf_metadata_declares_qwen2_tokenizer_and_template(f32_gguf: Path):
    s = gguf_summary(f32_gguf)
    assert s["architecture"] == "qwen2" and s["tokenizer_pre"] == "qwen2" and s["has_chat_template"]
    assert set(s["tensor_types"]) == {"F32"}


def test_llama_cpp_tokenizes_and_scores_like_transformers(tiny_model: Path, f32_gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "<|fim_prefix|>def handle_get(request, store):\n    key = request[\"key\"]\n<|fim_suffix|>"
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, local_files_only=True)
    hf_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    llm = load_llama(f32_gguf, logits_all=True)
    cpp_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert cpp_ids == hf_ids
    with torch.no_grad():
        ref = model(torch.tensor([hf_ids])).logits[0].numpy()
    llm.eval(cpp_ids)
    got = np.array(llm.scores[: len(cpp_ids)])
    assert np.abs(ref - got).max() < LOGIT_TOLERANCE
    assert (ref.argmax(-1) == got.argmax(-1)).all()


def test_q8_0_quantization_loads_and_generates(f32_gguf: Path, tmp_path: Path):
    q8 = tmp_path / "model-Q8_0.gguf"
    quantize(f32_gguf, q8, "Q8_0")
    s = gguf_summary(q8)
    assert s["tensor_types"].get("Q8_0", 0) > 0 and s["bytes"] < f32_gguf.stat().st_size / 2
    out = smoke_generate(q8, "def handle_", max_tokens=8)
    assert out["completion_tokens"] > 0 and isinstance(out["completion"], str)


def test_k_quant_applies_to_256_wide_tensors(f32_gguf: Path, tmp_path: Path):
    q4 = tmp_path / "model-Q4_K_M.gguf"
    quantize(f32_gguf, q4, "Q4_K_M")
    types = gguf_summary(q4)["tensor_types"]
    assert any(t.startswith(("Q4_K", "Q6_K", "Q5_K")) for t in types)


def test_quantizing_a_missing_file_fails_clearly(tmp_path: Path):
    with pytest.raises(ExportError, match="could not quantize"):
        quantize(tmp_path / "missing.gguf", tmp_path / "out.gguf")
