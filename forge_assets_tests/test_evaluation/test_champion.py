"""Champion/challenger: which served adapter a candidate is judged against, the paired comparison, the
`not_worse_than_served` gate and the validation report (plain code; the chain through `forge run` is in
test_assets/test_champion_challenger.py)."""

from pathlib import Path

from forge_assets.artifacts import ArtifactStore
from forge_assets.config import GatesConfig
from forge_assets.evaluation.champion import resolve_champion
from forge_assets.evaluation.gate import EVAL_GATES, judge_eval, served_gate
from forge_assets.evaluation.report import validation_report
from forge_assets.evaluation.scores import mean_se, served_comparison


def _adapter(store: ArtifactStore, base: str, label: str, promote: bool):
    with store.write("adapter", "python", {"inputs": {"base_model": base, "dataset": "d1"}}, promote=promote) as out:
        (out.path / "adapter_config.json").write_text(f'{{"label": "{label}"}}')
    return out.artifact


def _eval(store: ArtifactStore, adapter: str, champion: str | None, promote: bool):
    inputs = {"adapter": adapter, **({"champion": champion} if champion else {})}
    with store.write("eval_scores", "python", {"inputs": inputs}, promote=promote) as out:
        (out.path / "scores.json").write_text(f'{{"champion": "{champion}"}}')
    return out.artifact


