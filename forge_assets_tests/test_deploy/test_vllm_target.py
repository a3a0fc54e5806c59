"""vLLM multi-LoRA plans: manifests and launch commands, and every adapter rule vLLM enforces (vLLM does not run here)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from forge_assets.deploy import vllm_target
from forge_assets.architectures import DEFAULT_LORA_MODULES

HIDDEN = 16


def make_base(folder: Path, arch: str = "Qwen2ForCausalLM", max_positions: int = 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "max_position_embeddings": max_positions}))
    return folder


def make_adapter(folder: Path, base: Path | str, r: int = 8, modules=list(DEFAULT_LORA_MODULES), weights: bool = True, **config) -> Path:
    """A PEFT LoRA folder: adapter_config.json (PEFT's keys, overridable) and small adapter_model.safetensors."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base), "r": r, "lora_alpha": 2 * r,
           "lora_dropout": 0.0, "target_modules": list(modules), "bias": "none", "lora_bias": False, "use_rslora": False,
           "use_dora": False, "modules_to_save": None, "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {},
           "fan_in_fan_out": False, "layers_to_transform": None, "alora_invocation_tokens": None, "layer_replication": None,
           "use_qalora": False, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    if weights:
        tensors = {}
        for m in modules:
            parent = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            if m in ("embed_tokens", "lm_head"):
                tensors[f"base_model.model.model.{m}.lora_embedding_A"] = np.zeros((r, 32), np.float32)
                tensors[f"base_model.model.model.{m}.lora_embedding_B"] = np.zeros((HIDDEN, r), np.float32)
                continue
            prefix = f"base_model.model.model.layers.0.{parent}.{m}"
            tensors[f"{prefix}.lora_A.weight"] = np.ones((r, HIDDEN), np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.ones((HIDDEN, r), np.float32)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "Qwen2.5-Coder-7B")


def test_plan_serves_several_adapters_with_one_command(tmp_path: Path, base: Path):
    adapters = {"python": make_adapter(tmp_path / "py", base, r=8),
                "rust": make_adapter(tmp_path / "rs", base, r=32, use_rslora=True),
                "go": make_adapter(tmp_path / "go", base, r=16, rank_pattern={"q_proj": 24})}
    p = vllm_target.plan(str(base), adapters, "0.0.0.0", 8000, context=2048)
    cmd = p["command"]
    assert cmd[:4] == ["vllm", "serve", str(base), "--enable-lora"]
    assert p["runs_here"] is False
    lora = cmd[cmd.index("--lora-modules") + 1: cmd.index("--max-lora-rank")]
    assert [json.loads(x) for x in lora] == [{"name": n, "path": str(a.resolve()), "base_model_name": str(base)}
                                             for n, a in adapters.items()]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32"  # the smallest allowed value holding rank 32
    assert cmd[cmd.index("--max-loras") + 1] == "3"
    assert cmd[cmd.index("--max-model-len") + 1] == "2048"
    assert cmd[-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    m = p["manifest"]
    assert m["lora_modules"] == [{"name": "python", "path": str(adapters["python"].resolve()), "base_model_name": str(base), "rank": 8},
                                 {"name": "rust", "path": str(adapters["rust"].resolve()), "base_model_name": str(base), "rank": 32},
                                 {"name": "go", "path": str(adapters["go"].resolve()), "base_model_name": str(base), "rank": 24}]
    assert m["max_lora_rank"] == 32 and m["max_loras"] == 3 and m["max_model_len"] == 2048
    assert m["architecture"] == "Qwen2ForCausalLM" and m["endpoint"] == "http://127.0.0.1:8000/v1"
    assert m["requests"]["rust"] == {"model": "rust"}
    line = vllm_target.command_line(p)
    assert shlex.split(line) == cmd


def test_plan_hub_id_base_without_context(tmp_path: Path):
    a = make_adapter(tmp_path / "py", "Qwen/Qwen2.5-Coder-1.5B", r=4)
    p = vllm_target.plan("Qwen/Qwen2.5-Coder-1.5B", {"python": a}, "127.0.0.1", 8001)
    assert "--max-model-len" not in p["command"]
    assert p["manifest"]["max_lora_rank"] == 8 and p["manifest"]["architecture"] is None
    assert vllm_target.command_line(p).startswith("vllm serve Qwen/Qwen2.5-Coder-1.5B --enable-lora --lora-modules '{")


@pytest.mark.parametrize("rank,expected", [(1, 1), (4, 8), (8, 8), (17, 32), (100, 128), (300, 320), (512, 512)])
def test_max_lora_rank_is_the_smallest_allowed_value(rank: int, expected: int):
    assert vllm_target.fitting_max_lora_rank(rank) == expected


def test_rslora_is_accepted(tmp_path: Path, base: Path):
    a = make_adapter(tmp_path / "rs", base, r=16, lora_alpha=32, use_rslora=True)
    assert vllm_target.validate_adapter(a, 16) == []


RULES = {  # adapter_config.json overrides (or how to build the adapter) -> words the one problem must contain
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    "dora": ({"use_dora": True}, "DoRA"),
    "bias": ({"bias": "lora_only"}, "biases"),
    "lora_bias": ({"lora_bias": True}, "biases"),
    "pissa": ({"init_lora_weights": "pissa_niter_4"}, "path_initial_model_for_weight_conversion"),
    "peft_type": ({"peft_type": "LOHA"}, "LOHA"),
    "alora": ({"alora_invocation_tokens": [1, 2]}, "aLoRA"),
    "qalora": ({"use_qalora": True}, "QALoRA"),
    "rank": ({"r": 32}, "greater than --max-lora-rank 16"),
    "rank_pattern": ({"rank_pattern": {"down_proj": 64}}, "--max-lora-rank 64"),
    "targets": ({"modules": [*list(DEFAULT_LORA_MODULES), "embed_tokens"]}, "embed_tokens"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_vllm_rule_fails_on_a_crafted_adapter(tmp_path: Path, base: Path, rule: str):
    overrides, words = RULES[rule]
    overrides = dict(overrides)
    modules = overrides.pop("modules", list(DEFAULT_LORA_MODULES))
    a = make_adapter(tmp_path / rule, base, r=overrides.pop("r", 8), modules=modules, **overrides)
    problems = vllm_target.validate_adapter(a, 16)
    assert len(problems) == 1, problems
    assert words in problems[0] and "Fix:" in problems[0]


def test_embeddings_are_fine_for_llama_but_not_qwen(tmp_path: Path):
    llama = make_base(tmp_path / "llama", arch="LlamaForCausalLM")
    a = make_adapter(tmp_path / "a", llama, modules=[*list(DEFAULT_LORA_MODULES), "lm_head"])
    assert vllm_target.validate_adapter(a, 16) == []
    [problem] = vllm_target.validate_adapter(a, 16, architecture="Qwen3ForCausalLM")
    assert "it targets ['lm_head']" in problem and "Fix: train with target modules among those" in problem
    assert "the registry's LoRA targets for qwen3 (forge_assets/architectures)" in problem
    assert "TARGET_MODULES" not in problem


def test_targets_come_from_the_registry(tmp_path: Path):
    from forge_assets.architectures import FAMILIES

    a = make_adapter(tmp_path / "a", "Qwen/Qwen2.5-Coder-1.5B", modules=[*list(DEFAULT_LORA_MODULES), "lm_head"])
    assert vllm_target.validate_adapter(a, 16) == []  # a base the registry cannot name: not checked, as before
    assert vllm_target.validate_adapter(a, 16, architecture="SomeNewForCausalLM") == []
    for family in FAMILIES.values():
        for arch in family.hf_architectures:
            problems = vllm_target.validate_adapter(a, 16, architecture=arch)
            assert (problems == []) == ({*DEFAULT_LORA_MODULES, "lm_head"} <= family.vllm_lora_modules), (arch, problems)
    assert not hasattr(vllm_target, "LORA_TARGETS")


def test_other_refusals(tmp_path: Path, base: Path):
    mlx = tmp_path / "mlx"
    mlx.mkdir()
    (mlx / "adapters.safetensors").write_bytes(b"")
    (mlx / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": {}}))
    [problem] = vllm_target.validate_adapter(mlx, 16)
    assert "mlx-lm adapter" in problem and "PEFT adapters only" in problem and "Fix:" in problem
    assert "not one of the values" in vllm_target.validate_adapter(make_adapter(tmp_path / "a", base), 24)[0]
    no_weights = make_adapter(tmp_path / "b", base, weights=False)
    assert "adapter_model.safetensors" in vllm_target.validate_adapter(no_weights, 16)[0]
    assert "not a folder" in vllm_target.validate_adapter(tmp_path / "missing", 16)[0]


def test_plan_lists_every_problem_of_every_adapter(tmp_path: Path, base: Path):
    good = make_adapter(tmp_path / "good", base, r=8)
    dora = make_adapter(tmp_path / "dora", base, r=8, use_dora=True, modules_to_save=["lm_head"])
    big = make_adapter(tmp_path / "big", base, r=64)
    with pytest.raises(ValueError) as err:
        vllm_target.plan(str(base), {"python": good, "rust": dora, "go": big}, "127.0.0.1", 8000, max_lora_rank=16,
                         context=8192)
    msg = str(err.value)
    assert not any(line.startswith("python") for line in msg.split("\n- "))  # the good adapter has no problem
    assert f"rust ({dora.resolve()}): it is a DoRA adapter" in msg
    assert f"rust ({dora.resolve()}): it saves whole modules" in msg
    assert f"go ({big.resolve()}): its rank 64 is greater than --max-lora-rank 16" in msg
    assert "context 8192 exceeds the base model's max_position_embeddings 4096" in msg
    assert msg.count("\n- ") == 4


def test_plan_refuses_a_name_clashing_with_the_base(tmp_path: Path, base: Path):
    a = make_adapter(tmp_path / "a", base)
    with pytest.raises(ValueError, match="differ from the base model's name"):
        vllm_target.plan(str(base), {str(base): a}, "127.0.0.1", 8000)
