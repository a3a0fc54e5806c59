"""mlx-lm backend: every TrainingConfig key means what it means for PEFT, on the tiny model, for real.

mlx[cpu] on Linux ships a reference BLAS, so every run here is kept to a few hundred tokens.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge_assets.architectures import DEFAULT_LORA_MODULES
from forge_assets.config import TrainingConfig
from forge_assets.training import mlx_backend
from forge_assets.training.data import read_texts

pytestmark = pytest.mark.skipif(not mlx_backend.available(), reason="mlx[cpu] / mlx-lm not installed")

REPO = Path(__file__).resolve().parents[2]
BASE = dict(backend="mlx", rank=4, alpha=8, learning_rate=0.003, seq_len=128, checkpoint_every=None)


def quiet(*_):
    pass


def cfg(**kw) -> TrainingConfig:
    return TrainingConfig(**{**BASE, **kw})


@pytest.fixture(scope="module")
def texts(tiny_dataset: Path) -> tuple[list[str], list[str]]:
    """A small train mix (two code files and the FIM sample: 5 fitted examples at seq_len 128) and the valid split."""
    train = read_texts(tiny_dataset, "train")
    return [train[0], train[1], train[-1]], read_texts(tiny_dataset, "valid")


@pytest.fixture(scope="module")
def hf(tiny_model: Path):
    """The base model and tokenizer in transformers: an independent reference for the masked loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


