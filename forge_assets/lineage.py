"""Adapter lineage: which promoted adapter a new one continues (`training.init_from: previous`), and why not.

Plain code over the artifact store, no Dagster. The parent is the language's promoted adapter, with three
fallbacks to a fresh adapter, each said in `note`: none promoted yet; trained on another base model version (its
weights do not fit the new base); written by another training backend than the one training now (PEFT and
mlx-lm adapters do not load into each other). When the parent's dataset is gone (`forge gc`) the parent is still
continued, with every sample counted as new (`parent_data` None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from forge_assets.artifacts import Artifact, ArtifactError, ArtifactStore


@dataclass(frozen=True)
class Lineage:
    parent: Artifact | None = None
    parent_data: Artifact | None = None
    note: str = ""  # why there is no parent, or what is missing; empty when the parent is continued as is
    warning: bool = False  # the note is a warning (a fallback the user did not ask for), not information

    def inputs(self) -> dict:
        """The manifest's extra input: {"adapter": parent version} when continuing one."""
        return {"adapter": self.parent.version} if self.parent else {}


def parent_adapter(store: ArtifactStore, language: str, *, init_from: str, base_version: str, backend: Callable[[], str]) -> Lineage:
    """The adapter to continue under `init_from` ("previous" continues; anything else trains fresh), given the base
    model version and `backend()`, the backend (`peft` / `mlx`) training uses now (asked only when it matters)."""
    from forge_assets.training.adapter import adapter_backend

    if init_from != "previous":
        return Lineage()
    parent = store.promoted("adapter", language)
    if parent is None:
        return Lineage(note=f"init_from: previous, but `{language}` has no promoted adapter yet: training a fresh one.")
    inputs = parent.manifest().get("inputs", {})
    if inputs.get("base_model") != base_version:
        return Lineage(note=f"adapter {parent.version} was trained on base model {inputs.get('base_model')}, not the current "
                            f"{base_version}: training a fresh adapter instead of continuing it.", warning=True)
    written_by, now = adapter_backend(parent.path), backend()
    if written_by != now:
        return Lineage(note=f"adapter {parent.version} was written by {written_by}, but training now uses {now}: "
                            "training a fresh adapter.", warning=True)
    try:
        parent_data = store.get("dataset", language, inputs["dataset"])
    except (ArtifactError, KeyError):  # removed by forge gc (or never recorded): every sample counts as new
        return Lineage(parent, None, f"the dataset {inputs.get('dataset')} of adapter {parent.version} is gone (forge gc?): "
                                     "every sample counts as new.", warning=True)
    return Lineage(parent, parent_data)
