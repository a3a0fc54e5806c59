"""The metric/gate registry (evaluation/metrics/): everything that used to be a second list is derived from it, and
docs/evaluation.md's tables are what it generates."""

import types

import pytest

from forge_assets.config import EvalConfig, GatesConfig
from forge_assets.deploy import service
from forge_assets.evaluation import gate, metrics
from forge_assets.evaluation.metrics import COMMAND, DOCS, Gate, Metric, StatusLine, Verdict, collect, render_docs, write_docs


def _scores(**over):
    s = {"perplexity_ratio": 0.9, "base_perplexity": 10.0, "adapter_perplexity": 9.0, "fim_cases": 4,
         "fim_exact_match_delta": 0.0, "fim_exact_match_delta_se": 0.0, "fim_edit_similarity_delta": 0.0, "fim_edit_similarity_delta_se": 0.0}
    return {**s, **over}


def test_gate_lists_and_judging_come_from_the_registry():
    assert gate.EVAL_GATES == ("adapter_beats_base", "fim_not_worse_than_base", "humaneval_no_regression", "not_worse_than_served")
    assert gate.GGUF_GATES == ("quantization_loss",)
    assert gate.EVAL_GATES == tuple(g.name for g in metrics.registry().gates if g.asset == "eval_scores")
    verdicts = gate.judge_eval(_scores(perplexity_ratio=1.5), GatesConfig())
    assert [v.name for v in verdicts] == list(gate.EVAL_GATES)
    assert [v.name for v in verdicts if not v.passed] == ["adapter_beats_base"]
    assert not gate.judge_gguf({"quantization_loss_pct": 9.0, "quantization": "Q4_0"}, GatesConfig()).passed
    assert gate.judge_gguf({"quantization_loss_pct": 0.5, "quantization": "Q8_0"}, {"max_quantization_loss_pct": 5.0}).passed


def test_fim_and_humaneval_gates_name_the_regression_the_limit_and_the_fix():
    """The shared verdict helper fills {worse} with the regressions; within the tolerance or the noise it passes."""
    fim = gate.judge_eval(_scores(fim_edit_similarity_delta=-0.2, fim_edit_similarity_delta_se=0.01,
                                  base_fim_edit_similarity=0.8, adapter_fim_edit_similarity=0.6), GatesConfig())[1]
    assert not fim.passed and "edit similarity 0.6 vs base 0.8 (difference -0.2000" in fim.message
    assert "gates.fim_tolerance 0.02" in fim.message and "Fix:" in fim.message and "{worse}" not in fim.message
    noisy = gate.judge_eval(_scores(fim_edit_similarity_delta=-0.2, fim_edit_similarity_delta_se=0.5), GatesConfig())[1]
    assert noisy.passed and "it passes" in noisy.message  # beyond the tolerance, but within 2 standard errors
    he = gate.judge_eval(_scores(base_humaneval_pass_at_1=0.5, adapter_humaneval_pass_at_1=0.3, humaneval_problems=20), GatesConfig())[2]
    assert not he.passed and "fell from 50.0 % (base) to 30.0 %" in he.message and "problems: 20.0 points, more than" in he.message
    ok = gate.judge_eval(_scores(base_humaneval_pass_at_1=0.5, adapter_humaneval_pass_at_1=0.48, humaneval_problems=20), GatesConfig())[2]
    assert ok.passed and "at most 5.0 points lower allowed" in ok.message


def test_every_declared_setting_is_a_real_config_field():
    reg = metrics.registry()
    for g in reg.gates:
        assert g.settings, g.name
        for name in g.settings:
            assert name in GatesConfig.model_fields, f"gate {g.name}: gates.{name} is not a GatesConfig field"
    for m in reg.metrics:
        for name in m.settings:
            obj = EvalConfig()
            for part in name.split("."):
                assert hasattr(obj, part), f"metric {m.name}: eval.{name} is not an EvalConfig field"
                obj = getattr(obj, part)


def test_check_descriptions_of_both_assets_are_the_registrys():
    from forge_assets.assets.evals import eval_scores
    from forge_assets.assets.export import gguf

    for asset_def, asset in ((eval_scores, "eval_scores"), (gguf, "gguf")):
        specs = {s.name: s.description for s in asset_def.check_specs}
        assert specs == metrics.descriptions(asset) and specs, asset


def test_status_lines_drive_forge_status():
    assert list(service.EVAL_KEY_SCORES) == ["perplexity_ratio", "adapter_perplexity", "adapter_fim_exact_match",
                                             "adapter_fim_edit_similarity", "adapter_humaneval_pass_at_1", "adapter_codebleu"]
    assert service.GGUF_KEY_SCORES == {"quantization_loss_pct": "quant loss %"}
    assert service.format_scores({"perplexity_ratio": 0.9123, "adapter_perplexity": 14.2, "adapter_codebleu": 0.25,
                                  "quantization_loss_pct": 1.3, "adapter_fim_exact_match": float("nan")}) == \
        "ppl ratio 0.912, ppl 14.20, CodeBLEU 0.250, quant loss 1.30%"


