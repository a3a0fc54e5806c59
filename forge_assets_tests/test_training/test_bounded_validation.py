"""training.val_batches: validation scores a bounded, seeded, length-spread subset, in both backends, with progress lines,
its seconds and the peak memory in the adapter result."""

import re
from pathlib import Path

import pytest

from forge_assets import progress
from forge_assets.config import ForgeConfig, TrainingConfig
from forge_assets.training import mlx_backend, peft_backend
from forge_assets.training.data import read_texts
from forge_assets.training.samples import validation_subset

PEFT = dict(backend="peft", rank=4, alpha=8, learning_rate=0.005, batch_size=1, seq_len=96, checkpoint_every=None)
MLX = dict(backend="mlx", rank=4, alpha=8, learning_rate=0.003, batch_size=1, seq_len=128, checkpoint_every=None)


def test_validation_subset_is_capped_seeded_and_spread_over_the_lengths():
    picked = validation_subset(100, 10, seed=0)
    assert len(picked) == 10 and picked == sorted(set(picked))
    assert picked == validation_subset(100, 10, seed=0)  # the same batches at every validation
    assert picked != validation_subset(100, 10, seed=1)
    assert [i // 10 for i in picked] == list(range(10))  # one from each tenth: longest to shortest rows alike
    assert validation_subset(7, 25, seed=0) == list(range(7))  # fewer batches than the cap: all of them
    assert validation_subset(30, -1, seed=0) == list(range(30)) == validation_subset(30, None, seed=0)
    assert validation_subset(30, 0, seed=0) == []


def test_val_batches_settings():
    assert TrainingConfig().val_batches == 25  # mlx-lm's default
    assert TrainingConfig(val_batches=-1).val_batches == -1 and TrainingConfig(val_batches=None).val_batches is None
    with pytest.raises(ValueError, match="val_batches"):
        TrainingConfig(val_batches=-2)
    with pytest.raises(ValueError, match="eval_every but val_batches: 0"):
        ForgeConfig(training={"val_batches": 0, "eval_every": 5})


def _count_validations(monkeypatch, module, name: str) -> list[int]:
    """Wrap module.<name>(model, batches, ...) to record how many batches each validation scores."""
    seen: list[int] = []
    real = getattr(module, name)

    def wrapped(model, batches, *args, **kwargs):
        seen.append(len(batches))
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def _check(result: dict, lines: list[str], seen: list[int], cap: int, validations: int) -> None:
    assert result["valid_split_batches"] > cap  # the cap had something to cut
    assert result["validation_batches"] == cap and seen == [cap] * validations  # at eval_every and at the end
    assert len(result["valid_curve"]) == validations
    assert result["validation_seconds"] > 0 and result["setup_seconds"] > 0 and result["peak_rss_mb"] > 50
    assert any(f"of the valid split's {result['valid_split_batches']} batches" in line for line in lines)
    firsts = [line for line in lines if f"validation 1/{cap} batches, " in line and "/s" in line and "ETA" in line]
    lasts = [line for line in lines if f"validation {cap}/{cap} batches in " in line]
    assert len(firsts) == validations and len(lasts) == validations
    assert not any("valid loss" in line for line in firsts + lasts)  # progress lines are not loss lines
    steps = [line for line in lines if re.fullmatch(r"step \d+/\d+: loss \d+\.\d{4} \(\S+ (steps/s|s/step), ETA \d+ s\)", line)]
    assert steps and steps[0].startswith("step 1/") and steps[-1].endswith("ETA 0 s)")  # training steps: rate and ETA too


@pytest.mark.slow
def test_peft_validation_is_capped_at_every_validation(tiny_model: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch):
    seen = _count_validations(monkeypatch, peft_backend, "validation_loss")
    texts = read_texts(tiny_dataset, "train")
    lines: list[str] = []
    res = peft_backend.train(tiny_model, texts[:3], texts, tmp_path / "a", TrainingConfig(**PEFT, max_steps=4, eval_every=2, val_batches=3),
                             log=lines.append)
    _check(res, lines, seen, cap=3, validations=2)


def test_peft_val_batches_all_and_none(tiny_model: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch):
    seen = _count_validations(monkeypatch, peft_backend, "validation_loss")
    texts = read_texts(tiny_dataset, "train")
    lines: list[str] = []
    every = peft_backend.train(tiny_model, texts[:2], texts, tmp_path / "a", TrainingConfig(**PEFT, max_steps=1, val_batches=-1),
                               log=lines.append)
    assert seen == [every["valid_split_batches"]] and every["validation_batches"] == every["valid_split_batches"] > 3
    off = peft_backend.train(tiny_model, texts[:2], texts, tmp_path / "b", TrainingConfig(**PEFT, max_steps=1, val_batches=0),
                             log=lines.append)
    assert len(seen) == 1 and off["valid_curve"] == [] and off["validation_seconds"] == 0
    assert any("val_batches is 0: no validation loss" in line for line in lines)


@pytest.mark.skipif(not mlx_backend.available(), reason="mlx[cpu] / mlx-lm not installed")
def test_mlx_validation_is_capped_at_every_validation(tiny_model: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch):
    seen = _count_validations(monkeypatch, mlx_backend, "_evaluate")
    texts = read_texts(tiny_dataset, "train")
    lines: list[str] = []
    res = mlx_backend.train(tiny_model, texts[:2], texts, tmp_path / "a", TrainingConfig(**MLX, max_steps=4, eval_every=2, val_batches=3),
                            log=lines.append)
    _check(res, lines, seen, cap=3, validations=2)
    assert res["mlx_peak_memory_mb"] > 0


def test_progress_lines_give_rate_and_eta_and_are_not_chatty(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    lines: list[str] = []
    p = progress.Progress(lines.append, "validation", "batches", every=10)
    for i in range(1, 101):
        clock[0] += 0.5  # 2 batches/s
        p(i, 100)
    # the first batch, then one line per 10 s (20 batches), then the end
    assert lines[0] == "validation 1/100 batches, 2 batches/s, ETA 50 s"
    assert lines[1] == "validation 21/100 batches, 2 batches/s, ETA 40 s"
    assert lines[-1] == "validation 100/100 batches in 50 s (2 batches/s)"
    assert len(lines) == 1 + 4 + 1
    assert progress.rate(1, 12.0, "batches") == "12 s/batch" and progress.duration(200) == "3 min 20 s"
    assert progress.duration(3 * 3600 + 5 * 60) == "3 h 05 min"
    assert progress.pace(4, 36, 20.0, "steps") == "5 s/step, ETA 3 min 0 s" and progress.pace(0, 5, 0.0, "steps") == ""


def test_adapter_metadata_carries_validation_seconds_and_peak_memory():
    from forge_assets.assets.adapters import _figures

    result = {"loss_curve": [[1, 2.0]], "valid_curve": [[1, 2.1]], "seconds": 3.0, "setup_seconds": 1.5, "validation_seconds": 0.7,
              "validation_batches": 25, "peak_rss_mb": 812.5, "cuda_peak_memory_mb": None}
    meta = _figures(result)
    assert meta["validation_seconds"] == 0.7 and meta["setup_seconds"] == 1.5 and meta["validation_batches"] == 25
    assert meta["peak_rss_mb"] == 812.5 and "cuda_peak_memory_mb" not in meta  # not on CUDA: not reported
    assert "samples_dropped" not in meta  # a result that does not say: nothing claimed
    meta = _figures({**result, "samples_dropped": {"exchange_too_long": 3}})
    assert meta["samples_dropped"].value == {"exchange_too_long": 3}  # left out when fitting to seq_len, by reason
