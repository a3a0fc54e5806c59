"""tracking: mlflow: one MLflow run per adapter version, read back from a real local store (SQLite) with MlflowClient."""

import logging
import shutil
import stat
import time
from pathlib import Path

import pytest


from forge_assets.artifacts import ArtifactStore
from forge_assets.config import TrainingConfig, parse_config
from forge_assets.tracking import local_store, record_eval, record_training, snapshot_commits, tracking_uri
from forge_assets.training.adapter import train_adapter

SECRET = "s3cretPassw0rd"
URL = f"https://forge-user:{SECRET}@git.example.com/team/app.git"
TRAINING = dict(backend="peft", rank=4, alpha=8, learning_rate=0.005, max_steps=4, batch_size=4, seq_len=96, eval_every=2)


def _config(tmp_path: Path, tracking: str | None = "mlflow"):
    return parse_config({"artifact_root": str(tmp_path / "artifacts"), "tracking": tracking, "training": TRAINING},
                        base_dir=tmp_path)


def _stored_inputs(store: ArtifactStore, dataset: Path):
    with store.write("repo_snapshot", "python", {"commits": {"app": "a" * 40, "lib": "b" * 40}}) as out:
        (out.path / "snapshot.json").write_text("{}")
    snap = out.artifact
    with store.write("dataset", "python", {"inputs": {"repo_snapshot": snap.version}}) as out:
        for f in dataset.iterdir():
            shutil.copy(f, out.path / f.name)
    return out.artifact


def _stub(result: dict):
    def build(out: Path) -> dict:
        (out / "adapter_config.json").write_text("{}")
        return result
    return build


def _adapter(store: ArtifactStore, inputs: dict, build) -> object:
    manifest = {"inputs": inputs, "training": TrainingConfig(**TRAINING).model_dump()}
    with store.write("adapter", "python", manifest, promote=False) as out:
        manifest["result"] = build(out.path)
    return out.artifact


