"""The whole asset graph for one language, materialized for real on a git repository made in the test."""

import json
import urllib.request
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from forge_assets.deploy import llama_server
from forge_assets.training import mlx_backend
from forge_assets_tests.conftest import commit_files, forge_instance, free_port, materialize_assets, write_config

ORDER = ["base_model", "repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores", "gguf", "deployment"]


def _materialization(instance: DagsterInstance, asset: str):
    return instance.get_latest_materialization_event(AssetKey(asset)).asset_materialization


def _versions(instance: DagsterInstance) -> dict[str, str]:
    return {a: _materialization(instance, a).tags["dagster/data_version"] for a in ORDER}


@pytest.fixture
def chain(two_language_repo: Path, tmp_path: Path):
    port = free_port()
    cfg = write_config(tmp_path, [two_language_repo], deploy={"port": port})
    with forge_instance() as instance:
        yield instance, cfg, two_language_repo, tmp_path / "artifacts"
        llama_server.stop(tmp_path / "artifacts" / "deployment" / "_endpoint")
        for mlx_state in (tmp_path / "artifacts" / "deployment").glob("*/mlx.json"):
            from forge_assets.deploy import mlx_target

            mlx_target.stop(json.loads(mlx_state.read_text()))


def _run(instance, cfg):
    return materialize_assets(cfg, instance=instance, raise_on_error=False)


