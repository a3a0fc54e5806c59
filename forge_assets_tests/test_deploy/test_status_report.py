"""forge_assets.deploy.status on real artifact stores in tmp_path, nothing deployed (no server, no HTTP): the
languages `forge status` lists, each one's promoted versions and perplexities, and why a candidate was not
promoted. test_history_rollback.py covers the same with real servers through `forge status`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from forge_assets.artifacts import ArtifactStore
from forge_assets.config import load_config
from forge_assets.deploy import llama_server
from forge_assets.deploy.history import record_rollback
from forge_assets.deploy.status import endpoint_status, language_status, languages, promotion, why_not_promoted
from forge_assets_tests.conftest import write_config


def _write(store: ArtifactStore, asset: str, files: dict, manifest: dict | None = None, promote: bool = True, language: str = "python"):
    with store.write(asset, language, {"inputs": {}, **(manifest or {})}, promote=promote) as out:
        for name, text in files.items():
            (out.path / name).write_text(text)
    time.sleep(0.01)
    return out.artifact


def test_languages_and_no_endpoint(tmp_path: Path):
    store = ArtifactStore(tmp_path / "artifacts")
    assert languages(store) == [] and endpoint_status(store) is None
    _write(store, "dataset", {"d.jsonl": "{}\n"}, language="rust")
    (store.root / "deployment" / "go").mkdir(parents=True)
    (store.root / "deployment" / "go" / llama_server.STATE).write_text("{}")  # a per-language server from before
    (store.root / "deployment" / "_endpoint").mkdir()
    (store.root / "deployment" / "_endpoint" / llama_server.STATE).write_text("{}")  # the shared endpoint: not a language
    assert languages(store) == ["go", "rust"]


def test_language_status_explains_each_candidate(tmp_path: Path):
    cfg = load_config(write_config(tmp_path, []))
    store = ArtifactStore(cfg.artifact_path)
    assert language_status(store, cfg, "python") == {"language": "python", "repo_snapshot": None, "session_logs": None, "dataset": None,
                                                      "adapter": None, "eval_scores": None, "gguf": None}
    good = _write(store, "eval_scores", {"scores.json": json.dumps({"perplexity_ratio": 0.9, "adapter_perplexity": 10.0,
                                                                    "base_perplexity": 11.0, "fim_skipped": "no FIM tokens"})})
    gates = [{"name": "adapter_beats_base", "passed": False, "message": "held-out perplexity 1.2x the base's"}]
    bad = _write(store, "eval_scores", {"scores.json": json.dumps({"perplexity_ratio": 1.2, "adapter_perplexity": 13.0,
                                                                   "base_perplexity": 11.0, "gates": gates})}, promote=False)
    g1 = _write(store, "gguf", {"m.gguf": "1"}, {"inputs": {"eval_scores": good.version}, "figures": {"quantization_loss_pct": 0.5}})
    lossy = _write(store, "gguf", {"m.gguf": "2"}, {"inputs": {"eval_scores": good.version}, "figures": {"quantization_loss_pct": 50.0}},
                   promote=False)

    row = language_status(store, cfg, "python")
    assert (row["eval_scores"], row["gguf"]) == (good.version, g1.version) and "deployment" not in row and "health" not in row
    assert row["perplexity"] == {"base": 11.0, "adapter": 10.0} and row["fim"] == "skipped: no FIM tokens"
    e, g = row["promotion"]["eval_scores"], row["promotion"]["gguf"]
    assert e == {"promoted": good.version, "promoted_scores": "ppl ratio 0.900, ppl 10.00", "candidate": bad.version,
                 "candidate_scores": "ppl ratio 1.200, ppl 13.00",
                 "not_promoted": f"candidate {bad.version} was not promoted: adapter_beats_base: held-out perplexity 1.2x the base's"}
    assert (g["promoted"], g["candidate"]) == (g1.version, lossy.version)
    assert g["not_promoted"] == (f"candidate {lossy.version} was not promoted: quantization_loss: its held-out perplexity is 50.00% above "
                                 "the reference's (unquantized base GGUF + LoRA) (limit gates.max_quantization_loss_pct = "
                                 f"{cfg.gates.max_quantization_loss_pct})")

    # A candidate that records no failed check, and one a rollback moved away from.
    quiet = _write(store, "gguf", {"m.gguf": "3"}, {"figures": {}}, promote=False)
    assert why_not_promoted(store, cfg, "python", quiet).startswith("it records no failed check")
    record_rollback(store, "python", g1, quiet.version, "forge-python:x", store.promoted("gguf", "python"))
    assert why_not_promoted(store, cfg, "python", quiet).startswith("`forge rollback` moved away from it (")
    assert f"`forge rollback --language python --to {quiet.version[:12]}`" in why_not_promoted(store, cfg, "python", quiet)

    # The candidate promoted: nothing to explain.
    store.promote(bad)
    assert promotion(store, cfg, "python", "eval_scores") == {"promoted": bad.version, "promoted_scores": "ppl ratio 1.200, ppl 13.00",
                                                              "candidate": bad.version}
    assert promotion(store, cfg, "rust", "gguf") is None