def masked_loss(model, examples) -> float:
    """Token-weighted cross-entropy over labels != -100, each example on its own (transformers, torch)."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e.ids])).logits[0, :-1].float()
            labels = torch.tensor(e.labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            n += int((labels != -100).sum())
    return total / n


def adapter_weights(folder: Path) -> dict:
    import mlx.core as mx

    return {k: v for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


def same_weights(a: dict, b: dict, tol: float = 0.0) -> bool:
    import mlx.core as mx

    return a.keys() == b.keys() and all(mx.abs(a[k] - b[k]).max().item() <= tol for k in a)


@pytest.mark.slow
def test_loss_masking_trains_exactly_the_trainable_tokens(tiny_model: Path, texts, hf, tmp_path: Path):
    from forge_assets.training.samples import encode

    train, valid = texts
    model, tok = hf
    got = {}
    lines: list[str] = []
    for on in ("completions", "all"):
        enc = encode(train, tok, 128, on)
        # one batch holds every example, so step 1 sees them all; warmup makes its rate 0, so nothing moves
        result = mlx_backend.train(tiny_model, train, valid, tmp_path / on, cfg(train_on=on, batch_size=8, warmup_ratio=0.9),
                                   log=lines.append)
        assert result["trained_tokens"] == sum(e.trained for e in enc.examples)
        assert result["steps"] == 1 and result["epochs_run"] == 1.0 and result["lr_curve"] == [[1, 0.0]]
        assert [s for s, _ in result["loss_curve"]] == [1]
        assert result["loss_curve"][0][1] == pytest.approx(masked_loss(model, enc.examples), rel=1e-3)
        assert result["valid_curve"][0][1] == pytest.approx(masked_loss(model, encode(valid, tok, 128, on).examples), rel=1e-3)
        assert result["packed_rows"] == len(enc.examples) and result["train_samples"] == len(train)
        assert result["token_coverage"] > 0.9 and result["fim_trimmed"] == 1 and result["samples_dropped"] == {}
        assert result["backend"] == "mlx" and result["resumed_from"] is None and result["trained_tokens_per_second"] > 0
        got[on] = result
    assert got["all"]["trained_tokens"] > got["completions"]["trained_tokens"]
    assert any("1 FIM contexts trimmed" in line for line in lines)  # the fitting summary is logged, as by PEFT
    assert got["all"]["loss_curve"][0][1] != got["completions"]["loss_curve"][0][1]


def test_gradient_accumulation_steps_epochs_and_schedule(tiny_model: Path, texts, tmp_path: Path):
    from transformers import AutoTokenizer

    from forge_assets.training.samples import encode

    train, _ = texts
    examples = encode(train, AutoTokenizer.from_pretrained(tiny_model, local_files_only=True), 128, "completions").examples
    n_batches = math.ceil(len(examples) / 2)
    assert n_batches % 2 == 1  # so the last step of every epoch holds a single micro-batch
    lines: list[str] = []
    result = mlx_backend.train(tiny_model, train, [], tmp_path / "a", cfg(batch_size=2, gradient_accumulation=2, epochs=2,
                                                                          warmup_ratio=0.25, learning_rate=0.01), log=lines.append)
    per_epoch = math.ceil(n_batches / 2)
    assert result["steps"] == 2 * per_epoch == 4 and result["gradient_accumulation"] == 2
    assert [s for s, _ in result["loss_curve"]] == [1, 2, 3, 4] and result["epochs_run"] == 2.0
    assert result["trained_tokens"] == 2 * sum(e.trained for e in examples)  # every example exactly once per epoch
    lrs = [lr for _, lr in result["lr_curve"]]  # warmup 1 step from 0, then cosine down from the peak
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.01) and lrs[1] > lrs[2] > lrs[3] > 0
    assert result["valid_curve"] == [] and any("no validation" in line for line in lines)
    assert any(line.startswith("step 1/4: loss ") for line in lines)
    lengths = sorted((len(e.ids) for e in examples), reverse=True)
    padding = sum(lengths) / sum(len(lengths[i:i + 2]) * lengths[i] for i in range(0, len(lengths), 2))
    assert result["packing_efficiency"] == pytest.approx(padding, abs=1e-3)  # sorted by length: batches pad little


def test_eval_every_gives_one_valid_loss_per_interval_and_none_twice(tiny_model: Path, texts, tmp_path: Path):
    train, valid = texts
    lines: list[str] = []
    result = mlx_backend.train(tiny_model, train, valid, tmp_path / "a", cfg(batch_size=2, max_steps=4, eval_every=2), log=lines.append)
    assert [s for s, _ in result["valid_curve"]] == [2, 4]
    assert all(math.isfinite(v) for _, v in result["valid_curve"])
    assert sum("valid loss" in line for line in lines) == 2


@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "qlora"])
def test_methods_train_and_merge_into_a_transformers_model(method: str, tiny_model: Path, texts, tmp_path: Path):
    import mlx.core as mx
    import numpy as np
    import torch
    from mlx_lm.utils import load
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    train, _ = texts
    result = mlx_backend.train(tiny_model, train, [], tmp_path / "adapter", cfg(method=method, batch_size=2, max_steps=2,
                                                                                warmup_ratio=0, learning_rate=0.02), log=quiet)
    assert result["method"] == method and result["steps"] == 2 and all(math.isfinite(x) for _, x in result["loss_curve"])
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    params = conf["lora_parameters"]
    assert conf["fine_tune_type"] == ("dora" if method == "dora" else "lora") and conf["num_layers"] == 1
    assert params["rank"] == 4 and params["scale"] == pytest.approx(8 / 2 if method == "rslora" else 8 / 4)
    assert sorted(k.rsplit(".", 1)[-1] for k in params["keys"]) == sorted(DEFAULT_LORA_MODULES)
    assert (conf["base_quantization"] is not None) == (method == "qlora")

    mlx_backend.merge(tiny_model, tmp_path / "adapter", tmp_path / "fused")
    with safe_open(tmp_path / "fused" / "model.safetensors", framework="pt") as fh:
        names = list(fh.keys())
        q = fh.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert names and not any("lora" in n or "scales" in n for n in names) and q.dtype == torch.float32
    with safe_open(tiny_model / "model.safetensors", framework="pt") as fh:
        q0 = fh.get_tensor("model.layers.0.self_attn.q_proj.weight")
    delta = (q - q0).abs().max().item()
    assert 0 < delta < 0.5 * q0.abs().max().item()  # the full-precision base plus the update (qlora too)
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "fused", local_files_only=True).eval()
    ids = list(range(10, 40))
    with torch.no_grad():
        ours = fused(torch.tensor([ids])).logits[0].numpy()
    mlx_model, _ = load(str(tiny_model), adapter_path=str(tmp_path / "adapter"), model_config=mlx_backend._model_config(tiny_model))
    theirs = np.array(mlx_model(mx.array([ids]))[0])
    assert np.abs(ours - theirs).max() < 1e-3  # merged HF model == base + adapter in mlx


def test_pissa_is_peft_only(tiny_model: Path, texts, tmp_path: Path):
    with pytest.raises(ValueError, match="PEFT-only"):
        mlx_backend.train(tiny_model, texts[0], [], tmp_path / "a", TrainingConfig(method="pissa"), log=quiet)


def test_precision_and_gradient_checkpointing(tiny_model: Path, texts, tmp_path: Path):
    train, _ = texts
    run = dict(batch_size=2, max_steps=2, warmup_ratio=0, learning_rate=0.02)
    plain = mlx_backend.train(tiny_model, train, [], tmp_path / "a", cfg(**run), log=quiet)
    ckpt = mlx_backend.train(tiny_model, train, [], tmp_path / "b", cfg(gradient_checkpointing=True, precision="fp32", **run), log=quiet)
    assert plain["precision"] == ckpt["precision"] == "fp32"  # auto: the tiny model's own dtype
    for (_, a), (_, b) in zip(plain["loss_curve"], ckpt["loss_curve"]):
        assert b == pytest.approx(a, rel=1e-4)  # recomputing activations changes memory, not the maths
    bf16 = mlx_backend.train(tiny_model, train, [], tmp_path / "c", cfg(precision="bf16", **run), log=quiet)
    assert bf16["precision"] == "bf16"
    assert bf16["loss_curve"][0][1] == pytest.approx(plain["loss_curve"][0][1], rel=0.02)
    assert all(str(w.dtype) == "mlx.core.float32" for w in adapter_weights(tmp_path / "c").values())  # fp32 master weights


CHILD = """
import json, sys, time
from pathlib import Path
from forge_assets.architectures import DEFAULT_LORA_MODULES
from forge_assets.config import TrainingConfig
from forge_assets.training import mlx_backend
a = json.loads(sys.argv[1])
def log(msg):
    if "valid loss" in msg:
        time.sleep(0.3)  # slow every step down, so the parent's SIGKILL lands mid-run
