"""training/plan.py: what the `adapter` asset trains, on a real store in tmp_path: the input key exactly as the asset
composed it before (so existing stores are reused), the manifest and step arguments, the parent that stands, and
the checkpoint folders' housekeeping."""

import json

from forge_assets.artifacts import ArtifactStore, input_key
from forge_assets.config import ForgeConfig
from forge_assets.training.plan import CODE_VERSION, adapter_plan, finish_adapter

TRAIN = '{"text": "def a(): pass"}\n{"text": "def b(): pass"}\n'


def _store(tmp_path, train=TRAIN) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "artifacts")
    with store.write("base_model", "all", {}) as base:
        (base.path / "config.json").write_text("{}")
    with store.write("dataset", "python", {}) as data:
        (data.path / "train.jsonl").write_text(train)
    return store


def _promote_adapter(store: ArtifactStore) -> str:
    data, base = store.require("dataset", "python"), store.require("base_model", "all")
    with store.write("adapter", "python", {"inputs": {"base_model": base.version, "dataset": data.version}, "result": {"steps": 7}}) as ad:
        (ad.path / "adapter_model.safetensors").write_text("w")
    return ad.artifact.version


def test_a_fresh_adapter_keys_manifests_and_argues_as_before(tmp_path):
    store, cfg = _store(tmp_path), ForgeConfig(training={"max_steps": 5})
    data, base = store.require("dataset", "python"), store.require("base_model", "all")
    plan = adapter_plan(cfg, store, "python")
    # The key the asset has always composed, so adapters already stored are reused.
    assert plan.key == input_key(dataset=data.version, base=base.version, training=cfg.training.model_dump(), code=CODE_VERSION, parent=None)
    assert CODE_VERSION == "3" and plan.stands is None and plan.parent is None and plan.notes == []
    assert plan.inputs == {"dataset": data.version, "base_model": base.version}
    assert plan.manifest == {"input_key": plan.key, "inputs": plan.inputs, "training": cfg.training.model_dump(), "parent_adapter": None}
    assert plan.checkpoints == store.folder("adapter", "python") / ".checkpoints" / plan.key[:16]
    assert plan.args == {"base": str(base.path), "dataset": str(data.path), "training": {"max_steps": 5},
                         "checkpoints": str(plan.checkpoints), "parent": None, "parent_dataset": None}
    assert adapter_plan(ForgeConfig(training={"checkpoint_every": None}), store, "python").args["checkpoints"] is None
    assert adapter_plan(ForgeConfig(training={"max_steps": 6}), store, "python").key != plan.key


def test_the_base_model_reference_is_followed_to_its_folder(tmp_path):
    store = _store(tmp_path)
    with store.write("base_model", "all", {}) as base:
        (base.path / "model.json").write_text(json.dumps({"path": str(tmp_path / "hf-model")}))
    assert adapter_plan(ForgeConfig(), store, "python").args["base"] == str(tmp_path / "hf-model")


def test_continuing_the_promoted_adapter_keys_its_version_and_stands_when_nothing_is_new(tmp_path):
    store = _store(tmp_path)
    parent = _promote_adapter(store)
    cfg = ForgeConfig(training={"init_from": "previous", "backend": "peft"})
    stands = adapter_plan(cfg, store, "python")  # the same dataset: no new train sample
    assert stands.stands is not None and stands.stands.version == parent and stands.key == "" and stands.manifest == {}
    assert stands.notes[-1] == ("info", f"no train sample is new since parent adapter {parent} (dataset {store.require('dataset', 'python').version}); it stands.")
    with store.write("dataset", "python", {}) as data:
        (data.path / "train.jsonl").write_text(TRAIN + '{"text": "def c(): pass"}\n')
    plan = adapter_plan(cfg, store, "python")
    base = store.require("base_model", "all")
    assert plan.stands is None and plan.parent.version == parent
    assert plan.key == input_key(dataset=data.artifact.version, base=base.version, training=cfg.training.model_dump(), code=CODE_VERSION, parent=parent)
    assert plan.inputs == {"dataset": data.artifact.version, "base_model": base.version, "adapter": parent}
    assert plan.manifest["parent_adapter"] == parent and plan.args["parent"] == str(plan.parent.path)
    first = store.get("dataset", "python", store.get("adapter", "python", parent).manifest()["inputs"]["dataset"])
    assert first.version != data.artifact.version and plan.args["parent_dataset"] == str(first.path)


def test_a_note_says_why_a_fresh_adapter_is_trained(tmp_path):
    plan = adapter_plan(ForgeConfig(training={"init_from": "previous", "backend": "peft"}), _store(tmp_path), "python")
    assert plan.parent is None and len(plan.notes) == 1 and plan.notes[0][0] == "info" and "has no promoted adapter yet" in plan.notes[0][1]


def test_stale_checkpoints_go_before_training_and_its_own_after_the_adapter_is_stored(tmp_path):
    store, cfg = _store(tmp_path), ForgeConfig()
    plan = adapter_plan(cfg, store, "python")
    plan.clear_stale_checkpoints()  # no .checkpoints folder yet: nothing to do
    stale = plan.checkpoints.parent / "0000000000000000"
    (stale / "checkpoint-10").mkdir(parents=True)
    (plan.checkpoints / "checkpoint-20").mkdir(parents=True)
    plan.clear_stale_checkpoints()
    assert not stale.exists() and (plan.checkpoints / "checkpoint-20").is_dir()
    with store.write("adapter", "python", plan.manifest, promote=False) as out:
        (out.path / "adapter_model.safetensors").write_text("w")
    finish_adapter(cfg, store, plan, out.artifact, None, log=lambda m: (_ for _ in ()).throw(AssertionError(m)))
    assert not plan.checkpoints.exists() and store.candidate("adapter", "python").version == out.artifact.version
