"""lineage.py: which adapter `training.init_from: previous` continues, and its three fallbacks, on a real store;
export/plan.py: the merge decision and the base GGUF's folder name."""

from pathlib import Path

from forge_assets.artifacts import ArtifactStore
from forge_assets.config import DeployConfig
from forge_assets.export.plan import BASE_GGUF_VERSION, base_gguf_folder, needs_merge
from forge_assets.lineage import parent_adapter


def _store(tmp_path, *, base="b1", weights="adapter_model.safetensors", dataset=True) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "artifacts")
    with store.write("dataset", "python", {}) as data:
        (data.path / "train.jsonl").write_text('{"text": "x"}\n')
    with store.write("adapter", "python", {"inputs": {"base_model": base, "dataset": data.artifact.version}}) as ad:
        (ad.path / weights).write_text("w")
    if not dataset:
        import shutil

        shutil.rmtree(data.artifact.path)
    return store


def _parent(store, init_from="previous", base="b1", backend="peft"):
    return parent_adapter(store, "python", init_from=init_from, base_version=base, backend=lambda: backend)


def test_continues_the_promoted_adapter_with_its_dataset(tmp_path):
    store = _store(tmp_path)
    line = _parent(store)
    assert line.parent.version == store.promoted("adapter", "python").version
    assert line.parent_data.version == store.promoted("dataset", "python").version
    assert line.note == "" and line.inputs() == {"adapter": line.parent.version}


def test_fresh_when_not_asked_and_when_nothing_is_promoted(tmp_path):
    def boom():
        raise AssertionError("the backend is not asked when it does not matter")

    assert parent_adapter(_store(tmp_path), "python", init_from="fresh", base_version="b1", backend=boom).parent is None
    empty = _parent(ArtifactStore(tmp_path / "empty"))
    assert empty.parent is None and not empty.warning and "has no promoted adapter yet" in empty.note and empty.inputs() == {}


def test_fresh_on_another_base_or_another_backend(tmp_path):
    other = _parent(_store(tmp_path / "a"), base="b2")
    assert other.parent is None and other.warning and "not the current b2" in other.note
    mlx = _parent(_store(tmp_path / "b", weights="adapters.safetensors"), backend="peft")
    assert mlx.parent is None and mlx.warning and "written by mlx, but training now uses peft" in mlx.note
    assert _parent(_store(tmp_path / "c", weights="adapters.safetensors"), backend="mlx").parent is not None


def test_a_removed_dataset_keeps_the_parent_and_counts_every_sample_new(tmp_path):
    line = _parent(_store(tmp_path, dataset=False))
    assert line.parent is not None and line.parent_data is None and line.warning and "every sample counts as new" in line.note


def test_merge_comes_from_the_target_and_the_base_folder_from_its_name():
    assert not needs_merge(DeployConfig())
    assert needs_merge(DeployConfig(target="ollama")) and needs_merge(DeployConfig(merge=True))
    root = Path("/r")
    assert base_gguf_folder(root, "0123456789abcdef0123", "Q8_0") == root / "base_gguf" / f"0123456789abcdef-Q8_0-v{BASE_GGUF_VERSION}"
    assert base_gguf_folder(root, "0123456789abcdef0123", "Q8_0", "F32").name.endswith(f"-v{BASE_GGUF_VERSION}-F32")
