"""Promotion policy of an evaluation: what the gate verdicts decide, and what is written beside the version.

Plain code over the artifact store, no Dagster. `eval_scores` judges a version's scores (evaluation/gate.py), then
calls `settle`: the verdicts go into the version's manifest (for `forge status` and `forge history`), the
validation report beside it, and when every gate passes both the scores and the adapter they judged are promoted;
when one fails both stay candidates and what is served does not move. Both files are derived (they depend on
today's `gates:`), so they sit outside the version's content hash and are rewritten atomically on every judging.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from forge_assets.artifacts import MANIFEST, Artifact, ArtifactStore
from forge_assets.evaluation.gate import Verdict
from forge_assets.files import atomic_write

@dataclass(frozen=True)
class Decision:
    promoted: bool
    failed: list[Verdict]
    skipped: list[Verdict]
    message: str  # the one line the run logs (INFO when promoted; the failures are logged one by one)


def gate_records(verdicts: list[Verdict]) -> list[dict]:
    """The verdicts as the manifest's `gates` list: {name, passed, message[, skipped]}."""
    return [{"name": v.name, "passed": v.passed, "message": v.message, **({"skipped": True} if v.skipped else {})} for v in verdicts]


def record_gates(art: Artifact, verdicts: list[Verdict]) -> None:
    """Write the gate verdicts into the version's manifest (not part of its content hash), atomically."""
    path = art.path / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["gates"] = gate_records(verdicts)
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True, default=str))


def write_beside(art: Artifact, name: str, text: str) -> None:
    """A derived file (the validation report) written atomically into the version's folder, outside its content hash."""
    atomic_write(art.path / name, text)


def decide(verdicts: list[Verdict]) -> Decision:
    """Promote only when every gate passed; a skipped gate blocks nothing (and claims no pass)."""
    bad = [v for v in verdicts if not v.passed]
    skipped = [v for v in verdicts if v.skipped]
    message = " ".join(v.message for v in verdicts) if not bad else "; ".join(f"{v.name}: {v.message}" for v in bad)
    return Decision(not bad, bad, skipped, message)


def settle(store: ArtifactStore, scores: Artifact, adapter: Artifact, verdicts: list[Verdict], report: str, report_name: str) -> Decision:
    """Record the verdicts and the report on the eval_scores version, and promote it with its adapter when every gate passed."""
    record_gates(scores, verdicts)
    write_beside(scores, report_name, report)
    decision = decide(verdicts)
    if decision.promoted:
        store.promote(scores)
        store.promote(adapter)
    return decision


__all__ = ["Decision", "decide", "gate_records", "record_gates", "settle", "write_beside"]
