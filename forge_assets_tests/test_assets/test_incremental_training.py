"""The nightly flow: `init_from: previous` continues the promoted adapter on new samples plus a replay share,
with lineage to the parent; the UI gets loss observations and a Markdown chart."""

import json
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, EventRecordsFilter

from forge_assets_tests.conftest import commit_files, forge_instance, materialize_assets, write_config

pytestmark = pytest.mark.slow  # the chain up to eval_scores, three times

UPTO = ("base_model", "repo_snapshot", "session_logs", "dataset", "adapter", "eval_scores")

NEW_FILE = '''"""Billing: invoices and their totals."""


def invoice_total(lines: list[dict]) -> float:
    """The sum of quantity times unit price over the invoice lines."""
    return sum(line["quantity"] * line["unit_price"] for line in lines)


def overdue(invoices: list[dict], today: str) -> list[dict]:
    """Invoices whose due date is before today and that are not paid."""
    return [inv for inv in invoices if inv["due"] < today and not inv.get("paid")]


class Ledger:
    """Posted invoices by customer."""

    def __init__(self):
        self.by_customer: dict[str, list[dict]] = {}

    def post(self, customer: str, invoice: dict) -> None:
        self.by_customer.setdefault(customer, []).append(invoice)

    def balance(self, customer: str) -> float:
        return sum(invoice_total(inv["lines"]) for inv in self.by_customer.get(customer, []))
'''


def _run(instance, cfg):
    return materialize_assets(cfg, UPTO, instance=instance)


def test_init_from_previous_continues_the_promoted_adapter_on_new_samples(py_repo: Path, tmp_path: Path):
    # Lineage, not quality, is tested here: the gates are lenient (a 6-step continuation on forge-tiny may score a little
    # worse than its parent), but the parent is still scored as the champion.
    cfg = write_config(tmp_path, [py_repo], languages=["python"], deploy={"max_perplexity_ratio": 100.0}, gates={"served_tolerance": 1.0},
                       training={"init_from": "previous", "replay": 0.25, "eval_every": 2, "seq_len": 256})
    root = tmp_path / "artifacts" / "adapter" / "python"
    with forge_instance() as instance:
        assert _run(instance, cfg).success
        first = (root / "promoted").resolve().name
        first_manifest = json.loads((root / first / "manifest.json").read_text())
        assert first_manifest["parent_adapter"] is None  # nothing to continue yet: a fresh adapter

        commit_files(py_repo, {"app/billing.py": NEW_FILE}, "Add billing")
        assert _run(instance, cfg).success
        second = (root / "promoted").resolve().name
        man = json.loads((root / second / "manifest.json").read_text())
        assert second != first and man["parent_adapter"] == first and man["inputs"]["adapter"] == first  # lineage
        res = man["result"]
        assert res["new_samples"] > 0 and res["older_samples"] > 0
        assert res["replayed_samples"] == min(res["older_samples"], round(res["new_samples"] * 0.25 / 0.75))
        assert res["train_samples"] == res["new_samples"] + res["replayed_samples"]
        ev = (tmp_path / "artifacts" / "eval_scores" / "python" / "promoted").resolve()
        scores = json.loads((ev / "scores.json").read_text())
        assert scores["champion_version"] == first and any(k.startswith("served_perplexity_ratio_") for k in scores)

        # curves people can look at: observations per logged step (the Plots tab) and a Markdown chart
        mat = instance.get_latest_materialization_event(AssetKey("adapter")).asset_materialization
        assert mat.metadata["loss_chart"].value.startswith("```") and "legend: · train, o valid" in mat.metadata["loss_chart"].value
        obs = instance.get_event_records(EventRecordsFilter(event_type=DagsterEventType.ASSET_OBSERVATION, asset_key=AssetKey("adapter")))
        points = [r.event_log_entry.dagster_event.asset_observation_data.asset_observation.metadata for r in obs]
        assert points and all("train_loss" in p and "step" in p for p in points)
        assert any("valid_loss" in p for p in points)

        assert _run(instance, cfg).success  # unchanged inputs: the same adapter, not another generation
        assert (root / "candidate").resolve().name == second
