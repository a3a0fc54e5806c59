"""Divergence halt (issue 23): the monitor's rule, and real runs on forge-tiny that diverge, stop within their first
logged steps, fail with the step and the loss, and keep no adapter and no checkpoint to resume from."""

import math
import re
from pathlib import Path

import pytest

from forge_assets.config import TrainingConfig
from forge_assets.training import mlx_backend, peft_backend
from forge_assets.training.data import read_texts
from forge_assets.training.divergence import ABOVE, NON_FINITE, DivergenceMonitor, TrainingDiverged

CFG = dict(backend="peft", rank=4, alpha=8, batch_size=2, seq_len=96, warmup_ratio=0.0, lr_schedule="constant")
# forge-tiny's LoRA at learning rate 50: Adam moves every adapter weight by ~50 on step 1, and the loss jumps from
# 2.76 (forge-tiny was pretrained on these very files) to 6.15, 6.63, then sits at 6.3969 = ln(600): a dead model
# that predicts its 600-token vocabulary uniformly. That is only 2.3x the first loss, under the default factor 3; the
# chance line (95 % of ln V, once the loss has been below it) stops these runs at step 1 + patience (3) = 4, with the
# defaults (any rate from 50 to 1e12 does the same; 1e20 gives NaN at step 2).
DIVERGING_LR, FACTOR = 50.0, 3.0


def _feed(monitor: DivergenceMonitor, losses) -> list:
    return [monitor.update(step, loss) for step, loss in enumerate(losses, 1)]


# -- the rule ---------------------------------------------------------------------------------------------------


def test_nan_stops_at_once():
    m = DivergenceMonitor(3.0, 3)
    got = _feed(m, [2.0, 1.8, float("nan"), 1.7])
    assert got[:2] == [None, None] and got[2] is not None and got[3] is got[2]  # stopped stays stopped
    d = got[2]
    assert (d.step, d.reason) == (3, NON_FINITE) and math.isnan(d.loss)
    assert d.describe() == "training diverged at step 3: loss nan (non-finite)"


@pytest.mark.parametrize("inf", [float("inf"), float("-inf")])
def test_inf_stops_at_once_even_as_the_first_loss(inf):
    d = DivergenceMonitor(3.0, 3).update(1, inf)
    assert d is not None and (d.step, d.reason) == (1, NON_FINITE)
    assert d.describe() == f"training diverged at step 1: loss {inf} (non-finite)"


def test_a_spike_above_factor_times_the_running_minimum_for_patience_steps_stops():
    m = DivergenceMonitor(3.0, 3)
    got = _feed(m, [2.0, 1.5, 4.6, 5.0, 7.25, 1.0])
    assert got[:4] == [None] * 4  # 4.6 > 3 x 1.5: the first of three in a row
    d = got[4]
    assert (d.step, d.reason, d.minimum, d.steps, d.loss) == (5, ABOVE, 1.5, 3, 7.25)
    assert d.describe() == "training diverged at step 5: loss 7.2500 (above 3× its running minimum 1.5000 for 3 logged steps)"


def test_a_single_spike_that_recovers_does_not_stop():
    m = DivergenceMonitor(3.0, 3)
    # two spikes in a row, a recovery at exactly the line (not above it), two more: never three in a row
    assert _feed(m, [2.0, 9.0, 8.0, 6.0, 9.0, 9.0, 1.9, 5.0]) == [None] * 8
    assert m.minimum == 1.9 and m.streak == 0


def test_patience_0_turns_the_spike_rule_off_but_not_the_nan_rule():
    m = DivergenceMonitor(3.0, 0)
    assert _feed(m, [1.0, 100.0, 1e6, 1e9, 1e12]) == [None] * 5
    d = m.update(6, float("nan"))
    assert d is not None and d.reason == NON_FINITE and d.step == 6


def test_monitor_takes_the_training_settings_and_replays_a_restored_curve():
    m = DivergenceMonitor.of(TrainingConfig(divergence_factor=2.0, divergence_patience=2))
    assert (m.factor, m.patience) == (2.0, 2)
    assert m.replay([[1, 1.0], [2, 2.5]]) is None and m.streak == 1  # a resumed run continues the streak
    assert m.update(3, 2.5).step == 3
    assert (DivergenceMonitor.of(TrainingConfig()).factor, DivergenceMonitor.of(TrainingConfig()).patience) == (3.0, 3)


