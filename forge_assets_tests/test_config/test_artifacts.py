"""The artifact store: content-addressed versions, atomic writes, `promoted` kept on failure."""

import json
import os
from pathlib import Path

import pytest

from forge_assets.artifacts import ArtifactError, ArtifactStore, input_key


def test_write_makes_a_content_addressed_version_and_promotes_it(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    with store.write("dataset", "python", {"input_key": "k1"}) as out:
        (out.path / "train.jsonl").write_text('{"text": "a"}\n')
    art = out.artifact
    assert art.path == tmp_path / "dataset" / "python" / art.version
    assert (tmp_path / "dataset" / "python" / "promoted").resolve() == art.path
    assert (tmp_path / "dataset" / "python" / "candidate").resolve() == art.path
    assert art.manifest()["input_key"] == "k1" and art.manifest()["version"] == art.version
    assert store.promoted("dataset", "python") == art
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


def test_failed_write_leaves_promoted_and_no_debris(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    with store.write("adapter", "go", {}) as out:
        (out.path / "adapter_model.safetensors").write_bytes(b"good")
    good = out.artifact
    with pytest.raises(RuntimeError):
        with store.write("adapter", "go", {}) as bad:
            (bad.path / "adapter_model.safetensors").write_bytes(b"half-written")
            raise RuntimeError("training crashed")
    assert store.promoted("adapter", "go") == good
    assert (good.path / "adapter_model.safetensors").read_bytes() == b"good"
    leftovers = [p.name for p in (tmp_path / "adapter" / "go").iterdir()]
    assert sorted(leftovers) == sorted([good.version, "candidate", "promoted", "history.jsonl"])  # history: one promote event


def test_require_names_the_asset_to_materialize(tmp_path: Path):
    with pytest.raises(ArtifactError, match="materialize `dataset` for `ruby`"):
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


def test_a_candidate_is_not_used_downstream_until_promoted(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    with store.write("adapter", "python", {"input_key": "good"}) as out:
        (out.path / "w").write_bytes(b"good")
    good = out.artifact
    with store.write("adapter", "python", {"input_key": "new"}, promote=False) as out:
        (out.path / "w").write_bytes(b"rejected")
    cand = out.artifact
    assert store.promoted("adapter", "python") == good and store.require("adapter", "python") == good
    assert store.candidate("adapter", "python") == cand
    assert store.reusable("adapter", "python", "new") == cand  # same inputs: no retraining, still not promoted
    store.promote(cand)
    assert store.require("adapter", "python") == cand
    assert store.get("adapter", "python", good.version) == good
    with pytest.raises(ArtifactError, match="rematerialize `adapter`"):
        store.get("adapter", "python", "0" * 16)


def test_stale_temp_folders_of_dead_writers_are_removed(tmp_path: Path):
    import subprocess

    store = ArtifactStore(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    base = tmp_path / "dataset" / "python"
    base.mkdir(parents=True)
    (base / f".tmp-{dead.pid}-abc").mkdir()  # left by a writer killed with -9
    (base / f".tmp-{dead.pid}-abc" / "train.jsonl").write_text("half")
    (base / f".promoted-{dead.pid}-1").symlink_to("nowhere")
    live = base / f".tmp-{os.getpid()}-live"  # a writer still running keeps its folder
    live.mkdir()
    with store.write("dataset", "python", {}) as out:
        (out.path / "train.jsonl").write_text("x")
    names = sorted(p.name for p in base.iterdir())
    assert names == sorted([out.artifact.version, "candidate", "promoted", "history.jsonl", live.name])


def test_writing_the_same_content_twice_at_once_never_fails(tmp_path: Path):
    """Two writers racing to store identical content (the `Directory not empty` race): both succeed, one version."""
    from concurrent.futures import ThreadPoolExecutor

    store = ArtifactStore(tmp_path)
    barrier = __import__("threading").Barrier(8)

    def write(_):
        with store.write("gguf", "python", {}) as out:
            (out.path / "model.gguf").write_bytes(b"GGUF" + bytes(1000))
            barrier.wait()  # everyone finishes filling before anyone renames
        return out.artifact.version

    with ThreadPoolExecutor(8) as pool:
        versions = set(pool.map(write, range(8)))
    assert len(versions) == 1
    dirs = [p for p in (tmp_path / "gguf" / "python").iterdir() if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()]
    assert [d.name for d in dirs] == list(versions)


def test_gc_keeps_promoted_deployed_newest_and_their_inputs(tmp_path: Path):
    import time

    store = ArtifactStore(tmp_path)

    def put(asset, lang, body, inputs=None, promote=True):
        with store.write(asset, lang, {"inputs": inputs or {}}, promote=promote) as out:
            (out.path / "f").write_text(body)
        time.sleep(0.01)
        return out.artifact

    base_old = put("base_model", "all", "base-old")
    adapters = [put("adapter", "python", f"a{i}", {"base_model": base_old.version}) for i in range(4)]
    base_new = put("base_model", "all", "base-new")
    newest = put("adapter", "python", "a-new", {"base_model": base_new.version}, promote=False)
    # adapters[-1] is promoted and was trained on base_old: that base must stay although it is no longer promoted.
    removed = {(a.asset, a.version) for a in store.gc(keep=1)}
    assert removed == {("adapter", a.version) for a in adapters[:3]}
    assert store.get("base_model", "all", base_old.version) and store.promoted("adapter", "python") == adapters[-1]
    assert store.candidate("adapter", "python") == newest
    # What a deployment protects survives keep=0.
    removed = {(a.asset, a.version) for a in store.gc(keep=0, protect={("adapter", "python", adapters[-1].version)})}
    assert removed == set()
