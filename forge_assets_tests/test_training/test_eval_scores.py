"""Evaluation: held-out perplexity of base vs adapter, and FIM cases taken from the test split."""

from pathlib import Path

from forge_assets.chat import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from forge_assets.config import TrainingConfig
from forge_assets.evaluation.scores import evaluate, fim_cases
from forge_assets.training.adapter import train_adapter


def test_fim_cases_split_prompt_and_middle():
    psm = f"{FIM_PREFIX}a = 1\n{FIM_SUFFIX}c = 3\n{FIM_MIDDLE}b = 2\n{EOT}"
    spm = f"{FIM_PREFIX}{FIM_SUFFIX}c = 3\n{FIM_MIDDLE}a = 1\nb = 2\n{EOT}"
    assert fim_cases([psm, spm, "plain code"]) == [(f"{FIM_PREFIX}a = 1\n{FIM_SUFFIX}c = 3\n{FIM_MIDDLE}", "b = 2\n")]


def test_adapter_trained_on_the_corpus_lowers_held_out_perplexity(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    cfg = TrainingConfig(backend="peft", rank=8, alpha=16, learning_rate=0.01, max_steps=12, batch_size=4, seq_len=96)
    train_adapter(tiny_model, tiny_dataset, tmp_path / "adapter", cfg, log=lambda *_: None)
    scores = evaluate(tiny_model, tmp_path / "adapter", tiny_dataset, seq_len=96)
    assert scores["test_samples"] == 2 and scores["fim_cases"] == 1 and scores["test_tokens"] > 50
    assert 1 < scores["adapter_perplexity"] < scores["base_perplexity"]
    assert scores["perplexity_ratio"] < 1
    assert scores["base_fim_exact_match"] in (0.0, 1.0) and scores["adapter_fim_first_line_match"] in (0.0, 1.0)
