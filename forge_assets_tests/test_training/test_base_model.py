"""forge-tiny: tokenizer and model built offline; real HF model folders load through the same path."""

import json
from pathlib import Path

import pytest

from forge_assets.chat import SPECIAL_TOKENS
from forge_assets.training.base_model import BaseModelError, check_base_model, model_folder, resolve_base_model


def test_tiny_model_is_a_qwen2_hf_folder_with_chat_template(tiny_model: Path):
    info = check_base_model(tiny_model)
    assert info["model_type"] == "qwen2" and info["has_chat_template"]
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0  # K-quants apply


def test_tokenizer_has_chatml_and_fim_special_tokens_as_single_ids(tiny_model: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    for t in SPECIAL_TOKENS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token not in (tok.eos_token, "<|endoftext|>")
    text = "def f(x):\n    return x  # héllo\n"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE round-trips any text


def test_tokenizer_uses_qwen2_pre_tokenizer_split(tiny_model: Path):
    tj = json.loads((tiny_model / "tokenizer.json").read_text())
    seq = tj["pre_tokenizer"]["pretokenizers"]
    assert seq[0]["type"] == "Split" and "\\p{L}+|\\p{N}" in seq[0]["pattern"]["Regex"]
    assert seq[1]["type"] == "ByteLevel" and seq[1]["use_regex"] is False


def test_chat_template_renders_like_forge_chat(tiny_model: Path):
    from transformers import AutoTokenizer

    from forge_assets.chat import render_chat

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == render_chat(msgs)


def test_a_saved_model_folder_loads_through_the_real_path(tiny_model: Path, tmp_path: Path):
    # A "real" model is any save_pretrained folder; resolve it as a configured local path.
    assert resolve_base_model(str(tiny_model), tmp_path) == tiny_model.resolve()
    assert check_base_model(tiny_model)["architecture"] == "Qwen2ForCausalLM"
    ref = tmp_path / "art"
    ref.mkdir()
    (ref / "model.json").write_text(json.dumps({"path": str(tiny_model)}))
    assert model_folder(ref) == tiny_model and model_folder(tiny_model) == tiny_model


def test_bad_base_model_settings_are_clear(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="no config.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(BaseModelError, match="neither an existing folder nor a Hugging Face id"):
        resolve_base_model("./missing/model/dir", tmp_path)


def test_hub_id_fails_clearly_offline(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="cannot fetch `forge-test/no-such-model`"):
        resolve_base_model("forge-test/no-such-model", tmp_path)


@pytest.mark.slow
def test_held_out_files_are_stable_and_measured(tmp_path: Path):
    """forge-tiny keeps a content-chosen share of the corpus out of pretraining and reports its perplexity there."""
    import math

    from forge_assets.config import TinyModelConfig
    from forge_assets.training.base_model import build_tiny_model, held_out_split

    texts = [f"def f{i}(x):\n    return x * {i} + {i * i}\n\n\nclass C{i}:\n    value = {i}\n" * (1 + i % 3 * 8) for i in range(40)]
    kept, held = held_out_split(texts, 0.25)
    assert held and kept and sorted(kept + held) == sorted(texts) and not set(kept) & set(held)
    assert held_out_split(list(reversed(texts)), 0.25)[1] == list(reversed(held))  # by content, not by position
    assert held_out_split(texts[:9], 0.25) == (texts[:9], [])  # too few files to hold any out
    assert held_out_split(texts, 0.0) == (texts, [])
    cfg = TinyModelConfig(vocab_size=600, hidden_size=256, intermediate_size=256, num_layers=1, num_heads=4, num_kv_heads=2,
                          context_length=128, pretrain_steps=30, pretrain_seq_len=64, held_out_fraction=0.25)
    figures = build_tiny_model(texts, tmp_path / "m", cfg, log=lambda *_: None)
    assert figures["held_out_files"] == len(held) and figures["corpus_texts"] == len(kept)
    assert figures["held_out_tokens"] > 0 and math.isfinite(figures["held_out_perplexity"])
    # pretraining learned something that carries over to files it never saw: far below a uniform guess
    assert figures["held_out_perplexity"] < figures["vocab_size"] / 4
    assert figures["loss_last"] < figures["loss_first"] and figures["build_seconds"] > 0
    assert figures["pretrain_tokens"] == 30 * 8 * 64
    # bits per byte over the bytes actually scored: each held-out file's first context_length tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in held]
    assert any(len(i) > 128 for i in ids)  # some files are longer than the window
    scored = sum(len(tok.decode(i[:128]).encode()) for i in ids)
    expected = math.log(figures["held_out_perplexity"]) * figures["held_out_tokens"] / scored / math.log(2)
    assert figures["held_out_bits_per_byte"] == pytest.approx(expected, abs=2e-3)  # the figure and the perplexity it is checked from are both rounded
