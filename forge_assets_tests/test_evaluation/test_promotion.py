"""promotion.py: what the gate verdicts decide for an eval_scores version and its adapter, on a real store in tmp_path."""

import json

from forge_assets.artifacts import MANIFEST, ArtifactStore
from forge_assets.evaluation.gate import Verdict
from forge_assets.promotion import decide, record_gates, settle, write_beside

PASS = Verdict("adapter_beats_base", True, "ratio 0.9: it passes.")
SKIP = Verdict("fim_not_worse_than_base", True, "skipped: base has no FIM tokens.", skipped=True)
FAIL = Verdict("not_worse_than_served", False, "worse than the served adapter. Fix: train longer.")


def _pair(store: ArtifactStore, tag: str):
    with store.write("adapter", "python", {"inputs": {}}, promote=False) as ad:
        (ad.path / "adapter_model.safetensors").write_text(tag)
    with store.write("eval_scores", "python", {"inputs": {"adapter": ad.artifact.version}}, promote=False) as ev:
        (ev.path / "scores.json").write_text(json.dumps({"perplexity_ratio": 0.9, "tag": tag}))
    return ev.artifact, ad.artifact


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_all_passing_promotes_the_scores_and_their_adapter(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    ev, ad = _pair(store, "a")
    d = settle(store, ev, ad, [PASS, SKIP], "# report\n", "report.md")
    assert d.promoted and d.failed == [] and d.skipped == [SKIP]
    assert store.promoted("eval_scores", "python").version == ev.version and store.promoted("adapter", "python").version == ad.version
    man = json.loads((ev.path / MANIFEST).read_text())
    assert man["gates"] == [{"name": "adapter_beats_base", "passed": True, "message": PASS.message},
                            {"name": "fim_not_worse_than_base", "passed": True, "message": SKIP.message, "skipped": True}]
    assert man["inputs"] == {"adapter": ad.version}  # the rest of the manifest kept
    assert (ev.path / "report.md").read_text() == "# report\n" and _leftovers(ev.path) == []


def test_a_failed_gate_keeps_both_candidates_and_what_is_served(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    good_ev, good_ad = _pair(store, "good")
    assert settle(store, good_ev, good_ad, [PASS], "ok\n", "report.md").promoted
    bad_ev, bad_ad = _pair(store, "bad")
    d = settle(store, bad_ev, bad_ad, [PASS, FAIL], "fail\n", "report.md")
    assert not d.promoted and d.failed == [FAIL] and "not_worse_than_served: worse than the served adapter" in d.message
    assert store.promoted("adapter", "python").version == good_ad.version
    assert store.promoted("eval_scores", "python").version == good_ev.version
    assert store.candidate("eval_scores", "python").version == bad_ev.version
    assert [g["passed"] for g in json.loads((bad_ev.path / MANIFEST).read_text())["gates"]] == [True, False]


def test_rejudging_rewrites_the_record_whole(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    ev, _ = _pair(store, "x")
    record_gates(ev, [FAIL])
    record_gates(ev, [PASS])  # today's gates: the old verdict is replaced, not appended
    assert [g["name"] for g in json.loads((ev.path / MANIFEST).read_text())["gates"]] == ["adapter_beats_base"]
    write_beside(ev, "report.md", "one")
    write_beside(ev, "report.md", "two")
    assert (ev.path / "report.md").read_text() == "two" and _leftovers(ev.path) == []


def test_decide_lists_failures_and_passes_on_no_gates():
    assert decide([]).promoted
    d = decide([FAIL, PASS])
    assert not d.promoted and d.failed == [FAIL] and d.message.startswith("not_worse_than_served:")
    assert decide([PASS]).message == PASS.message
