"""forge_assets.evaluation.history on a real artifact store in tmp_path: each eval_scores version's adapters, verdict
(from the `gates` its manifest records) and report, oldest first, as `forge history` lists them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from forge_assets.artifacts import ArtifactStore
from forge_assets.evaluation.history import evaluations
from forge_assets.evaluation.report import REPORT

PASSED = [{"name": "adapter_beats_base", "passed": True, "message": "ok"}]
FAILED = [{"name": "adapter_beats_base", "passed": False, "message": "worse"}, {"name": "fim_not_worse_than_base", "passed": False,
                                                                                 "message": "worse"}, "not a gate"]


def _eval(store: ArtifactStore, ratio: float, inputs: dict, gates: list | None, promote: bool, report: bool = False):
    with store.write("eval_scores", "python", {"inputs": inputs}, promote=promote) as out:
        (out.path / "scores.json").write_text(json.dumps({"perplexity_ratio": ratio}))
    art = out.artifact
    if gates is not None:  # recorded after judging, outside the content hash (as forge_assets.promotion does)
        man = art.manifest()
        man["gates"] = gates
        (art.path / "manifest.json").write_text(json.dumps(man))
    if report:
        (art.path / REPORT).write_text("# report\n")
    time.sleep(0.01)  # versions are ordered by their manifest's mtime
    return art


def test_evaluations_oldest_first_with_their_verdicts(tmp_path: Path):
    store = ArtifactStore(tmp_path / "artifacts")
    assert evaluations(store, "python") == []
    old = _eval(store, 0.9, {"adapter": "adapter-one-0123456789"}, PASSED, promote=True, report=True)
    bad = _eval(store, 1.3, {"adapter": "adapter-two", "champion": "adapter-one-0123456789"}, FAILED, promote=False)
    unjudged = _eval(store, 0.8, {}, None, promote=False)
    good = _eval(store, 0.7, {"adapter": "adapter-three", "champion": "adapter-one"}, PASSED, promote=True)

    evals = evaluations(store, "python")
    assert [e.version for e in evals] == [old.version, bad.version, unjudged.version, good.version]
    e_old, e_bad, e_unjudged, e_good = evals
    assert (e_old.adapter, e_old.champion, e_old.verdict, e_old.report) == ("adapter-one-0123456789", None, "promoted", old.path / REPORT)
    assert (e_bad.champion, e_bad.failed, e_bad.verdict) == ("adapter-one-0123456789", ("adapter_beats_base", "fim_not_worse_than_base"),
                                                            "FAILED adapter_beats_base, fim_not_worse_than_base")
    assert e_bad.report is None and not e_bad.promoted_now
    assert (e_unjudged.adapter, e_unjudged.judged, e_unjudged.verdict) == (None, False, "not judged")
    assert e_good.promoted_now and e_good.verdict == "promoted  <- promoted now"
    assert e_good.created_at == good.manifest()["created_at"]
