"""LoRA adapters: PEFT and mlx-lm train for real on the tiny model, and merge into plain HF folders."""

import json
from pathlib import Path

import pytest

from forge_assets.config import TrainingConfig
from forge_assets.training import mlx_backend
from forge_assets.training.adapter import adapter_backend, choose_backend, merge_adapter, train_adapter

CFG = dict(rank=4, alpha=8, learning_rate=0.005, max_steps=8, batch_size=4, seq_len=96)


@pytest.mark.slow
def test_peft_adapter_trains_lowers_loss_and_merges(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    result = train_adapter(tiny_model, tiny_dataset, tmp_path / "adapter", TrainingConfig(backend="peft", **CFG), log=lambda *_: None)
    assert result["backend"] == "peft" and result["steps"] == 8
    curve = [loss for _, loss in result["loss_curve"]]
    assert len(curve) == 8 and curve[-1] < curve[0]
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and "q_proj" in cfg["target_modules"]
    assert adapter_backend(tmp_path / "adapter") == "peft"
    merge_adapter(tiny_model, tmp_path / "adapter", tmp_path / "merged")
    from safetensors import safe_open

    with safe_open(tmp_path / "merged" / "model.safetensors", framework="pt") as fh:
        names = list(fh.keys())
    assert names and not any("lora" in n for n in names)


@pytest.mark.skipif(not mlx_backend.available(), reason="mlx[cpu] / mlx-lm not installed")
def test_mlx_adapter_trains_and_fuses(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    result = train_adapter(tiny_model, tiny_dataset, tmp_path / "adapter", TrainingConfig(backend="mlx", **{**CFG, "max_steps": 4}), log=lambda *_: None)
    assert result["backend"] == "mlx" and len(result["loss_curve"]) == 4
    assert (tmp_path / "adapter" / "adapters.safetensors").is_file()
    assert adapter_backend(tmp_path / "adapter") == "mlx"
    merge_adapter(tiny_model, tmp_path / "adapter", tmp_path / "fused")
    cfg = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "fused", local_files_only=True).config.hidden_size == 256


def test_backend_choice():
    assert choose_backend("peft") == "peft"
    assert choose_backend("auto") in ("peft", "mlx")


def test_empty_train_split_is_a_clear_error(tiny_model: Path, tmp_path: Path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no samples"):
        train_adapter(tiny_model, tmp_path / "ds", tmp_path / "ad", TrainingConfig(backend="peft", **CFG))


@pytest.mark.slow
def test_peft_trains_one_epoch_by_default_over_packed_masked_samples(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    cfg = {k: v for k, v in CFG.items() if k != "max_steps"}
    result = train_adapter(tiny_model, tiny_dataset, tmp_path / "a", TrainingConfig(backend="peft", **cfg), log=lambda *_: None)
    rows = result["packed_rows"]
    assert result["steps"] == -(-rows // 4) and result["epochs_run"] == 1.0  # every packed row once
    assert result["packing_efficiency"] > 0.8 and result["token_coverage"] > 0.9
    everything = train_adapter(tiny_model, tiny_dataset, tmp_path / "b", TrainingConfig(backend="peft", train_on="all", **cfg),
                               log=lambda *_: None)
    assert everything["trained_tokens"] > result["trained_tokens"]  # heads and FIM context are context under `completions`
