"""Evaluation: per-kind perplexity, FIM, CodeBLEU and sandboxed HumanEval of base vs adapter, and the gates that judge them."""

import json
from pathlib import Path

import pytest

from forge_assets.chat import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END, IM_START
from forge_assets.config import GatesConfig, TrainingConfig
from forge_assets.evaluation.gate import fim_gate, humaneval_gate, judge_eval, perplexity_gate, quantization_gate
from forge_assets.evaluation.scores import chat_pairs, evaluate, markdown_table, paired_fim_deltas, source_files
from forge_assets.mining.fim import header
from forge_assets.training.adapter import train_adapter

from ..conftest import PY_FILES


def _chat(question: str, answer: str) -> str:
    return f"{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n{answer}{IM_END}\n{EOT}"


def _records() -> list[dict]:
    recs = []
    for path, src in PY_FILES.items():
        recs.append({"kind": "code", "repo": "shop", "path": path, "text": header("shop", path) + src + EOT})
    src = PY_FILES["app/handlers.py"]
    recs.append({"kind": "fim", "repo": "shop", "path": "app/handlers.py",
                 "text": f"{header('shop', 'app/handlers.py')}{FIM_PREFIX}{src[:120]}{FIM_SUFFIX}{src[160:]}{FIM_MIDDLE}{src[120:160]}{EOT}"})
    recs.append({"kind": "instruction", "repo": "shop", "path": "app/handlers.py",
                 "text": _chat("Write `load` for `app/io.py`.", "```python\ndef load(path):\n    return open(path).read()\n```")})
    recs.append({"kind": "commit", "repo": "shop", "path": "app/io.py",
                 "text": _chat("Make `save` write JSON.", "```python\ndef save(rows, path):\n    json.dump(rows, open(path, 'w'))\n```")})
    return recs


@pytest.fixture(scope="module")
def kinds_dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kinds")
    recs = _records()
    for split, rows in {"train": recs * 3, "valid": recs[:1], "test": recs}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_source_files_and_chat_pairs_read_the_split_as_serving_sees_it():
    recs = _records()
    files = source_files(recs)
    src = PY_FILES["app/handlers.py"]
    assert ("shop", "app/handlers.py", src) in files  # the code sample, header and end token removed
    assert files.count(("shop", "app/handlers.py", src)) == 2  # and the FIM sample put back together
    (prompt, answer), = chat_pairs(recs, "instruction")
    assert prompt.endswith(f"{IM_START}assistant\n") and answer.startswith("```python\ndef load") and IM_END not in answer


@pytest.mark.slow
def test_base_and_adapter_get_every_figure_on_held_out_code(tiny_model: Path, kinds_dataset: Path, tmp_path: Path):
    cfg = TrainingConfig(backend="peft", rank=8, alpha=16, learning_rate=0.01, max_steps=10, batch_size=4, seq_len=128)
    train_adapter(tiny_model, kinds_dataset, tmp_path / "adapter", cfg, log=lambda *_: None)
    lines = []
    ev = {"fim_cases": 30, "fim_max_new_tokens": 16, "codebleu_samples": 2, "codebleu_max_new_tokens": 24,
          "humaneval": {"problems": 2, "max_new_tokens": 24}}
    # The adapter is also its own champion: every paired difference against it must be exactly zero.
    scores = evaluate(tiny_model, tmp_path / "adapter", kinds_dataset, seq_len=128, ev=ev, language="python", log=lines.append,
                      champion=tmp_path / "adapter")
    for side in ("base", "adapter", "champion"):
        for kind in ("code", "fim", "instruction", "commit"):
            assert scores[f"{side}_perplexity_{kind}"] > 1
        assert 0 <= scores[f"{side}_fim_exact_match"] <= 1 and 0 <= scores[f"{side}_fim_edit_similarity"] <= 1
        assert 0 <= scores[f"{side}_codebleu"] <= 1 and f"{side}_codebleu_instruction" in scores and f"{side}_codebleu_commit" in scores
        assert scores[f"{side}_humaneval_pass_at_1"] in (0.0, 0.5, 1.0)
    assert scores["fim_cases"] == 30 and scores["fim_cases_line"] and scores["fim_cases_block"] and scores["fim_cases_arguments"]
    assert scores["humaneval_problems"] == 2 and scores["sandbox_network_isolation"] in ("netns", "socket-blocked")
    assert scores["adapter_perplexity"] < scores["base_perplexity"] and scores["perplexity_ratio"] < 1
    assert "fim_edit_similarity_delta" in scores and scores["fim_edit_similarity_delta_se"] >= 0
    assert any("HumanEval" in line for line in lines) and any("FIM" in line for line in lines)  # progress is printed
    for kind in ("code", "fim", "instruction", "commit"):
        assert scores[f"champion_perplexity_{kind}"] == scores[f"adapter_perplexity_{kind}"]
        assert scores[f"served_perplexity_ratio_{kind}"] == 1.0 and scores[f"served_perplexity_batches_{kind}"] >= 1
        assert scores[f"served_log_perplexity_delta_{kind}"] == 0 and scores[f"served_log_perplexity_delta_{kind}_se"] == 0
    for metric in ("fim_exact_match", "fim_edit_similarity", "humaneval"):
        assert scores[f"served_{metric}_delta"] == 0 and scores[f"served_{metric}_delta_se"] == 0
    assert scores["test_commit_list"] == []  # these records name no commit
    table = markdown_table(scores)
    assert "| perplexity_code |" in table and "| humaneval_pass_at_1 |" in table and "| fim_edit_similarity |" in table
    assert "served (champion)" in table