def test_the_error_names_step_loss_and_the_fix_in_the_failure_block_form():
    from forge_assets.cli import _split_fix

    above = DivergenceMonitor(3.0, 3)
    d = _feed(above, [2.0, 7.0, 8.0, 9.0])[-1]
    msg = str(TrainingDiverged(d, learning_rate=50.0, patience=3))
    cause, fix = _split_fix(msg)  # how `forge run` splits a step's error into its cause and fix lines
    assert cause.startswith("training diverged at step 4: loss 9.0000 (above 3× its running minimum 2.0000 for 3 logged steps).")
    assert "no adapter is kept" in cause and "rerun starts from step 1" in cause
    assert fix.startswith("lower training.learning_rate (now 50; a tenth, 5, is a good next try)")
    assert "training.divergence_factor (now 3)" in fix and "training.divergence_patience (now 3; 0 turns this rule off)" in fix
    nan = str(TrainingDiverged(DivergenceMonitor().update(2, float("nan")), learning_rate=0.001, patience=3))
    assert nan.startswith("training diverged at step 2: loss nan (non-finite).")
    assert "(now 0.001; a tenth, 0.0001," in nan and "divergence_factor" not in nan and msg.count("Fix:") == nan.count("Fix:") == 1


def test_discarding_checkpoints_removes_every_checkpoint_and_nothing_else(tmp_path: Path):
    for name in ("checkpoint-2", "checkpoint-4", "step-2", "step-4", ".tmp-1-step-6", "pissa-init"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-2" / peft_backend.CKPT_DONE).write_text("{}")
    peft_backend.discard_checkpoints(tmp_path)
    mlx_backend._discard_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pissa-init"]


# -- real runs on forge-tiny ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_diverging_peft_run_stops_early_fails_and_a_rerun_starts_clean(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    texts = read_texts(tiny_dataset, "train")
    ck, lines, held = tmp_path / "ck", [], []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("training diverged"):
            held.extend(p.name for p in ck.glob("checkpoint-*"))  # what a rerun could have resumed, had it been kept

    settings = {**CFG, "max_steps": 8, "checkpoint_every": 2}
    with pytest.raises(TrainingDiverged) as info:
        peft_backend.train(tiny_model, texts, [], tmp_path / "out", TrainingConfig(**settings, learning_rate=DIVERGING_LR,
                                                                                      divergence_factor=FACTOR),
                           log=log, checkpoints=ck)
    d = info.value.divergence
    assert d.step == 1 + 3, d  # within its first logged steps (patience 3)
    assert held == ["checkpoint-2"]  # the diverged step 4 was not saved; step 2's checkpoint is removed below
    assert str(info.value).startswith(f"training diverged at step 4: loss {d.loss:.4f} (at least 6.0771, 95% of a uniform guess's "
                                      f"loss ln V = 6.3969, for 3 logged steps, after a running minimum of {d.minimum:.4f}: "
                                      "the model has forgotten what it knew). ")
    assert "Fix: lower training.learning_rate (now 50; a tenth, 5, is a good next try)" in str(info.value)
    assert any(line.startswith(f"training diverged at step {d.step}: ") and line.endswith(": stopping") for line in lines)
    assert not (tmp_path / "out").exists()  # no adapter
    assert not list(ck.glob("checkpoint-*"))  # nothing a rerun could resume

    # the same data, steps and checkpoint folder at a normal rate (PEFT resumes any checkpoint of the same step count,
    # so a kept one would have been resumed): a fresh run that does not trip the monitor and writes its adapter
    ok = peft_backend.train(tiny_model, texts, [], tmp_path / "ok", TrainingConfig(**settings, learning_rate=0.005),
                            log=lambda *_: None, checkpoints=ck)
    assert ok["resumed_from"] is None and [s for s, _ in ok["loss_curve"]] == list(range(1, 9))
    assert all(math.isfinite(x) for _, x in ok["loss_curve"]) and (tmp_path / "ok" / "adapter_model.safetensors").is_file()


def test_a_nan_loss_reaches_the_monitor_unfiltered(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    """transformers' default logging_nan_inf_filter would log a NaN step as the mean of the steps before it (0 right
    after a log), hiding it; the Trainer is set to log it as it is, so the run stops at once."""
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d: loss (nan|inf) \(non-finite\)") as info:
        peft_backend.train(tiny_model, read_texts(tiny_dataset, "train"), [], tmp_path / "out",
                           TrainingConfig(**CFG, max_steps=20, learning_rate=1e30), log=lambda *_: None)
    assert info.value.divergence.step <= 3 and not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".tmp-*-trainer"))  # the scratch trainer folder went too


