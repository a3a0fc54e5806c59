"""Good versions are never replaced by bad ones: candidates vs promoted, and a gate that cannot be bypassed."""

import json
from pathlib import Path

import pytest
from dagster import AssetKey

from forge_assets.deploy import llama_server
from forge_assets_tests.conftest import commit_files, forge_instance, free_port, git, materialize_assets, write_config


def _run(instance, cfg, names=None):
    return materialize_assets(cfg, names, instance=instance, raise_on_error=False)


def _promoted(root: Path, asset: str) -> str:
    return (root / asset / "python" / "promoted").resolve().name


def _error_text(result) -> str:
    texts = []
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            data = ev.step_failure_data
            texts.append((data.user_failure_data.description if data.user_failure_data else "") or "")
            err = data.error
            while err is not None:
                texts.append(err.message)
                err = err.cause
    return "\n".join(texts)


@pytest.mark.slow
def test_a_rejected_adapter_is_never_promoted_exported_or_deployed_even_when_gguf_is_run_alone(two_language_repo: Path, tmp_path: Path):
    port = free_port()
    root = tmp_path / "artifacts"
    good_cfg = write_config(tmp_path, [two_language_repo], deploy={"port": port})
    with forge_instance() as instance:
        try:
            assert _run(instance, good_cfg).success
            good = {a: _promoted(root, a) for a in ("adapter", "eval_scores", "gguf", "deployment")}
            served = json.loads((root / "deployment" / "python" / "promoted" / "deployment.json").read_text())

            # A new adapter (other training settings) judged with an impossible limit: rejected.
            strict = write_config(tmp_path, [two_language_repo], deploy={"port": port}, gates={"max_perplexity_ratio": 0.01},
                                  training={"max_steps": 7})
            result = _run(instance, strict)
            assert not result.success
            check = [e for e in result.get_asset_check_evaluations() if e.check_name == "adapter_beats_base"][0]
            assert not check.passed and "Fix: train longer" in check.description
            assert (root / "adapter" / "python" / "candidate").resolve().name != good["adapter"]  # trained, stored ...
            assert {a: _promoted(root, a) for a in good} == good  # ... but nothing promoted moved

            # The bypass of the issue: gguf and deployment materialized on their own.
            alone = _run(instance, strict, names={"gguf", "deployment"})
            assert not alone.success
            assert "does not pass adapter_beats_base" in _error_text(alone)
            assert {a: _promoted(root, a) for a in good} == good
            # The good deployment is still the one answering.
            health = llama_server.read_state(root / "deployment" / "_endpoint")
            assert health["tag"] == served["tag"]
            assert instance.get_latest_materialization_event(AssetKey("gguf")).asset_materialization.metadata["version"].value == good["gguf"]

            # The good adapter again, but a GGUF quantized past the quantization-loss gate: written, never promoted or served.
            lossy = write_config(tmp_path, [two_language_repo], deploy={"port": port, "quantization": "Q4_K_M"},
                                 gates={"max_quantization_loss_pct": 0.0})
            result = _run(instance, lossy)
            assert not result.success
            check = [e for e in result.get_asset_check_evaluations() if e.check_name == "quantization_loss"][0]
            loss = check.metadata["quantization_loss_pct"].value
            assert not check.passed and loss > 0 and "Q4_K_M" in check.description and "Fix:" in check.description
            assert (root / "gguf" / "python" / "candidate").resolve().name != good["gguf"]
            assert {a: _promoted(root, a) for a in good} == good
            assert llama_server.read_state(root / "deployment" / "_endpoint")["tag"] == served["tag"]
        finally:
            llama_server.stop(root / "deployment" / "_endpoint")


def test_a_repository_that_loses_its_files_keeps_the_promoted_snapshot_and_dataset(py_repo: Path, tmp_path: Path):
    cfg = write_config(tmp_path, [py_repo])
    root = tmp_path / "artifacts"
    with forge_instance() as instance:
        names = {"repo_snapshot", "session_logs", "dataset"}
        assert _run(instance, cfg, names).success
        before = {a: _promoted(root, a) for a in ("repo_snapshot", "dataset")}
        git(py_repo, "rm", "-q", "-r", "app")
        commit_files(py_repo, {"README.md": "no code left\n"}, "remove the code")
        result = _run(instance, cfg, names)
        assert not result.success
        assert "not promoted" in _error_text(result) and "Fix:" in _error_text(result)
        assert {a: _promoted(root, a) for a in before} == before