@pytest.mark.slow
def test_training_and_eval_are_one_run_with_params_curves_figures_artifacts_and_tags(tiny_model: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _config(tmp_path)
    store = ArtifactStore(cfg.artifact_path)
    data = _stored_inputs(store, tiny_dataset)
    inputs = {"dataset": data.version, "base_model": "c" * 16, "mirror": URL}  # a URL with a password: must never land
    art = _adapter(store, inputs, lambda out: train_adapter(tiny_model, data.path, out, TrainingConfig(**TRAINING), log=lambda *_: None))
    result = art.manifest()["result"]
    assert [s for s, _ in result["valid_curve"]] == [2, 4]

    started = time.monotonic()
    mlrun = record_training(cfg, "python", art, inputs, "dagster-run-1", snapshot_commits(store, data))
    scores = {"base_perplexity": 9.5, "adapter_perplexity": 7.25, "champion_perplexity": 8.0, "perplexity_ratio": 0.76,
              "adapter_fim_exact_match": 1, "humaneval_skipped": "no sandbox", "adapter_humaneval_ran": True,
              "base_perplexity_by": {"code": 9.0}, "champion_fim_edit_similarity": None}
    report = f"# Validation report\n\nCandidate beats champion; cloned from {URL}.\n"
    again = record_eval(cfg, "python", art.version, "e" * 16, scores, report, "dagster-run-2")
    assert mlrun is not None and again == mlrun
    assert time.monotonic() - started < 30

    assert tracking_uri(cfg) == f"sqlite:///{local_store(cfg) / 'mlflow.db'}"
    assert stat.S_IMODE(local_store(cfg).stat().st_mode) == 0o700
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    exp = client.get_experiment_by_name("forge-python")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [mlrun]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith((local_store(cfg) / "artifacts" / "python").as_uri())
    p = run.data.params
    assert p["training.rank"] == "4" and p["training.max_steps"] == "4" and p["training.method"] == "lora"
    assert p["input.dataset"] == data.version and p["input.base_model"] == "c" * 16 and p["result.backend"] == "peft"
    t = run.data.tags
    assert t["forge.language"] == "python" and t["forge.adapter_version"] == art.version
    assert t["forge.dataset_version"] == data.version and t["forge.dagster_run_id"] == "dagster-run-1"
    assert t["forge.commit.app"] == "a" * 40 and t["forge.commit.lib"] == "b" * 40
    assert t["forge.eval_version"] == "e" * 16 and t["forge.eval_dagster_run_id"] == "dagster-run-2"

    train = client.get_metric_history(mlrun, "train_loss")
    assert [(m.step, m.value) for m in sorted(train, key=lambda m: m.step)] == [(int(s), v) for s, v in result["loss_curve"]]
    assert sorted(m.step for m in client.get_metric_history(mlrun, "valid_loss")) == [2, 4]
    m = run.data.metrics
    assert m["base_perplexity"] == 9.5 and m["adapter_perplexity"] == 7.25 and m["champion_perplexity"] == 8.0
    assert m["perplexity_ratio"] == 0.76 and m["adapter_fim_exact_match"] == 1 and m["base_perplexity_by.code"] == 9.0
    assert "adapter_humaneval_ran" not in m and "humaneval_skipped" not in m and m["training.steps"] == 4

    names = {f.path for f in client.list_artifacts(mlrun, "adapter")} | {f.path for f in client.list_artifacts(mlrun, "eval")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "eval/validation_report.md", "eval/scores.json"} <= names
    got = Path(client.download_artifacts(mlrun, "eval/validation_report.md", str(tmp_path / "dl")))
    assert got.read_text().startswith("# Validation report") and "forge-user:***@git.example.com" in got.read_text()

    # An adapter trained before tracking was on: eval opens its run, with the training part from the stored adapter.
    def copy(out: Path) -> dict:
        shutil.copytree(art.path, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
        (out / "README.md").write_text("another version\n")
        return result

    old = _adapter(store, {"dataset": data.version, "base_model": "c" * 16}, copy)
    assert old.version != art.version
    late = record_eval(cfg, "python", old.version, "f" * 16, {"adapter_perplexity": 7.0}, "", "dagster-run-3")
    assert late not in (None, mlrun)
    r2 = client.get_run(late)
    assert r2.data.tags["forge.adapter_version"] == old.version and r2.data.tags["forge.commit.app"] == "a" * 40
    assert r2.data.params["training.rank"] == "4" and r2.data.metrics["adapter_perplexity"] == 7.0
    assert len(client.get_metric_history(late, "train_loss")) == len(result["loss_curve"])

    leaked = [str(f) for f in local_store(cfg).rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()]
    assert leaked == []


def test_tracking_off_does_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _config(tmp_path, tracking=None)
    store = ArtifactStore(cfg.artifact_path)
    art = _adapter(store, {"dataset": "d" * 16}, _stub({}))
    assert record_training(cfg, "python", art, {"dataset": "d" * 16}, "run", None) is None
    assert record_eval(cfg, "python", art.version, "e" * 16, {"adapter_perplexity": 1.0}, "# r", "run") is None
    assert not local_store(cfg).exists()


@pytest.mark.slow
def test_an_unreachable_tracking_server_only_warns(tmp_path: Path, monkeypatch, caplog):
    from forge_assets_tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://forge:{SECRET}@127.0.0.1:{free_port()}")
    cfg = _config(tmp_path)
    store = ArtifactStore(cfg.artifact_path)
    art = _adapter(store, {"dataset": "d" * 16}, _stub({"loss_curve": [[1, 2.0]]}))
    told: list[str] = []
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="forge_assets.tracking"):
        assert record_training(cfg, "python", art, {"dataset": "d" * 16}, "run", {"app": "a" * 40}, log=told.append) is None
        assert time.monotonic() - started < 30  # Forge's bound: 2 retries (MLflow's default waits ~4 minutes)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's own setting wins
        assert record_eval(cfg, "python", art.version, "e" * 16, {"adapter_perplexity": 1.0}, "# r", "run", log=told.append) is None
    assert time.monotonic() - started < 35
    assert len(told) == 2 and "MLflow tracking skipped" in told[0] and "python" in told[0]
    assert all(SECRET not in m for m in told + [r.getMessage() for r in caplog.records])
    assert not local_store(cfg).exists()
