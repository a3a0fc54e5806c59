"""The artifact store: content-addressed versions, atomic writes, `latest` kept on failure."""

import json
from pathlib import Path

import pytest

from forge_assets.artifacts import ArtifactStore, input_key


def test_write_makes_a_content_addressed_version_and_latest(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    with store.write("dataset", "python", {"input_key": "k1"}) as out:
        (out.path / "train.jsonl").write_text('{"text": "a"}\n')
    art = out.artifact
    assert art.path == tmp_path / "dataset" / "python" / art.version
    assert (tmp_path / "dataset" / "python" / "latest").resolve() == art.path
    assert art.manifest()["input_key"] == "k1" and art.manifest()["version"] == art.version
    assert store.latest("dataset", "python") == art
    assert store.reusable("dataset", "python", "k1") == art and store.reusable("dataset", "python", "k2") is None


def test_same_content_gives_the_same_version(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    versions = []
    for _ in range(2):
        with store.write("gguf", "rust", {}) as out:
            (out.path / "model.gguf").write_bytes(b"GGUF" + bytes(100))
        versions.append(out.artifact.version)
    assert versions[0] == versions[1]
    assert len([p for p in (tmp_path / "gguf" / "rust").iterdir() if p.is_dir() and not p.is_symlink()]) == 1


def test_failed_write_leaves_latest_and_no_debris(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    with store.write("adapter", "go", {}) as out:
        (out.path / "adapter_model.safetensors").write_bytes(b"good")
    good = out.artifact
    with pytest.raises(RuntimeError):
        with store.write("adapter", "go", {}) as bad:
            (bad.path / "adapter_model.safetensors").write_bytes(b"half-written")
            raise RuntimeError("training crashed")
    assert store.latest("adapter", "go") == good
    assert (good.path / "adapter_model.safetensors").read_bytes() == b"good"
    leftovers = [p.name for p in (tmp_path / "adapter" / "go").iterdir()]
    assert sorted(leftovers) == sorted([good.version, "latest"])


def test_require_names_the_asset_to_materialize(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="materialize `dataset` for `ruby`"):
        ArtifactStore(tmp_path).require("dataset", "ruby")


def test_input_key_is_order_independent():
    assert input_key(a=1, b={"x": 2, "y": 3}) == input_key(b={"y": 3, "x": 2}, a=1)
    assert input_key(a=1) != input_key(a=2)


def test_manifest_is_json_with_timings(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    with store.write("eval_scores", "python", {"inputs": {"adapter": "abc"}}) as out:
        (out.path / "scores.json").write_text("{}")
    man = json.loads((out.artifact.path / "manifest.json").read_text())
    assert man["inputs"] == {"adapter": "abc"} and man["seconds"] >= 0 and man["created_at"].endswith("Z")