@pytest.mark.skipif(not mlx_backend.available(), reason="mlx[cpu] / mlx-lm not installed")
def test_a_diverging_mlx_run_stops_early_and_fails_the_same_way(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    train = read_texts(tiny_dataset, "train")
    ck, lines = tmp_path / "ck", []
    settings = {**CFG, "backend": "mlx", "seq_len": 128, "max_steps": 20, "checkpoint_every": 1}
    with pytest.raises(TrainingDiverged) as info:
        mlx_backend.train(tiny_model, [train[0], train[1], train[-1]], [], tmp_path / "out",
                          TrainingConfig(**settings, learning_rate=DIVERGING_LR, divergence_factor=FACTOR), log=lines.append,
                          checkpoints=ck)
    d = info.value.divergence
    assert d.step <= 1 + 3, d
    assert str(info.value).startswith(f"training diverged at step {d.step}: loss ") and "Fix: lower training.learning_rate" in str(info.value)
    assert any(line.startswith(f"training diverged at step {d.step}: ") for line in lines)
    assert not (tmp_path / "out").exists() and not list(ck.iterdir())  # no adapter, no checkpoint


@pytest.mark.slow
def test_the_adapter_asset_fails_with_the_message_and_stores_no_version(tiny_model: Path, py_repo: Path, tmp_path: Path):
    """Through Dagster: the training step's process fails, the adapter asset fails with the message (as `forge run`'s
    failure block shows it), and the store holds no adapter version. The session's forge-tiny is the configured base
    (a model folder, so the base_model asset does not pretrain another one: ~35 s saved); learning rate 50 with the default
    divergence settings, the issue's example."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.cli import failure_summary
    from forge_assets_tests.conftest import forge_instance, materialize_assets, write_config

    cfg = write_config(tmp_path, [py_repo], languages=["python"], base_model=str(tiny_model),
                       training={"learning_rate": 50.0, "warmup_ratio": 0.0, "lr_schedule": "constant", "max_steps": 20,
                                 "checkpoint_every": 1})
    upto = ("base_model", "repo_snapshot", "session_logs", "dataset", "adapter")
    with forge_instance() as instance:
        result = materialize_assets(cfg, upto, instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = failure_summary(result)  # what `forge run`'s failure block shows: step, cause, fix
    assert failure["step"] == "adapter"
    assert re.match(r"step `train_adapter` for `python` failed: training diverged at step [2-5]: loss [0-9.]+ \(at least .* of a "
                    r"uniform guess's loss .*\)\. Training stopped there: no adapter is kept", failure["cause"]), failure
    assert failure["fix"].startswith("lower training.learning_rate (now 50; a tenth, 5, is a good next try)")
    store = ArtifactStore(tmp_path / "artifacts")
    assert store.versions("adapter", "python") == [] and store.candidate("adapter", "python") is None
    assert store.promoted("adapter", "python") is None
    assert not list((tmp_path / "artifacts" / "adapter" / "python").glob(".checkpoints/*/checkpoint-*"))


def test_the_chance_line_stops_a_model_that_forgot_everything_and_spares_one_that_never_learned():
    import math as m

    chance = m.log(600)
    # fell to 2.76, then back up to a uniform guess's loss: diverged at the third step there, with the default factor 3
    got = _feed(DivergenceMonitor(3.0, 3, vocab_size=600), [2.76, 6.15, 6.63, chance])
    assert got[:3] == [None, None, None] and got[3].reason == ABOVE and got[3].chance == chance and got[3].step == 4
    # without the vocabulary size, factor 3 alone never fires there
    assert _feed(DivergenceMonitor(3.0, 3), [2.76, 6.15, 6.63, chance, chance]) == [None] * 5
    # a model that starts at chance (random weights) and stays there has nothing to forget: not stopped
    assert _feed(DivergenceMonitor(3.0, 3, vocab_size=600), [chance, chance, 6.39, 6.38, 6.39]) == [None] * 5
    # a big vocabulary: factor x minimum is the lower line, as before
    d = _feed(DivergenceMonitor(3.0, 2, vocab_size=151_665), [1.0, 3.5, 3.6])[2]
    assert d is not None and d.chance is None and "above 3× its running minimum 1.0000" in d.describe()
