"""Champion/challenger through `forge run`, as a user runs it: a trained adapter is promoted and served; a later
candidate that still beats the base model but is worse than the served adapter is blocked by
`not_worse_than_served`, and what is served does not move. `forge status` and `forge history` say why, and the
local MLflow store (`tracking: mlflow`) holds both runs with their figures and reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forge_assets.artifacts import ArtifactStore
from forge_assets_tests.conftest import free_port, write_config

pytestmark = pytest.mark.slow  # `forge run`, twice


def _forge(args, cwd: Path, env: dict, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "forge_assets.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _pointer(store: ArtifactStore, asset: str) -> str | None:
    art = store.promoted(asset, "python")
    return art.version if art else None


def test_a_candidate_worse_than_the_served_adapter_is_never_deployed(py_repo: Path, tmp_path: Path):
    # The champion: trained well enough to be clearly better than the base. HumanEval off (it is judged the same way,
    # and its cost here buys nothing: the tiny model passes no problem).
    cfg = write_config(tmp_path, [py_repo], languages=["python"], deploy={"port": free_port()},
                       training={"learning_rate": 0.01, "max_steps": 24}, eval={"humaneval": {"problems": 0}}, tracking="mlflow")
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "FORGE_CONFIG": str(cfg),
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    store = ArtifactStore(tmp_path / "artifacts")
    try:
        out = _forge(["run"], tmp_path, env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        served = {a: _pointer(store, a) for a in ("adapter", "eval_scores", "gguf", "deployment")}
        assert all(served.values()), served
        first = json.loads((store.promoted("eval_scores", "python").path / "scores.json").read_text())
        assert first["champion_skipped"].startswith("first run") and "champion_version" not in first
        report = (store.promoted("eval_scores", "python").path / "report.md").read_text()
        assert "**Verdict: PASS" in report and "| not_worse_than_served | not judged |" in report

        # The challenger: barely trained, so it is about the base (it passes adapter_beats_base) but worse than the champion.
        data = yaml.safe_load(cfg.read_text())
        data["training"] |= {"learning_rate": 1e-6, "max_steps": 2}
        cfg.write_text(yaml.safe_dump(data))
        out = _forge(["run"], tmp_path, env)
        text = out.stdout + out.stderr
        assert out.returncode != 0, text[-3000:]
        assert "not_worse_than_served" in text and "worse than the served adapter" in text
        assert {a: _pointer(store, a) for a in served} == served  # nothing promoted, exported or deployed moved
        cand = store.candidate("eval_scores", "python")
        assert cand.version != served["eval_scores"]
        scores = json.loads((cand.path / "scores.json").read_text())
        assert scores["champion_version"] == served["adapter"] and scores["perplexity_ratio"] <= 1.05  # it does beat the base
        ratios = {k: v for k, v in scores.items() if k.startswith("served_perplexity_ratio_")}
        assert ratios and max(ratios.values()) > 1.02, ratios  # worse than the champion on some kind
        gates = {g["name"]: g["passed"] for g in cand.manifest()["gates"]}
        assert gates == {"adapter_beats_base": True, "fim_not_worse_than_base": True, "humaneval_no_regression": True,
                         "not_worse_than_served": False}
        report = (cand.path / "report.md").read_text()
        assert "**Verdict: FAIL" in report and f"served adapter (champion): `{served['adapter']}`" in report

        status = _forge(["status", "--language", "python"], tmp_path, env)
        assert status.returncode == 0 and "worse than the served adapter" in status.stdout, status.stdout[-3000:]
        history = _forge(["history", "--language", "python"], tmp_path, env)
        assert f"eval {cand.version[:12]}" in history.stdout and "FAILED not_worse_than_served" in history.stdout
        assert f"champion {served['adapter'][:12]}" in history.stdout and str(cand.path / "report.md") in history.stdout

        # MLflow: one run per adapter version, each with its training and its evaluation
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'artifacts' / 'mlflow' / 'mlflow.db'}")
        [exp] = [e for e in client.search_experiments() if e.name == "forge-python"]
        runs = {r.data.tags["forge.adapter_version"]: r for r in client.search_runs([exp.experiment_id])}
        challenger = cand.manifest()["inputs"]["adapter"]
        assert set(runs) == {served["adapter"], challenger}
        ch = runs[challenger].data
        assert ch.tags["forge.eval_version"] == cand.version and "train_loss" in ch.metrics and "champion_perplexity" in ch.metrics
        assert ch.metrics["perplexity_ratio"] == scores["perplexity_ratio"] and ch.params["training.learning_rate"] in ("1e-06", "1e-6")
        reports = [a.path for a in client.list_artifacts(runs[challenger].info.run_id, "eval")]
        assert "eval/validation_report.md" in reports
    finally:
        _forge(["stop"], tmp_path, env, timeout=120)
