"""mlx-lm serving: PEFT adapters converted to mlx-lm's format (checked against PEFT's own logits), refusals with
fixes, and the real `mlx_lm server` started, smoke-tested on two adapters, checked to apply each one, and stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forge_assets.deploy import mlx_target, procs
from forge_assets.deploy.llama_server import DeployError
from forge_assets.training import mlx_backend
from forge_assets.architectures import DEFAULT_LORA_MODULES
from forge_assets_tests.conftest import free_port

pytestmark = pytest.mark.skipif(not mlx_backend.available(), reason="mlx[cpu] / mlx-lm not installed")

LOGIT_TOLERANCE = 1e-4  # measured: at most 4e-6 apart (float32, CPU) against an adapter effect of 1.6 to 6.3
PROMPT = "def handle_get(request, store):\n    key = request"


def make_peft(base: Path, out: Path, seed: int = 0, **lora) -> Path:
    """A PEFT LoRA adapter on base with non-zero B (init_lora_weights=False), saved to out."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": list(DEFAULT_LORA_MODULES), "init_lora_weights": False, **lora}
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(**settings))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("peft")
    return {"python": make_peft(tiny_model, folder / "python", seed=0),
            "rust": make_peft(tiny_model, folder / "rust", seed=1, r=8, lora_alpha=16, use_rslora=True)}


@pytest.fixture(scope="module")
def three_layer_base(tiny_model: Path, tmp_path_factory) -> Path:
    """A random 3-block Qwen2 with forge-tiny's tokenizer (for adapters on some blocks only)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("three") / "model"
    config = AutoConfig.from_pretrained(tiny_model)
    config.num_hidden_layers, config.layer_types = 3, ["full_attention"] * 3
    torch.manual_seed(2)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for f in tiny_model.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copy(f, out / f.name)
    return out


def logits(base: Path, peft_adapter: Path, mlx_adapter: Path):
    """(torch logits with the PEFT adapter, the same without it, mlx logits with the converted adapter) for PROMPT."""
    import mlx.core as mx
    import numpy as np
    import torch
    from mlx_lm.utils import load

    from forge_assets.training.peft_backend import load_model

    model, tokenizer = load_model(base, peft_adapter)
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        with_adapter = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        with model.disable_adapter():
            without = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    mlx_model, _ = load(str(base), adapter_path=str(mlx_adapter), model_config=mlx_target._model_config(base))
    return with_adapter, without, np.array(mlx_model(mx.array([ids]))[0].astype(mx.float32))


CASES = {
    "lora": {},
    "rslora": {"r": 8, "lora_alpha": 4, "use_rslora": True},
    "dora": {"use_dora": True},
    "patterns": {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"down_proj": 32}},
    "some_blocks": {"layers_to_transform": [1], "target_modules": ["q_proj", "v_proj", "down_proj"]},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_adapter_computes_what_peft_computes(tiny_model: Path, three_layer_base: Path, tmp_path: Path, case: str):
    import numpy as np

    base = three_layer_base if case == "some_blocks" else tiny_model
    peft = make_peft(base, tmp_path / "peft", **CASES[case])
    out = mlx_target.to_mlx_adapter(peft, base, tmp_path / "mlx")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == ("dora" if case == "dora" else "lora")
    with_adapter, without, mlx_logits = logits(base, peft, out)
    assert np.abs(mlx_logits - with_adapter).max() < LOGIT_TOLERANCE
    assert np.abs(with_adapter - without).max() > 100 * LOGIT_TOLERANCE  # the adapter changes the output a lot
    assert (mlx_logits.argmax(-1) == with_adapter.argmax(-1)).all()
    if case == "some_blocks":  # LoRA on the last 2 blocks; block 2's layers get zero (no-op) weights
        assert config["num_layers"] == 2 and config["lora_parameters"]["keys"] == ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"]
    if case == "patterns":  # one rank for all (q_proj's 8; the others zero-padded), alpha 32 folded into down_proj
        assert config["lora_parameters"]["rank"] == 8 and config["lora_parameters"]["scale"] == 2.0
    if case == "rslora":
        assert config["lora_parameters"]["scale"] == pytest.approx(4 / 8 ** 0.5)


def test_mlx_adapters_are_copied_and_checked(tiny_model: Path, adapters: dict, tmp_path: Path):
    converted = mlx_target.to_mlx_adapter(adapters["python"], tiny_model, tmp_path / "converted")
    copied = mlx_target.to_mlx_adapter(converted, tiny_model, tmp_path / "copied")
    assert (copied / "adapters.safetensors").read_bytes() == (converted / "adapters.safetensors").read_bytes()
    config = json.loads((copied / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 2  # the weights are rank 4
    (copied / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(mlx_target.MlxAdapterError, match="does not match model parameter shape.*Fix:"):
        mlx_target.to_mlx_adapter(copied, tiny_model, tmp_path / "again")
    assert not (tmp_path / "again").exists()


REFUSED = {  # adapter_config.json overrides -> words in the error
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    "bias": ({"bias": "all"}, "trains biases"),
    "pissa": ({"init_lora_weights": "pissa_niter_4"}, "path_initial_model_for_weight_conversion"),
    "loha": ({"peft_type": "LOHA"}, "PEFT LOHA adapter"),
    "alora": ({"alora_invocation_tokens": [3]}, "aLoRA"),
    "qalora": ({"use_qalora": True}, "QALoRA"),
}


@pytest.mark.parametrize("rule", sorted(REFUSED))
def test_refuses_what_mlx_lm_cannot_load(tiny_model: Path, adapters: dict, tmp_path: Path, rule: str):
    overrides, words = REFUSED[rule]
    bad = tmp_path / rule
    shutil.copytree(adapters["python"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, **overrides}))
    with pytest.raises(mlx_target.MlxAdapterError) as err:
        mlx_target.to_mlx_adapter(bad, tiny_model, tmp_path / "out")
    assert words in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_refuses_embedding_lora_and_foreign_layers(tiny_model: Path, adapters: dict, tmp_path: Path):
    from safetensors.numpy import load_file, save_file

    import numpy as np

    emb = tmp_path / "emb"
    shutil.copytree(adapters["python"], emb)
    tensors = load_file(str(emb / "adapter_model.safetensors"))
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = np.zeros((4, 600), np.float32)
    save_file(tensors, str(emb / "adapter_model.safetensors"))
    with pytest.raises(mlx_target.MlxAdapterError, match="LoRA on embeddings.*Fix:"):
        mlx_target.to_mlx_adapter(emb, tiny_model, tmp_path / "out")
    foreign = tmp_path / "foreign"
    shutil.copytree(adapters["python"], foreign)
    tensors = {k.replace("layers.0.", "layers.7."): v for k, v in load_file(str(foreign / "adapter_model.safetensors")).items()}
    save_file(tensors, str(foreign / "adapter_model.safetensors"))
    with pytest.raises(mlx_target.MlxAdapterError, match="model.layers.7.*has no linear layer.*Fix:"):
        mlx_target.to_mlx_adapter(foreign, tiny_model, tmp_path / "out")


def mlx_servers() -> list:
    """Live mlx-lm servers started by this test process."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "mlx_lm" in child.cmdline():
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_serves_two_adapters_for_real(tiny_model: Path, adapters: dict, tmp_path: Path):
    from mlx_lm.generate import generate
    from mlx_lm.utils import load

    log = tmp_path / "state" / "server.log"
    record = mlx_target.start(tiny_model, adapters, "127.0.0.1", free_port(), log, timeout=60)
    try:
        assert procs.alive(record["process"]) and record["default_adapter"] == "python"
        # transformers 5 wrote rope_parameters, so the server loads a view of the base with rope_theta spelled out
        assert record["model"] == str((tmp_path / "state" / "mlx-base").resolve())
        assert json.loads((Path(record["model"]) / "config.json").read_text())["rope_theta"] == 10000.0
        h = mlx_target.health(record)
        assert h["ok"] and h["models"] == [record["model"]], h
        answers = mlx_target.smoke(record, max_tokens=8)
        assert list(answers) == ["rust", "python"]  # the default adapter last: the server ends with it loaded
        assert all(a["completion"] and a["chat"] for a in answers.values()), answers
        # the server's greedy completion is the one the adapter gives in-process, and not the base model's
        config = mlx_target._model_config(tiny_model)
        base_model, tokenizer = load(str(tiny_model), model_config=config)
        base_text = generate(base_model, tokenizer, "def add(a, b):", max_tokens=8)
        for name, served in record["adapters"].items():
            model, tokenizer = load(str(tiny_model), adapter_path=served["path"], model_config=config)
            assert answers[name]["completion"] == generate(model, tokenizer, "def add(a, b):", max_tokens=8)
            assert answers[name]["completion"] != base_text
        assert answers["python"]["completion"] != answers["rust"]["completion"]
    finally:
        message = mlx_target.stop(record)
    assert message.startswith("stopped mlx-lm server")
    assert mlx_servers() == []
    assert not mlx_target.health(record)["ok"]
    assert "is not running" in mlx_target.stop(record)


