"""evaluation/plan.py: what the `eval_scores` asset scores, on a real store in tmp_path: the input key exactly as
the asset composed it before (so existing stores are reused), the champion or why none, the manifest and step
arguments; the files a scoring writes; what the gates settle, log and promote."""

import json
import logging

import pytest

from forge_assets.artifacts import ArtifactError, ArtifactStore, input_key
from forge_assets.config import ForgeConfig
from forge_assets.evaluation.plan import CODE_VERSION, NOT_IN_KEY, eval_plan, settle_eval, write_scores

CFG = ForgeConfig(eval={"humaneval": {"problems": 3}})


def _store(tmp_path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "artifacts")
    with store.write("base_model", "all", {}) as base:
        (base.path / "config.json").write_text("{}")
    with store.write("dataset", "python", {"stats": {"split": {"test_since": "2024-01-01"}}}) as data:
        (data.path / "test.jsonl").write_text('{"text": "x"}\n')
    return store


def _adapter(store: ArtifactStore, *, promote: bool, weights: str = "w") -> str:
    data, base = store.require("dataset", "python"), store.require("base_model", "all")
    with store.write("adapter", "python", {"inputs": {"dataset": data.version, "base_model": base.version}}, promote=promote) as ad:
        (ad.path / "adapter_model.safetensors").write_text(weights)
    return ad.artifact.version


def test_no_candidate_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match=r"No `adapter` for `python` to evaluate. Fix: materialize `adapter` for `python` first."):
        eval_plan(CFG, _store(tmp_path), "python")


def test_the_first_candidate_keys_manifests_and_argues_as_before(tmp_path):
    store = _store(tmp_path)
    ad = _adapter(store, promote=False)
    data, base = store.require("dataset", "python"), store.require("base_model", "all")
    plan = eval_plan(CFG, store, "python")
    ev = CFG.eval.model_dump()
    # The key the asset has always composed, so eval_scores already stored are reused.
    assert plan.key == input_key(adapter=ad, dataset=data.version, base=base.version, seq_len=CFG.training.seq_len,
                                 eval={k: v for k, v in ev.items() if k not in NOT_IN_KEY}, code=CODE_VERSION, champion=None)
    assert CODE_VERSION == "4" and set(NOT_IN_KEY) <= set(ev)
    assert plan.champion is None and plan.champion_note == "champion: none (first run: no `python` adapter has been promoted yet)"
    assert plan.manifest == {"input_key": plan.key, "inputs": {"adapter": ad, "dataset": data.version, "base_model": base.version}}
    assert plan.args == {"base": str(base.path), "adapter": str(plan.adapter.path), "champion": None, "dataset": str(data.path),
                         "seq_len": CFG.training.seq_len, "eval": ev, "language": "python"}
    off = eval_plan(ForgeConfig(eval={"humaneval": {"problems": 3}}, gates={"not_worse_than_served": False}), store, "python")
    assert off.champion_note == "champion: none (gates.not_worse_than_served is off)" and off.key == plan.key


def test_the_served_adapter_is_the_champion_in_key_manifest_and_arguments(tmp_path):
    store = _store(tmp_path)
    served = _adapter(store, promote=True, weights="served")
    ad = _adapter(store, promote=False, weights="candidate")
    plan = eval_plan(CFG, store, "python")
    data, base = store.require("dataset", "python"), store.require("base_model", "all")
    assert plan.adapter.version == ad and plan.champion.version == served and plan.no_champion is None
    assert plan.key == input_key(adapter=ad, dataset=data.version, base=base.version, seq_len=CFG.training.seq_len,
                                 eval={k: v for k, v in CFG.eval.model_dump().items() if k not in NOT_IN_KEY}, code=CODE_VERSION, champion=served)
    assert plan.manifest["inputs"]["champion"] == served and plan.args["champion"] == str(plan.champion.path)
    assert plan.champion_note == f"champion: the served adapter {served}"


def _scored(store, plan, ratio):
    with store.write("eval_scores", "python", plan.manifest, promote=False) as out:
        write_scores(plan, out.path, {"perplexity_ratio": ratio, "test_commit_list": ["abc123"]})
    return out.artifact


def test_scores_are_written_then_a_passing_gate_promotes_and_logs(tmp_path, caplog):
    store = _store(tmp_path)
    ad = _adapter(store, promote=False)
    plan = eval_plan(CFG, store, "python")
    art = _scored(store, plan, 0.9)
    scores = json.loads((art.path / "scores.json").read_text())
    assert scores == {"perplexity_ratio": 0.9, "champion_skipped": plan.no_champion}
    assert json.loads((art.path / "test_commits.json").read_text()) == ["abc123"] and (art.path / "scores.md").read_text().endswith("\n")
    with caplog.at_level(logging.INFO, logger="t"):
        done = settle_eval(CFG, store, plan, art, None, logging.getLogger("t"))
    assert done.decision.promoted and done.scores == scores and (art.path / "report.md").read_text() == done.report
    assert store.promoted("adapter", "python").version == ad and store.promoted("eval_scores", "python").version == art.version
    assert f"Promoted adapter {ad} and eval_scores {art.version}." in caplog.text
    assert any(r.levelname == "WARNING" and r.getMessage().startswith("gate not_worse_than_served ") for r in caplog.records)


def test_a_failing_gate_keeps_both_candidates_and_logs_the_failure(tmp_path, caplog):
    store = _store(tmp_path)
    _adapter(store, promote=False)
    plan = eval_plan(CFG, store, "python")
    art = _scored(store, plan, 1.5)
    with caplog.at_level(logging.INFO, logger="t"):
        done = settle_eval(CFG, store, plan, art, None, logging.getLogger("t"))
    assert not done.decision.promoted and [v.name for v in done.decision.failed] == ["adapter_beats_base"]
    assert store.promoted("adapter", "python") is None and store.promoted("eval_scores", "python") is None
    assert any(r.levelname == "ERROR" and r.getMessage().startswith("gate adapter_beats_base failed: ") for r in caplog.records)