def _toy_module(name="toy"):
    """A metric module as a newcomer writes one: a figure with its own scorer, a status line and a gate."""
    def score(model, tokenizer, *, side, records, ev, seq_len, language, log):
        return {f"{side}_toy": float(len(records))}

    def toy_gate(scores, gates):
        ok = scores.get("adapter_toy", 0) >= scores.get("base_toy", 0)
        return Verdict("toy_not_worse", ok, "toy " + ("passes" if ok else "is worse. Fix: more toys."))

    mod = types.ModuleType(f"forge_assets.evaluation.metrics.{name}")
    mod.METRICS = [Metric("toy", ("<side>_toy",), "how many records were scored", settings=("seed",), order=50,
                          status=(StatusLine("adapter_toy", "toy", "{label} {v:.0f}"),), score=score)]
    mod.GATES = [Gate("toy_not_worse", "eval_scores", toy_gate, "Blocks fewer toys.", "adapter toys < base toys",
                      settings=("fim_not_worse",), order=50)]
    return mod


def test_one_module_adds_a_metric_everywhere():
    import importlib

    builtin = [importlib.import_module(f"forge_assets.evaluation.metrics.{n}")
               for n in ("perplexity", "fim", "humaneval", "codebleu", "served", "quantization")]
    reg = collect([*builtin, _toy_module()])
    assert metrics.gate_names("eval_scores", reg) == ("adapter_beats_base", "fim_not_worse_than_base", "humaneval_no_regression",
                                                      "toy_not_worse", "not_worse_than_served")
    assert "toy_not_worse" in metrics.descriptions("eval_scores", reg)
    assert [s.label for s in metrics.status_lines("eval_scores", reg)][-1] == "toy"  # after CodeBLEU (order 40)
    [toy] = metrics.scorers(reg)
    assert toy.score(None, None, side="adapter", records=[{}, {}], ev={}, seq_len=8, language="python", log=print) == {"adapter_toy": 2.0}
    bad = [v for v in metrics.judge("eval_scores", {**_scores(), "base_toy": 3.0, "adapter_toy": 1.0}, GatesConfig(), reg) if not v.passed]
    assert [v.name for v in bad] == ["toy_not_worse"]
    assert "`<side>_toy`" in metrics.metrics_table(reg) and "`toy_not_worse`" in metrics.gates_table(reg)
    assert "`gates.fim_not_worse` (true)" in metrics.gates_table(reg)


def test_a_name_declared_twice_is_an_error_naming_the_module():
    with pytest.raises(ValueError, match=r"metrics\.again: the metric `toy` is already declared by .*metrics\.toy"):
        collect([_toy_module("toy"), _toy_module("again")])
    odd = _toy_module()
    odd.GATES = [Gate("g", "adapter", lambda s, g: None, "d", "f")]
    odd.METRICS = []
    with pytest.raises(ValueError, match="guards `adapter`, which has no gates"):
        collect([odd])


def test_the_committed_docs_tables_match_the_registry():
    text = DOCS.read_text(encoding="utf-8")
    assert render_docs(text) == text, f"docs/evaluation.md's tables drifted from forge_assets/evaluation/metrics/. Fix: run `{COMMAND}`."
    for g in gate.EVAL_GATES + gate.GGUF_GATES:
        assert f"| `{g}` |" in text


def test_write_docs_fills_the_markers_and_is_stable(tmp_path):
    page = tmp_path / "evaluation.md"
    page.write_text("# E\n\n<!-- metrics:begin -->\nstale\n<!-- metrics:end -->\n\ntext\n<!-- gates:begin -->\n<!-- gates:end -->\n")
    assert write_docs(page) is True
    first = page.read_text()
    assert "stale" not in first and first.startswith("# E\n\n<!-- metrics:begin -->\n<!-- generated by `" + COMMAND)
    assert metrics.metrics_table() in first and metrics.gates_table() + "\n<!-- gates:end -->\n" in first and "\ntext\n" in first
    assert write_docs(page) is False and page.read_text() == first
    page.write_text("# E\n<!-- metrics:begin -->\n")
    with pytest.raises(ValueError, match=r"evaluation\.md: needs exactly one `<!-- metrics:begin -->` followed by one `<!-- metrics:end -->`.*Fix"):
        write_docs(page)


def test_check_docs_command_fails_on_drift(tmp_path, monkeypatch, capsys):
    from forge_assets.evaluation.metrics import __main__ as cli

    page = tmp_path / "evaluation.md"
    page.write_text("<!-- metrics:begin -->\n<!-- metrics:end -->\n<!-- gates:begin -->\n<!-- gates:end -->\n")
    monkeypatch.setattr(cli, "DOCS", page)
    assert cli.main(["--check-docs"]) == 1 and COMMAND in capsys.readouterr().err
    write_docs(page)
    assert cli.main(["--check-docs"]) == 0
    assert cli.main([]) == 0 and "| check | on | fails when | settings |" in capsys.readouterr().out