mlx_backend.train(Path(a["base"]), a["train"], a["valid"], Path(a["out"]), TrainingConfig(**a["cfg"]), log=log,
                  checkpoints=Path(a["ck"]))
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tiny_model: Path, texts, tmp_path: Path):
    train, valid = texts
    settings = {**BASE, "batch_size": 1, "max_steps": 8, "checkpoint_every": 2, "eval_every": 1, "dropout": 0.1}
    whole = mlx_backend.train(tiny_model, train, valid, tmp_path / "whole", TrainingConfig(**settings), log=quiet,
                              checkpoints=tmp_path / "ck-whole")
    assert sorted(p.name for p in (tmp_path / "ck-whole").iterdir()) == ["step-4", "step-6"]  # the newest two

    ck = tmp_path / "ck"
    args = json.dumps({"base": str(tiny_model), "train": train, "valid": valid, "out": str(tmp_path / "killed"),
                       "cfg": settings, "ck": str(ck)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, args], cwd=REPO, env=env)
    deadline = time.time() + 120
    while not (ck / "step-6").is_dir() and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert (ck / "step-6" / "state.json").is_file() and not (tmp_path / "killed" / "adapters.safetensors").exists()
    (ck / ".tmp-999-step-7").mkdir()  # a write the kill interrupted

    saved = json.loads((ck / "step-6" / "state.json").read_text())
    lines: list[str] = []
    resumed = mlx_backend.train(tiny_model, train, valid, tmp_path / "resumed", TrainingConfig(**settings), log=lines.append,
                                checkpoints=ck)
    assert resumed["resumed_from"] == 6 and "resuming from checkpoint step 6" in lines and resumed["steps"] == 8
    assert [s for s, _ in resumed["loss_curve"]] == list(range(1, 9))
    assert resumed["loss_curve"][:6] == saved["loss_curve"] == whole["loss_curve"][:6]
    for (_, a), (_, b) in zip(whole["loss_curve"][6:], resumed["loss_curve"][6:]):
        assert b == pytest.approx(a, rel=1e-3)  # same batches, dropout masks, weights and Adam moments: same steps 7-8
    assert [s for s, _ in resumed["valid_curve"]] == list(range(1, 9))
    assert resumed["trained_tokens"] == whole["trained_tokens"]
    assert same_weights(adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "resumed"), tol=1e-5)
    assert not any(p.name.startswith(".tmp-") for p in ck.iterdir())

    other = mlx_backend.train(tiny_model, train, [], tmp_path / "other", TrainingConfig(**{**settings, "max_steps": 2}), log=quiet,
                              checkpoints=ck)
    assert other["resumed_from"] is None and [s for s, _ in other["loss_curve"]] == [1, 2]  # another run's checkpoints: ignored


def test_init_adapter_continues_the_previous_weights(tiny_model: Path, texts, tmp_path: Path):
    train, valid = texts
    run = dict(batch_size=2, max_steps=2, warmup_ratio=0, learning_rate=0.02)
    first = mlx_backend.train(tiny_model, train, valid, tmp_path / "first", cfg(**run), log=quiet)
    # rank 8 asked, but a continued adapter keeps its own rank and scale; lr 0 on step 1 (warmup) keeps its weights
    lines: list[str] = []
    cont = mlx_backend.train(tiny_model, train, valid, tmp_path / "cont", cfg(rank=8, batch_size=2, max_steps=1, warmup_ratio=0.9),
                             log=lines.append, init_adapter=tmp_path / "first")
    assert any("continuing adapter" in line for line in lines)
    assert same_weights(adapter_weights(tmp_path / "first"), adapter_weights(tmp_path / "cont"))
    assert json.loads((tmp_path / "cont" / "adapter_config.json").read_text())["lora_parameters"]["rank"] == 4
    assert cont["trainable_parameters"] == first["trainable_parameters"]
    assert cont["valid_curve"][-1][1] == pytest.approx(first["valid_curve"][-1][1], rel=1e-5)
    fresh = mlx_backend.train(tiny_model, train, valid, tmp_path / "fresh", cfg(batch_size=2, max_steps=1, warmup_ratio=0.9), log=quiet)
    assert cont["loss_curve"][0][1] < fresh["loss_curve"][0][1]  # same seed and batch; only the starting weights differ