def test_the_champion_is_the_promoted_adapter_on_the_same_base(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    first = _adapter(store, "b1", "first", promote=False)
    champ, why = resolve_champion(store, "python", first, "b1")
    assert champ is None and why.startswith("first run")  # nothing promoted yet
    store.promote(first)
    second = _adapter(store, "b1", "second", promote=False)
    champ, why = resolve_champion(store, "python", second, "b1")
    assert champ.version == first.version and why is None
    on_new_base = _adapter(store, "b2", "third", promote=False)
    champ, why = resolve_champion(store, "python", on_new_base, "b2")
    assert champ is None and "a new base" in why and first.version[:12] in why


def test_the_served_candidate_keeps_the_champion_its_promoting_eval_had(tmp_path: Path):
    """The chain re-run on unchanged inputs: the candidate is the promoted adapter; the champion is the one the eval that
    promoted it was judged against (so that eval is reused), or none when that eval had none."""
    store = ArtifactStore(tmp_path)
    old = _adapter(store, "b1", "old", promote=True)
    new = _adapter(store, "b1", "new", promote=True)
    _eval(store, new.version, old.version, promote=True)
    champ, why = resolve_champion(store, "python", new, "b1")
    assert champ.version == old.version and why is None
    _eval(store, new.version, None, promote=True)
    champ, why = resolve_champion(store, "python", new, "b1")
    assert champ is None and "is the served adapter itself" in why


def test_mean_se_and_the_paired_comparison():
    assert mean_se([]) == (0.0, 0.0) and mean_se([0.5]) == (0.5, 0.0)
    mean, se = mean_se([1.0, 0.0, 0.0, 0.0])
    assert mean == 0.25 and se == 0.25
    scores = {"adapter_perplexity_code": 12.0, "champion_perplexity_code": 10.0}
    cand = {"perplexity": {"code": [(24.0, 10), (26.0, 10)]}, "humaneval": [1.0, 0.0, 0.0]}
    champ = {"perplexity": {"code": [(20.0, 10), (20.0, 10)]}, "humaneval": [1.0, 1.0, 0.0]}
    got = served_comparison(scores, cand, champ, [(1.0, 0.9), (0.0, 0.5)], [(1.0, 0.9), (1.0, 1.0)])
    assert got["served_perplexity_ratio_code"] == 1.2 and got["served_perplexity_batches_code"] == 2
    assert got["served_log_perplexity_delta_code"] == 0.5 and got["served_log_perplexity_delta_code_se"] == 0.1
    assert got["served_fim_exact_match_delta"] == -0.5 and got["served_fim_edit_similarity_delta"] == -0.25
    assert round(got["served_humaneval_delta"], 4) == -0.3333


def _scores(**kw) -> dict:
    s = {"perplexity_ratio": 0.9, "base_perplexity": 10.0, "adapter_perplexity": 9.0, "champion_version": "c" * 64,
         "adapter_perplexity_code": 9.0, "champion_perplexity_code": 8.9, "served_perplexity_ratio_code": 1.011,
         "served_log_perplexity_delta_code": 0.01, "served_log_perplexity_delta_code_se": 0.004,
         "adapter_fim_edit_similarity": 0.6, "champion_fim_edit_similarity": 0.6, "served_fim_edit_similarity_delta": 0.0,
         "served_fim_edit_similarity_delta_se": 0.01, "served_fim_exact_match_delta": 0.0, "served_fim_exact_match_delta_se": 0.01,
         "adapter_humaneval_pass_at_1": 0.4, "champion_humaneval_pass_at_1": 0.4, "served_humaneval_delta": 0.0,
         "served_humaneval_delta_se": 0.0}
    return {**s, **kw}


def test_not_worse_than_served_passes_within_tolerance_and_noise_and_fails_beyond_both():
    gates = GatesConfig()
    ok = served_gate(_scores(), gates)
    assert ok.passed and not ok.skipped and "Not worse than the served adapter cccccccccccc" in ok.message
    # perplexity 20 % worse on every batch: beyond 2 % and beyond 2 standard errors
    bad = served_gate(_scores(served_perplexity_ratio_code=1.2, adapter_perplexity_code=10.7, served_log_perplexity_delta_code=0.18), gates)
    assert not bad.passed and "worse than the served adapter" in bad.message and "code perplexity 10.7 vs served 8.9" in bad.message
    assert "Fix:" in bad.message and bad.figures["perplexity_ratio_code"] == 1.2
    # 20 % worse but noisy (the difference within 2 standard errors): passes
    assert served_gate(_scores(served_perplexity_ratio_code=1.2, served_log_perplexity_delta_code=0.18,
                               served_log_perplexity_delta_code_se=0.1), gates).passed
    # FIM and HumanEval, absolute
    bad = served_gate(_scores(served_fim_edit_similarity_delta=-0.1, adapter_fim_edit_similarity=0.5), gates)
    assert not bad.passed and "FIM edit similarity 0.5 vs served 0.6" in bad.message
    bad = served_gate(_scores(served_humaneval_delta=-0.25, served_humaneval_delta_se=0.1, adapter_humaneval_pass_at_1=0.15), gates)
    assert not bad.passed and "HumanEval pass@1 0.15 vs served 0.4" in bad.message
    assert served_gate(_scores(served_humaneval_delta=-0.25, served_humaneval_delta_se=0.1), GatesConfig(served_tolerance=0.3)).passed
    # off, and no champion: not judged (the second says why)
    assert served_gate(_scores(served_perplexity_ratio_code=2.0, served_log_perplexity_delta_code=1.0),
                       GatesConfig(not_worse_than_served=False)).passed
    first = served_gate({"champion_skipped": "first run: no `python` adapter has been promoted yet"}, gates)
    assert first.passed and first.skipped and "No champion: first run" in first.message


def test_judge_eval_includes_the_served_gate_last():
    verdicts = judge_eval(_scores(served_fim_exact_match_delta=-0.5), GatesConfig())
    assert [v.name for v in verdicts] == list(EVAL_GATES) and EVAL_GATES[-1] == "not_worse_than_served"
    assert [v.passed for v in verdicts] == [True, True, True, False]


def test_the_validation_report_has_the_verdicts_figures_paired_differences_and_commits():
    scores = _scores(served_fim_edit_similarity_delta=-0.1, adapter_fim_edit_similarity=0.5, base_perplexity_code=11.0,
                     base_fim_edit_similarity=0.55, split="test", test_samples=42)
    verdicts = judge_eval(scores, GatesConfig())
    commits = [f"{i:040x}" for i in range(45)]
    md = validation_report(scores, verdicts, language="python", candidate="a" * 64, base="b" * 64, dataset="d" * 64,
                           champion="c" * 64, champion_reason=None, commits=commits, test_since="2026-11-30T00:00:00+00:00")
    assert "**Verdict: FAIL" in md and "| not_worse_than_served | **FAIL** |" in md and "| adapter_beats_base | pass |" in md
    assert "| perplexity_code | 11 | 8.9 | 9 | worse | better |" in md
    assert "| fim_edit_similarity | 0.55 | 0.6 | 0.5 | worse | worse |" in md
    assert "| fim_edit_similarity_delta | -0.1000 | 0.01 |" in md and "| log_perplexity_delta_code | +0.0100 | 0.004 |" in md
    assert "Commits the test split covers (45)" in md and "and 5 more" in md and "since 2026-11-30" in md
    first = validation_report({"adapter_perplexity": 9.0, "base_perplexity": 10.0}, judge_eval(
        {"perplexity_ratio": 0.9, "champion_skipped": "first run: none promoted"}, GatesConfig()), language="python",
        candidate="a" * 64, base="b" * 64, dataset="d" * 64, champion=None, champion_reason="first run: none promoted", commits=[])
    assert "**Verdict: PASS" in first and "champion): none (first run: none promoted)" in first and "| not_worse_than_served | not judged |" in first