def test_an_empty_held_out_split_is_a_clear_error(tiny_model: Path, tmp_path: Path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.jsonl").write_text("")
    with pytest.raises(ValueError, match="test and valid splits are empty.*Fix:"):
        evaluate(tiny_model, tmp_path, tmp_path, seq_len=64)


def test_paired_fim_deltas_give_the_mean_difference_and_its_standard_error():
    base = [(0.0, 0.5)] * 4
    adapter = [(1.0, 0.5), (0.0, 0.5), (0.0, 0.5), (0.0, 0.5)]
    d = paired_fim_deltas(base, adapter)
    assert d["fim_exact_match_delta"] == 0.25 and d["fim_exact_match_delta_se"] == 0.25
    assert d["fim_edit_similarity_delta"] == 0.0 and d["fim_edit_similarity_delta_se"] == 0.0


def _scores(**kw) -> dict:
    base = {"perplexity_ratio": 0.9, "base_perplexity": 10.0, "adapter_perplexity": 9.0, "fim_cases": 200,
            "base_fim_exact_match": 0.30, "adapter_fim_exact_match": 0.30, "base_fim_edit_similarity": 0.60, "adapter_fim_edit_similarity": 0.60,
            "fim_exact_match_delta": 0.0, "fim_exact_match_delta_se": 0.01, "fim_edit_similarity_delta": 0.0, "fim_edit_similarity_delta_se": 0.01,
            "base_humaneval_pass_at_1": 0.40, "adapter_humaneval_pass_at_1": 0.40, "humaneval_problems": 20}
    return {**base, **kw}


def test_each_eval_gate_passes_and_fails_on_its_own_figure_with_the_fix():
    gates = GatesConfig()
    assert all(v.passed for v in judge_eval(_scores(), gates))
    bad = perplexity_gate(_scores(perplexity_ratio=1.2), gates)
    assert not bad.passed and "1.200x" in bad.message and "gates.max_perplexity_ratio" in bad.message
    # FIM: a drop inside two standard errors is noise; beyond them it fails, naming both figures.
    assert fim_gate(_scores(fim_edit_similarity_delta=-0.015, fim_edit_similarity_delta_se=0.01), gates).passed
    bad = fim_gate(_scores(adapter_fim_edit_similarity=0.50, fim_edit_similarity_delta=-0.10, fim_edit_similarity_delta_se=0.01), gates)
    assert not bad.passed and "edit similarity 0.5 vs base 0.6" in bad.message and "Fix:" in bad.message
    assert fim_gate(_scores(fim_edit_similarity_delta=-0.10), GatesConfig(fim_tolerance=0.2)).passed
    assert fim_gate(_scores(fim_edit_similarity_delta=-0.10), GatesConfig(fim_not_worse=False)).passed
    # HumanEval: points of pass@1 lost.
    assert humaneval_gate(_scores(adapter_humaneval_pass_at_1=0.35), gates).passed  # 5 points: the limit
    bad = humaneval_gate(_scores(adapter_humaneval_pass_at_1=0.30), gates)
    assert not bad.passed and "10.0 points" in bad.message and "max_humaneval_regression_points" in bad.message
    assert humaneval_gate({"perplexity_ratio": 0.9}, gates).passed  # not run: not judged


def test_the_quantization_gate_judges_the_shipped_files_loss():
    gates = GatesConfig(max_quantization_loss_pct=2.0)
    ok = quantization_gate({"quantization": "Q8_0", "quantization_loss_pct": 0.03, "gguf_perplexity": 10.003, "merged_perplexity": 10.0}, gates)
    assert ok.passed
    bad = quantization_gate({"quantization": "Q4_K_M", "quantization_loss_pct": 3.5, "gguf_perplexity": 10.35, "merged_perplexity": 10.0}, gates)
    assert not bad.passed and "3.500 %" in bad.message and "Q4_K_M" in bad.message and "deploy.quantization" in bad.message


def test_codebleu_scores_through_the_codebleu_package_with_forges_grammars():
    from forge_assets.evaluation.codebleu_eval import extract_code, score

    ref = "def add(a, b):\n    total = a + b\n    return total\n"
    assert score([ref], [ref], "python")["codebleu"] == 1.0
    renamed = score(["def add(x, y):\n    s = x + y\n    return s\n"], [ref], "python")
    assert 0 < renamed["codebleu"] < 1 and renamed["syntax_match"] == 1.0  # same tree, other names
    assert score(["fn f() -> i32 { 1 }"], ["fn f() -> i32 { 2 }"], "rust")["codebleu"] > 0
    assert score(["x"], ["y"], "shell") is None and score([], [], "python") is None  # codebleu has no shell
    assert extract_code("Here it is:\n```python\ndef f():\n    pass\n```\nDone.") == "def f():\n    pass"


@pytest.mark.slow
def test_without_an_os_sandbox_humaneval_is_skipped_with_the_reason_unless_the_user_opts_in(
        tiny_model: Path, kinds_dataset: Path, tmp_path: Path, monkeypatch):
    from forge_assets.evaluation import sandbox

    monkeypatch.setattr(sandbox, "_boundary", lambda: (None, "util-linux's `unshare` is not installed. Fix: install util-linux"))
    cfg = TrainingConfig(backend="peft", rank=4, alpha=8, learning_rate=0.01, max_steps=2, batch_size=2, seq_len=64)
    train_adapter(tiny_model, kinds_dataset, tmp_path / "adapter", cfg, log=lambda *_: None)
    ev = {"fim_cases": 0, "codebleu_samples": 0, "perplexity_samples": 2, "humaneval": {"problems": 2, "max_new_tokens": 8}}
    lines: list[str] = []
    scores = evaluate(tiny_model, tmp_path / "adapter", kinds_dataset, seq_len=64, ev=ev, language="python", log=lines.append)
    assert scores["humaneval_skipped"].startswith("HumanEval skipped: util-linux") and "Fix: install util-linux" in scores["humaneval_skipped"]
    assert "base_humaneval_pass_at_1" not in scores and "adapter_humaneval_pass_at_1" not in scores
    assert any(line.startswith("WARNING: HumanEval skipped") for line in lines)
    verdict = humaneval_gate(scores, GatesConfig())
    assert verdict.passed and verdict.skipped and "Fix: install util-linux" in verdict.message

    ev["humaneval"]["allow_hook_only"] = True  # the explicit opt-in: the audit hook alone
    lines.clear()
    scores = evaluate(tiny_model, tmp_path / "adapter", kinds_dataset, seq_len=64, ev=ev, language="python", log=lines.append)
    assert "humaneval_skipped" not in scores and scores["sandbox"].startswith("hook-only")
    assert scores["base_humaneval_pass_at_1"] in (0.0, 0.5, 1.0)
    assert any("audit hook alone" in line for line in lines)
