"""adapter_files: the one reader of PEFT and mlx-lm adapter folders, on real folders written here (safetensors files
written by the safetensors library, configs as PEFT and mlx-lm write them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from forge_assets.export.adapter_files import (AdapterFileError, backend_of, pattern_value, peft_features, read_adapter, refused,
                                               tensor_table)

HIDDEN = 16


def peft_folder(folder: Path, r: int = 4, alpha: float = 8, weights: bool = True, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "base_model_name_or_path": str(folder.parent / "base"), "r": r, "lora_alpha": alpha,
           "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": False, "use_dora": False,
           "init_lora_weights": True, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    if weights:
        tensors = {}
        for m in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.0.self_attn.{m}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((r, HIDDEN), np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((HIDDEN, r), np.float16)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def mlx_folder(folder: Path, rank: int = 4, scale: float = 2.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 1, "model": "some/base",
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": ["self_attn.q_proj"]}}))
    save_file({"model.layers.0.self_attn.q_proj.lora_a": np.zeros((HIDDEN, rank), np.float32),
               "model.layers.0.self_attn.q_proj.lora_b": np.zeros((rank, HIDDEN), np.float32)},
              str(folder / "adapters.safetensors"))
    return folder


def test_a_peft_folder_is_read_without_loading_tensors(tmp_path: Path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    files = read_adapter(peft_folder(tmp_path / "a", r=4, alpha=8))
    assert files.backend == "peft" and files.folder == tmp_path / "a"
    assert files.weights == tmp_path / "a" / "adapter_model.safetensors"
    assert (files.rank, files.alpha, files.scale) == (4, 8.0, 2.0)
    assert files.target_modules == ("q_proj", "v_proj")
    assert files.base_model == str(base) and files.base_folder() == base
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert set(files.tensors) == {f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight"
                                  for m in ("q_proj", "v_proj") for ab in "AB"}
    assert files.tensors[name]["shape"] == [HIDDEN, 4] and files.tensors[name]["dtype"] == "F16"
    assert files.config["peft_type"] == "LORA"


def test_rslora_scale_and_a_base_that_is_no_local_folder(tmp_path: Path):
    files = read_adapter(peft_folder(tmp_path / "a", r=16, alpha=32, use_rslora=True, base_model_name_or_path="Qwen/x"))
    assert files.scale == pytest.approx(32 / math.sqrt(16)) and files.base_folder() is None


def test_an_mlx_folder_is_read(tmp_path: Path):
    files = read_adapter(mlx_folder(tmp_path / "m", rank=8, scale=20.0))
    assert files.backend == "mlx" and backend_of(tmp_path / "m") == "mlx"
    assert (files.rank, files.alpha, files.scale) == (8, None, 20.0)
    assert files.target_modules == ("self_attn.q_proj",) and files.base_model == "some/base"
    assert files.tensors["model.layers.0.self_attn.q_proj.lora_a"]["shape"] == [HIDDEN, 8]


def test_a_rank_that_is_no_positive_integer_reads_as_none(tmp_path: Path):
    folder = peft_folder(tmp_path / "a", r=4)
    (folder / "adapter_config.json").write_text(json.dumps({**json.loads((folder / "adapter_config.json").read_text()), "r": "four"}))
    files = read_adapter(folder)
    assert files.rank is None and files.scale is None  # the consumer's check says what is wrong


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no_config", "bad_json", "not_object", "bad_weights"])
def test_each_unreadable_folder_raises_one_error_naming_folder_problem_and_fix(tmp_path: Path, case: str):
    folder = tmp_path / "a"
    words = {"missing": "is not a folder", "file": "is not a folder", "empty": "neither a PEFT",
             "no_config": "adapter_config.json is missing", "bad_json": "not readable JSON",
             "not_object": "not a JSON object", "bad_weights": "not a readable safetensors file"}[case]
    if case == "file":
        folder.write_text("x")
    elif case == "empty":
        folder.mkdir()
    elif case != "missing":
        peft_folder(folder)
        if case == "no_config":
            (folder / "adapter_config.json").unlink()
        elif case == "bad_json":
            (folder / "adapter_config.json").write_text("{not json")
        elif case == "not_object":
            (folder / "adapter_config.json").write_text("[1, 2]")
        elif case == "bad_weights":
            (folder / "adapter_model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(AdapterFileError) as err:
        read_adapter(folder)
    assert isinstance(err.value, ValueError) and err.value.folder == folder
    message = str(err.value)
    assert message.startswith(f"{folder}: ") and words in message and "Fix: " in message


def test_a_crafted_header_is_refused_by_the_bounded_reader(tmp_path: Path):
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(AdapterFileError, match="more than safetensors' limit"):
        tensor_table(path)


def test_peft_features_name_what_is_beyond_a_plain_lora():
    plain = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "use_rslora": True, "init_lora_weights": True,
             "rank_pattern": {"q_proj": 4}}
    assert peft_features(plain) == {}
    features = peft_features({**plain, "peft_type": "loha", "use_dora": True, "modules_to_save": ["lm_head"],
                              "lora_bias": True, "init_lora_weights": "pissa_niter_4", "use_qalora": True})
    assert features == {"peft_type": "LOHA", "use_dora": True, "modules_to_save": ["lm_head"],
                        "bias": "bias: 'none', lora_bias: True", "init_lora_weights": "pissa_niter_4", "use_qalora": True}
    assert peft_features({**plain, "loftq_config": {"loftq_bits": 4}}) == {"init_lora_weights": "loftq"}


def test_pattern_value_matches_the_end_of_the_module_path():
    patterns = {"q_proj": 4, r"layers\.1\.mlp\.down_proj": 32}
    assert pattern_value(patterns, "model.layers.0.self_attn.q_proj") == 4
    assert pattern_value(patterns, "model.layers.1.mlp.down_proj") == 32
    assert pattern_value(patterns, "model.layers.0.mlp.down_proj", 8) == 8
    assert pattern_value(patterns, "model.layers.0.self_attn.xq_proj") is None


def test_refused_says_what_why_and_the_fix_for_each_refused_feature_only():
    features = peft_features({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "all", "use_dora": True,
                              "init_lora_weights": "olora", "use_qalora": True})
    problems = refused(features, ("bias", "init_lora_weights", "use_qalora"), "which X does not support", "or merge it")
    assert problems == [
        "it trains biases (bias: 'all', lora_bias: False), which X does not support. Fix: train with bias='none' and "
        "lora_bias=False, or merge it",
        "init_lora_weights='olora' changed the base weights, so the adapter only fits that changed base, which X does not "
        "support. Fix: save it with PEFT's path_initial_model_for_weight_conversion (Forge's pissa method does), or merge it",
        "it uses QALoRA, which X does not support. Fix: train a plain LoRA adapter, or merge it",
    ]  # use_dora is present but not refused here
