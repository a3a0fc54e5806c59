"""What the `adapter` asset trains, decided from the config and the store: the input key, the manifest, the
train_adapter step's arguments and the checkpoints folder, or that the parent adapter stands (nothing new to learn).

The asset only wires this: `adapter_plan`, reuse or run the step, `finish_adapter`. Training checkpoints live in
`<root>/adapter/<lang>/.checkpoints/<input key[:16]>/`, so re-materializing after a crash resumes there.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from forge_assets.artifacts import Artifact, ArtifactStore, input_key
from forge_assets.lineage import parent_adapter
from forge_assets.tracking import record_training, snapshot_commits
from forge_assets.training.adapter import choose_backend, incremental_texts
from forge_assets.training.base_model import model_folder
from forge_assets.training.data import read_texts

CODE_VERSION = "3"  # 3: transformers' Trainer (accumulation, schedule, checkpoints), methods, incremental


@dataclass
class AdapterPlan:
    """One language's adapter: `stands` is the parent kept as it is (no new train sample); otherwise train to `key`."""

    language: str
    dataset: Artifact
    base: Artifact
    parent: Artifact | None
    notes: list[tuple[str, str]] = field(default_factory=list)  # (log level, text), in order
    stands: Artifact | None = None
    key: str = ""
    inputs: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)  # train_adapter's arguments, less `out`
    checkpoints: Path | None = None

    def clear_stale_checkpoints(self) -> None:
        """Remove the checkpoints of other inputs: they can never be resumed."""
        root = self.checkpoints.parent
        if root.is_dir():
            for old in root.iterdir():
                if old != self.checkpoints:
                    shutil.rmtree(old, ignore_errors=True)


def adapter_plan(cfg, store: ArtifactStore, language: str) -> AdapterPlan:
    """Resolve the adapter's inputs (dataset, base model, with `init_from: previous` the parent) into a plan."""
    data = store.require("dataset", language)
    base = store.require("base_model", "all")
    # With init_from: previous, the promoted adapter to continue, or why a fresh one is trained (lineage.py).
    line = parent_adapter(store, language, init_from=cfg.training.init_from, base_version=base.version,
                          backend=lambda: choose_backend(cfg.training.backend, model_folder(base.path)))
    parent, parent_data = line.parent, line.parent_data
    plan = AdapterPlan(language=language, dataset=data, base=base, parent=parent)
    if line.note:
        plan.notes.append(("warning" if line.warning else "info", line.note))
    if parent is not None and parent_data is not None:
        picked, sel = incremental_texts(read_texts(data.path, "train"), read_texts(parent_data.path, "train"), cfg.training.replay, cfg.training.seed)
        if not picked:
            plan.notes.append(("info", f"no train sample is new since parent adapter {parent.version} (dataset {parent_data.version}); it stands."))
            plan.stands = parent
            return plan
    plan.key = input_key(dataset=data.version, base=base.version, training=cfg.training.model_dump(), code=CODE_VERSION,
                         parent=parent.version if parent else None)
    plan.inputs = {"dataset": data.version, "base_model": base.version, **line.inputs()}
    plan.manifest = {"input_key": plan.key, "inputs": plan.inputs, "training": cfg.training.model_dump(),
                     "parent_adapter": parent.version if parent else None}
    plan.checkpoints = store.folder("adapter", language) / ".checkpoints" / plan.key[:16]
    plan.args = {"base": str(model_folder(base.path)), "dataset": str(data.path), "training": cfg.training.model_dump(exclude_unset=True),
                 "checkpoints": str(plan.checkpoints) if cfg.training.checkpoint_every else None,
                 "parent": str(parent.path) if parent else None, "parent_dataset": str(parent_data.path) if parent_data else None}
    return plan


def finish_adapter(cfg, store: ArtifactStore, plan: AdapterPlan, adapter: Artifact, run_id: str | None, log=None) -> None:
    """After the adapter is stored: its checkpoints removed, its training recorded (tracking: mlflow)."""
    shutil.rmtree(plan.checkpoints, ignore_errors=True)
    record_training(cfg, plan.language, adapter, plan.inputs, run_id, snapshot_commits(store, plan.dataset), log=log)
