"""The approval queue (deploy/approval.py) on a real artifact store: what waits, what replaces it, rejections and
refusals. Serving itself is covered through `forge run` in test_assets/test_approval_run.py."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from forge_assets.artifacts import ArtifactStore
from forge_assets.config import ForgeConfig
from forge_assets.deploy import approval
from forge_assets.deploy.approval import ApprovalError
from forge_assets.deploy.history import decision_events


def _gguf(store: ArtifactStore, label: str):
    with store.write("gguf", "python", {"inputs": {"adapter": "a0", "eval_scores": None}, "figures": {}}) as out:
        (out.path / "model-Q8_0.gguf").write_text(label)
    time.sleep(0.01)
    return out.artifact


@pytest.fixture
def queue(tmp_path: Path):
    return ArtifactStore(tmp_path / "artifacts"), ForgeConfig(deploy={"approval": "manual"}, base_dir=str(tmp_path))


def test_a_newer_candidate_replaces_the_older_and_a_rejection_empties_the_queue(queue):
    store, cfg = queue
    assert approval.pending(store, cfg, "python") is None
    v1 = _gguf(store, "one")
    held = approval.hold(store, cfg, "python", v1)
    assert held.tag == f"forge-python:{v1.version[:12]}" and held.serving is None and held.report is None
    assert approval.hold(store, cfg, "python", v1).since == held.since  # held once per version
    assert approval.pending(store, cfg, "python").version == v1.version
    v2 = _gguf(store, "two")  # a newer candidate (promoted by its export)
    assert approval.pending(store, cfg, "python") is None  # v1 is not gguf's promoted version any more
    approval.hold(store, cfg, "python", v2)
    assert approval.pending(store, cfg, "python").version == v2.version

    with pytest.raises(ApprovalError, match="needs a reason"):
        approval.reject(store, cfg, "python", "  ")
    with pytest.raises(ApprovalError, match=f"{v1.version[:12]} of `python` is no longer the candidate: {v2.version[:12]}"):
        approval.reject(store, cfg, "python", "bad", version=v1.version[:12])
    cand = approval.reject(store, cfg, "python", "FIM got worse on our handlers", version=f"forge-python:{v2.version[:12]}")
    assert cand.version == v2.version and approval.pending(store, cfg, "python") is None
    last = decision_events(store, "python")[-1]
    assert last["event"] == "reject" and last["reason"] == "FIM got worse on our handlers" and last["version"] == v2.version
    assert [e["event"] for e in decision_events(store, "python")] == ["awaiting", "awaiting", "reject"]
    with pytest.raises(ApprovalError, match="no candidate of `python` awaits approval"):
        approval.approve(store, cfg, "python")


def test_approving_a_removed_or_unknown_version_says_so(queue):
    store, cfg = queue
    v1 = _gguf(store, "one")
    approval.hold(store, cfg, "python", v1)
    with pytest.raises(ApprovalError, match="no `gguf` version of `python` matches 'ffffffff'"):
        approval.approve(store, cfg, "python", version="ffffffff")
    shutil.rmtree(v1.path)  # as `forge gc` would
    with pytest.raises(ApprovalError, match="removed by `forge gc`"):
        approval.approve(store, cfg, "python")


def test_only_runs_a_person_started_count_as_approval():
    assert approval.automated({"forge/pgid": "123", "forge/host": "h"})  # forge run
    assert approval.automated({"dagster/sensor_name": "git_push_sensor"})
    assert approval.automated({"dagster/schedule_name": "forge_schedule"})
    assert not approval.automated({})  # the Dagster UI, `dagster asset materialize`
    assert not approval.automated({"dagster/backfill": "abc"})