@pytest.mark.slow
def test_commit_to_deployed_tag_then_unchanged_inputs_reuse_everything(chain):
    instance, cfg, repo, root = chain
    assert _run(instance, cfg).success
    versions = _versions(instance)

    data = root / "dataset" / "python" / "promoted"
    train = [json.loads(l) for l in (data / "train.jsonl").read_text().splitlines()]
    assert train and all("text" in r and r["language"] == "python" for r in train)
    assert not any(r["path"].endswith(".rs") for r in train)  # the Rust file belongs to another partition
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["inputs"]["repo_snapshot"] == versions["repo_snapshot"]

    assert (root / "adapter" / "python" / "promoted" / "adapter_model.safetensors").is_file()
    scores = _materialization(instance, "eval_scores").metadata
    assert scores["base_perplexity"].value > 0 and scores["adapter_perplexity"].value > 0
    # This two-file repository's test split is one sample: each kind it has gets a perplexity, HumanEval always runs
    # (every figure on a split with every kind: test_training/test_eval_scores.py).
    kinds = [k.removeprefix("test_samples_") for k in scores if k.startswith("test_samples_")]
    for side in ("base", "adapter"):
        assert kinds and all(scores[f"{side}_perplexity_{k}"].value > 0 for k in kinds)
        assert 0 <= scores[f"{side}_humaneval_pass_at_1"].value <= 1
    assert scores["humaneval_problems"].value == 2 and scores["sandbox_network_isolation"].value in ("netns", "socket-blocked")
    assert f"| perplexity_{kinds[0]} |" in scores["scores_table"].value

    gguf_meta = _materialization(instance, "gguf").metadata
    # served unmerged: the shared base GGUF + this language's LoRA GGUF
    assert gguf_meta["served_as"].value == "base+lora" and gguf_meta["lora_file"].value == "adapter-F16.gguf"
    assert gguf_meta["file"].value == "base-Q8_0.gguf" and gguf_meta["tokenizer_pre"].value == "qwen2"
    assert gguf_meta["smoke_completion_tokens"].value > 0  # llama.cpp loaded it and generated
    assert gguf_meta["gguf_perplexity"].value > 0 and gguf_meta["reference_perplexity"].value > 0
    assert abs(gguf_meta["quantization_loss_pct"].value) < 5  # Q8_0 costs little

    dep = _materialization(instance, "deployment").metadata
    tag, endpoint = dep["tag"].value, dep["endpoint"].value
    assert tag == f"forge-python:{versions['gguf'][:12]}"
    req = urllib.request.Request(f"{endpoint}/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": tag, "messages": [{"role": "user", "content": "def"}], "max_tokens": 4}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert json.loads(resp.read())["model"] == tag
    assert dep["endpoint_tags"].value == tag and dep["served_as"].value == "base + LoRA" and dep["context"].value >= 32768
    # ready-to-paste client configurations were written with the deployment
    clients = root / "deployment" / "python" / "promoted" / "clients"
    opencode = json.loads((clients / "opencode.json").read_text())
    assert opencode["model"] == f"forge/{tag}" and opencode["provider"]["forge"]["options"]["baseURL"] == endpoint
    assert (clients / "continue-config.yaml").is_file() and (clients / "tabby-config.toml").is_file()

    # Same inputs: every stage reuses its artifact and keeps its data version.
    assert _run(instance, cfg).success
    assert _versions(instance) == versions
    assert all(_materialization(instance, a).metadata["reused"].value for a in ORDER if a not in ("repo_snapshot", "session_logs"))

    # A Rust-only commit leaves the Python chain's versions as they were.
    commit_files(repo, {"src/lib.rs": "pub fn sub(a: i64, b: i64) -> i64 { a - b }\n"}, "rust change")
    assert _run(instance, cfg).success
    assert _versions(instance) == versions

    # The same gguf version on the other targets that run (or plan) from the adapter itself.
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy import mlx_target
    from forge_assets.deploy.service import MLX_STATE, deploy_gguf

    store = ArtifactStore(root)
    gguf_art = store.promoted("gguf", "python")
    vllm_cfg = load_config(cfg).model_copy(update={"deploy": load_config(cfg).deploy.model_copy(update={"target": "vllm", "port": 8000})})
    _, plan, _ = deploy_gguf(store, vllm_cfg, "python", gguf_art, log=lambda *_: None)
    assert plan["runs_here"] is False and "--enable-lora" in plan["command"] and tag in plan["command"]
    assert [m["name"] for m in plan["manifest"]["lora_modules"]] == [tag]
    mlx_port = free_port()
    mlx_cfg = load_config(cfg).model_copy(update={"deploy": load_config(cfg).deploy.model_copy(update={"target": "mlx-lm", "port": mlx_port})})
    _, rec, _ = deploy_gguf(store, mlx_cfg, "python", gguf_art, log=lambda *_: None)
    state = json.loads((root / "deployment" / "python" / MLX_STATE).read_text())
    assert rec["target"] == "mlx-lm" and mlx_target.health(state)["ok"] and rec["smoke"]["python"]["chat"] is not None
    mlx_target.stop(state)


@pytest.mark.skipif(not mlx_backend.available(), reason="mlx[cpu] / mlx-lm not installed")
@pytest.mark.slow
def test_mlx_backend_on_a_base_model_saved_to_disk(two_language_repo: Path, tiny_model: Path, tmp_path: Path):
    """backend: mlx trains the same `adapter` asset with mlx-lm, on a configured local Hugging Face model folder."""
    # Three steps on a random-initialised model: the gate is not what this test is about.
    cfg = write_config(tmp_path, [two_language_repo], base_model=str(tiny_model), training={"backend": "mlx", "max_steps": 3},
                       deploy={"max_perplexity_ratio": 100.0})
    with forge_instance() as instance:
        result = materialize_assets(cfg, ("base_model", "repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores"), instance=instance)
        assert result.success
        assert _materialization(instance, "adapter").metadata["backend"].value == "mlx"
        scores = _materialization(instance, "eval_scores").metadata
    root = tmp_path / "artifacts"
    assert json.loads((root / "base_model" / "all" / "promoted" / "model.json").read_text())["path"] == str(tiny_model)
    assert (root / "adapter" / "python" / "promoted" / "adapters.safetensors").is_file()
    assert scores["adapter_perplexity"].value > 0 and scores["base_perplexity"].value > 0
