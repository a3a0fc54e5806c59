"""Evaluation follows its settings, not the split's size: every phase prints progress with rate and ETA, reports its
seconds, and scores (and parses, and tokenizes) only what the settings ask for."""

import json
from pathlib import Path

import pytest

from forge_assets.chat import EOT, IM_END, IM_START
from forge_assets.config import TrainingConfig
from forge_assets.evaluation import fim_eval, scores
from forge_assets.mining.fim import header
from forge_assets.training.adapter import train_adapter

from ..conftest import PY_FILES


def _chat(kind: str, i: int) -> dict:
    text = f"{IM_START}user\nWrite `f{i}`.{IM_END}\n{IM_START}assistant\n```python\ndef f{i}(x):\n    return x + {i}\n```{IM_END}\n{EOT}"
    return {"kind": kind, "repo": "shop", "path": f"app/f{i}.py", "text": text}


@pytest.fixture(scope="module")
def big_split(tmp_path_factory) -> Path:
    """A test split far larger than the evaluation settings below: 40 code files, 6 instruction and 6 commit samples."""
    folder = tmp_path_factory.mktemp("big-split")
    src = PY_FILES["app/handlers.py"]
    code = [{"kind": "code", "repo": "shop", "path": f"app/m{i}.py", "text": header("shop", f"app/m{i}.py") + src.replace("item", f"item{i}") + EOT}
            for i in range(40)]
    chats = [_chat("instruction", i) for i in range(6)] + [_chat("commit", i) for i in range(6, 12)]
    for split, rows in {"train": code[:6] + chats[:2], "valid": code[:1], "test": code + chats}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.slow
def test_every_phase_reports_progress_and_seconds_and_scores_only_what_is_asked(tiny_model: Path, big_split: Path, tmp_path: Path,
                                                                                   monkeypatch):
    train_adapter(tiny_model, big_split, tmp_path / "adapter", TrainingConfig(backend="peft", rank=4, alpha=8, max_steps=2, batch_size=2,
                                                                               seq_len=128, checkpoint_every=None), log=lambda *_: None)
    scored: list[int] = []
    real_loss = scores.summed_loss

    def counting_loss(model, tokenizer, texts, *args, **kwargs):
        scored.append(len(texts))
        return real_loss(model, tokenizer, texts, *args, **kwargs)

    parsed: list[str] = []
    real_spans = fim_eval._spans

    def counting_spans(source, language, path):
        parsed.append(path)
        return real_spans(source, language, path)

    monkeypatch.setattr(scores, "summed_loss", counting_loss)
    monkeypatch.setattr(fim_eval, "_spans", counting_spans)
    ev = {"perplexity_samples": 3, "fim_cases": 4, "fim_max_new_tokens": 8, "codebleu_samples": 1, "codebleu_max_new_tokens": 8,
          "humaneval": {"problems": 1, "max_new_tokens": 8}}
    lines: list[str] = []
    got = scores.evaluate(tiny_model, tmp_path / "adapter", big_split, seq_len=128, ev=ev, language="python", log=lines.append)

    assert got["test_samples"] == 52 and got["fim_cases"] == 4
    assert len(parsed) <= 4  # 40 files in the split, 4 cases asked: at most 4 files parsed
    assert scored and max(scored) <= 3  # perplexity_samples per kind, whatever the split holds
    for side in ("base", "adapter"):
        for phase in ("perplexity", "perplexity_code", "perplexity_instruction", "perplexity_commit", "fim", "codebleu", "humaneval",
                      "humaneval_sandbox"):
            assert isinstance(got[f"{side}_seconds_{phase}"], float) and got[f"{side}_seconds_{phase}"] >= 0, phase
        assert got[f"{side}_seconds_perplexity"] >= got[f"{side}_seconds_perplexity_code"]
        # each phase's last progress line, with its count and rate
        for what, unit, n in (("perplexity code", "batches", 1), ("FIM line/arguments", "cases", None), ("CodeBLEU instruction", "answers", 1),
                              ("HumanEval", "completions", 1), ("HumanEval sandbox", "programs", 1)):
            done = [line for line in lines if line.startswith(f"{side} {what} ") and f" {unit} in " in line and "/s" in line]
            assert done, (side, what, lines)
            if n is not None:
                assert done[0].startswith(f"{side} {what} {n}/{n} {unit} in ")
    assert got["seconds_plan"] >= 0 and got["eval_seconds"] > 0 and got["peak_rss_mb"] > 50
    assert "seconds" not in scores.markdown_table(got)  # timings are metadata, not rows of the base-vs-adapter table


def test_build_cases_parses_a_seeded_sample_of_files_when_there_are_more_than_cases(monkeypatch):
    parsed: list[str] = []
    real_spans = fim_eval._spans
    monkeypatch.setattr(fim_eval, "_spans", lambda s, lang, p: parsed.append(p) or real_spans(s, lang, p))
    files = [("r", f"m{i}.py", PY_FILES["app/pipeline.py"]) for i in range(50)]
    first = fim_eval.build_cases(files, "python", max_cases=5, seed=0)
    assert len(first) == 5 and len(parsed) == 5 and len(set(parsed)) == 5
    assert [(c.path, c.middle) for c in first] == [(c.path, c.middle) for c in fim_eval.build_cases(files, "python", max_cases=5, seed=0)]
    parsed.clear()
    few = fim_eval.build_cases(files[:3], "python", max_cases=5, seed=0)  # fewer files than cases: every file, as before
    assert sorted(parsed) == ["m0.py", "m1.py", "m2.py"] and len(few) == 5
