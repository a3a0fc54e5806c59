"""PEFT training settings, methods, checkpoints and incremental training, for real on forge-tiny (CPU)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from forge_assets.config import ForgeConfig, TrainingConfig
from forge_assets.training import peft_backend
from forge_assets.training.adapter import incremental_texts, merge_adapter, train_adapter
from forge_assets.training.curves import text_chart, thin
from forge_assets.training.data import read_texts

CFG = dict(backend="peft", rank=4, alpha=8, learning_rate=0.005, batch_size=2, seq_len=96)
QUIET = dict(log=lambda *_: None)


def _train(tiny_model, texts, out, valid=(), **kw):
    return peft_backend.train(tiny_model, texts, list(valid), out, TrainingConfig(**{**CFG, **kw}), **QUIET)


@pytest.mark.slow
def test_gradient_accumulation_counts_optimizer_steps(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    texts = read_texts(tiny_dataset, "train")
    one = _train(tiny_model, texts, tmp_path / "a", gradient_accumulation=1)
    two = _train(tiny_model, texts, tmp_path / "b", gradient_accumulation=2)
    batches = -(-one["packed_rows"] // 2)
    assert one["steps"] == batches and two["steps"] == -(-batches // 2)
    assert two["gradient_accumulation"] == 2 and len(two["loss_curve"]) == two["steps"]
    assert two["trained_tokens"] == one["trained_tokens"]  # the same epoch, fewer optimizer steps


@pytest.mark.slow
def test_warmup_then_cosine_or_constant_schedule(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    texts = read_texts(tiny_dataset, "train")
    cos = _train(tiny_model, texts, tmp_path / "c", max_steps=10, warmup_ratio=0.3)
    lrs = [lr for _, lr in cos["lr_curve"]]
    assert lrs[0] < lrs[2] <= 0.005 + 1e-9  # linear warmup over 3 steps
    assert max(lrs) == pytest.approx(0.005, rel=0.05) and lrs[-1] < 0.1 * 0.005  # cosine decays towards 0
    const = _train(tiny_model, texts, tmp_path / "k", max_steps=6, warmup_ratio=0.0, lr_schedule="constant")
    assert {round(lr, 9) for _, lr in const["lr_curve"]} == {0.005}


def test_validation_loss_every_n_steps_and_at_the_end(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    res = _train(tiny_model, read_texts(tiny_dataset, "train"), tmp_path / "v", valid=read_texts(tiny_dataset, "valid"),
                 max_steps=6, eval_every=2)
    assert [s for s, _ in res["valid_curve"]] == [2, 4, 6]
    assert all(v > 0 for _, v in res["valid_curve"])


def test_the_log_says_what_fitting_split_trimmed_and_left_out(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    lines: list[str] = []
    cfg = TrainingConfig(**{**CFG, "max_steps": 1})
    peft_backend.train(tiny_model, read_texts(tiny_dataset, "train"), [], tmp_path / "l", cfg, log=lines.append)
    fitted = [m for m in lines if m.startswith("fitted ")]
    assert len(fitted) == 1 and " split (code between lines" in fitted[0] and "FIM contexts trimmed" in fitted[0]
    assert "pieces left out" in fitted[0] and "trained-token coverage" in fitted[0]


def test_gradient_checkpointing_gives_the_same_losses(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    texts = read_texts(tiny_dataset, "train")
    plain = _train(tiny_model, texts, tmp_path / "p", max_steps=3)
    ckpt = _train(tiny_model, texts, tmp_path / "g", max_steps=3, gradient_checkpointing=True)
    for (_, a), (_, b) in zip(plain["loss_curve"], ckpt["loss_curve"]):
        assert a == pytest.approx(b, rel=1e-3)


@pytest.mark.parametrize("method", ["lora", "rslora", "dora", "pissa"])
def test_each_method_trains_merges_and_exports_a_gguf_llama_cpp_runs(method, tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    from forge_assets.export.pipeline import export_gguf

    # PiSSA trains the base's principal directions themselves, so one step moves the model more than LoRA's:
    # at LoRA's 0.005 forge-tiny overshoots, and the PiSSA authors use a smaller rate too.
    # rsLoRA scales by alpha/sqrt(r), twice LoRA's alpha/r at r=4: half the rate takes the same step.
    lr = {"pissa": 0.001, "rslora": CFG["learning_rate"] / 2}.get(method, CFG["learning_rate"])
    res = train_adapter(tiny_model, tiny_dataset, tmp_path / "ad",
                        TrainingConfig(**{**CFG, "max_steps": 6, "method": method, "learning_rate": lr}), **QUIET)
    assert res["method"] == method
    conf = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert conf.get("modules_to_save") in (None, [])  # vLLM refuses adapters with modules_to_save
    assert conf["use_dora"] is (method == "dora") and conf["use_rslora"] is (method == "rslora")
    if method == "pissa":  # converted to a plain LoRA on the unchanged base: rank doubles, no PiSSA init left
        assert conf["r"] == 8 and conf["init_lora_weights"] is True
    merged = tmp_path / "merged"
    merge_adapter(tiny_model, tmp_path / "ad", merged)
    texts = read_texts(tiny_dataset, "train")[:4]
    import math

    from forge_assets.evaluation.scores import perplexity

    base_model, tok = peft_backend.load_model(tiny_model)
    merged_model, _ = peft_backend.load_model(merged)
    adapted, _ = peft_backend.load_model(tiny_model, tmp_path / "ad")
    ppl_base, _ = perplexity(base_model, tok, texts, 96)
    ppl_merged, _ = perplexity(merged_model, tok, texts, 96)
    ppl_adapter, _ = perplexity(adapted, tok, texts, 96)
    assert ppl_merged < ppl_base, (ppl_merged, ppl_base)  # it learned, and the merge kept what it learned
    assert math.isclose(ppl_merged, ppl_adapter, rel_tol=1e-3)  # merged == base + adapter (PiSSA conversion included)
    out = tmp_path / "gguf"
    out.mkdir()
    (tmp_path / "work").mkdir()
    fig = export_gguf(tiny_model, tmp_path / "ad", out, tmp_path / "work", "Q8_0", name=f"forge-{method}")
    assert (out / fig["file"]).stat().st_size > 0 and fig["smoke_completion_tokens"] > 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="the CUDA paths (bitsandbytes NF4 base, bf16 autocast) need an NVIDIA GPU")
@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_cuda_paths_train_in_bf16_merge_and_export(method, tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    """On a GPU: `precision: auto` is bf16 autocast, qlora loads the base in NF4; both merge and export."""
    from forge_assets.export.pipeline import export_gguf

    res = train_adapter(tiny_model, tiny_dataset, tmp_path / "ad", TrainingConfig(**{**CFG, "max_steps": 6, "method": method}), **QUIET)
    assert res["method"] == method and res["precision"] == "bf16"
    merge_adapter(tiny_model, tmp_path / "ad", tmp_path / "merged")
    (tmp_path / "gguf").mkdir(), (tmp_path / "work").mkdir()
    fig = export_gguf(tiny_model, tmp_path / "ad", tmp_path / "gguf", tmp_path / "work", "Q8_0", name=f"forge-cuda-{method}")
    assert fig["smoke_completion_tokens"] > 0


def test_qlora_on_plain_cpu_is_a_clear_error(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: test_cuda_paths_train_in_bf16_merge_and_export runs qlora instead")
    with pytest.raises(ValueError, match="NVIDIA GPU.*Fix"):
        train_adapter(tiny_model, tiny_dataset, tmp_path / "q", TrainingConfig(**{**CFG, "max_steps": 2, "method": "qlora"}), **QUIET)


def test_bad_combinations_are_config_errors():
    with pytest.raises(ValueError, match="both `epochs` and `max_steps`"):
        TrainingConfig(epochs=2, max_steps=10)
    with pytest.raises(ValueError, match="replay only applies"):
        TrainingConfig(replay=0.5)
    with pytest.raises(ValueError, match="PEFT-only"):
        TrainingConfig(method="pissa", backend="mlx")
    with pytest.raises(ValueError, match="cannot continue a previous adapter"):
        TrainingConfig(method="pissa", init_from="previous")
    with pytest.raises(ValueError, match="valid_fraction is 0"):
        ForgeConfig(training={"eval_every": 10}, mining={"valid_fraction": 0})
    # what the orchestrator hands the training process re-validates: only what the user set counts as set
    cfg = ForgeConfig(training={"max_steps": 5}).training
    assert TrainingConfig(**cfg.model_dump(exclude_unset=True)).max_steps == 5


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from forge_assets.config import TrainingConfig
    from forge_assets.training import peft_backend
    from forge_assets.training.data import read_texts
    cfg = TrainingConfig(**{cfg})
    texts = read_texts(Path({data!r}), "train")
    peft_backend.train(Path({base!r}), texts, [], Path({out!r}), cfg, log=lambda m: print(m, flush=True), checkpoints=Path({ck!r}))
""")


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_continues_the_same_curve(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    """A real SIGKILL after a checkpoint; the rerun resumes there and its curve continues the uninterrupted one."""
    settings = {**CFG, "max_steps": 40, "checkpoint_every": 5, "batch_size": 1}
    texts = read_texts(tiny_dataset, "train")
    reference = peft_backend.train(tiny_model, texts, [], tmp_path / "ref", TrainingConfig(**settings), **QUIET)
    ck = tmp_path / "ckpt"
    code = CHILD.format(cfg=repr(settings), data=str(tiny_dataset), base=str(tiny_model), out=str(tmp_path / "killed"), ck=str(ck))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (ck / "checkpoint-10" / peft_backend.CKPT_DONE).is_file():
        assert child.poll() is None, "the training process ended before its second checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    (ck / "checkpoint-999").mkdir()  # a checkpoint killed mid-save (no completion marker) must be ignored and removed
    resumed = peft_backend.train(tiny_model, texts, [], tmp_path / "out", TrainingConfig(**settings), checkpoints=ck, **QUIET)
    start = resumed["resumed_from"]
    assert start is not None and start % 5 == 0 and 10 <= start < 40
    assert not (ck / "checkpoint-999").exists()
    assert [s for s, _ in resumed["loss_curve"]] == list(range(1, 41))
    ref = dict((int(s), l) for s, l in reference["loss_curve"])
    for step, loss in resumed["loss_curve"]:
        assert loss == pytest.approx(ref[int(step)], rel=2e-3, abs=2e-3), f"step {step}"  # stated tolerance: 0.2 %
    assert resumed["trained_tokens"] == reference["trained_tokens"]


def test_incremental_picks_new_samples_plus_a_replay_share():
    old = [f"old {i}" for i in range(40)]
    new = [f"new {i}" for i in range(12)]
    picked, sel = incremental_texts(old + new, old, replay=0.25, seed=0)
    assert sel == {"new_samples": 12, "replayed_samples": 4, "older_samples": 40}
    assert picked[:12] == new and set(picked[12:]) <= set(old)
    assert incremental_texts(old, old, 0.25, 0)[0] == []  # nothing new, nothing to train


@pytest.mark.slow
def test_continuing_an_adapter_starts_from_its_weights(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    texts = read_texts(tiny_dataset, "train")
    first = _train(tiny_model, texts, tmp_path / "first", max_steps=12)
    fresh = _train(tiny_model, texts, tmp_path / "fresh", max_steps=2, warmup_ratio=0.5)
    cont = peft_backend.train(tiny_model, texts, [], tmp_path / "cont", TrainingConfig(**{**CFG, "max_steps": 2, "warmup_ratio": 0.5}),
                              init_adapter=tmp_path / "first", **QUIET)
    # the first step's loss is computed before any update: the continued adapter already knows the data
    assert cont["loss_curve"][0][1] < fresh["loss_curve"][0][1] - 0.1
    assert cont["loss_curve"][0][1] == pytest.approx(min(l for _, l in first["loss_curve"][-4:]), abs=0.6)


def test_curves_render_as_a_text_chart():
    curve = [[i, 5.0 - i * 0.01] for i in range(1, 301)]
    pts = thin(curve, 60)
    assert len(pts) == 60 and pts[0] == [1, 4.99] and pts[-1] == [300, 2.0]
    chart = text_chart({"train": pts, "valid": [[100, 4.2], [300, 3.1]]})
    assert chart.startswith("```") and "legend: · train, o valid" in chart
    body = chart.splitlines()
    assert body[2].lstrip().startswith("4.990") and "o" in "".join(body)  # the top label is the highest loss