@pytest.mark.slow
def test_start_failures_say_what_failed(tiny_model: Path, adapters: dict, tmp_path: Path, monkeypatch):
    import socket

    with socket.socket() as s:  # a busy port: refused before anything starts
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(DeployError, match="in use.*Fix:"):
            mlx_target.start(tiny_model, adapters["python"], "127.0.0.1", s.getsockname()[1], tmp_path / "a.log")
    bad = mlx_target.to_mlx_adapter(adapters["python"], tiny_model, tmp_path / "bad")
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "lora_parameters": {**config["lora_parameters"], "rank": 2}}))
    with pytest.raises(DeployError, match="cannot serve adapter 'python'.*does not match model parameter shape.*more.*Fix:.*Nothing was started"):
        mlx_target.start(tiny_model, {"python": bad}, "127.0.0.1", free_port(), tmp_path / "b.log")
    # an adapter that passes Forge's check but that the server cannot load: the server is stopped and its log named
    monkeypatch.setattr(mlx_target, "verify_mlx_adapter", lambda *a: None)
    log = tmp_path / "c.log"
    with pytest.raises(DeployError, match=r"could not load the model and adapter.*It was stopped.*See .*c\.log"):
        mlx_target.start(tiny_model, {"python": bad}, "127.0.0.1", free_port(), log, timeout=60)
    assert "does not match model parameter shape" in log.read_text()
    assert mlx_servers() == []
