"""`python -m bench`'s table: rows from each bench's JSON line, goals judged, and --merge keeping the other rows."""

from __future__ import annotations

import json

import bench.__main__ as bench_main


def _fake_run(results: dict):
    def run(bench, full, log_dir):
        data = results[bench.name]
        return {"name": bench.name, "args": [], "exit": 0 if data else 1, "seconds": 1.0, "result": data,
                "stderr_tail": [] if data else ["boom"]}
    return run


def test_one_table_then_a_merged_rerun_keeps_the_other_rows(tmp_path, monkeypatch):
    out = tmp_path / "results"
    monkeypatch.setattr(bench_main, "_commit", lambda: "aaaaaaa")
    monkeypatch.setattr(bench_main, "run_bench", _fake_run({
        "mining": {"forge_dedup_seconds": 0.5, "batch_baseline_dedup_seconds": 1.2, "ratio_vs_batch": 2.4,
                   "baseline_dedup_seconds": 6.0, "ratio": 12.0, "same_set": True, "same_set_batch": True},
        "scrub": None}))
    assert bench_main.main(["--only", "mining,scrub", "--out", str(out)]) == 1  # scrub failed: the command says so
    page = out.with_suffix(".md").read_text()
    assert "| mining | near-dedup vs datasketch's batch path" in page and "| 2.4 | >= 2.0 | yes |" in page
    assert "| scrub |" in page and "FAILED: exit 1" in page and "run |" not in page  # one run: no per-row column

    monkeypatch.setattr(bench_main, "_commit", lambda: "bbbbbbb")
    monkeypatch.setattr(bench_main, "run_bench", _fake_run({"scrub": {"forge_seconds": 0.4, "baseline_seconds": 20.0,
                                                                       "ratio": 50.0}}))
    assert bench_main.main(["--only", "scrub", "--merge", "--out", str(out)]) == 0
    table = json.loads(out.with_suffix(".json").read_text())["table"]
    assert [r["bench"] for r in table] == ["mining", "mining", "scrub"]  # BENCHES order, the mining rows kept
    assert table[0]["ratio"] == 2.4 and table[0]["commit"] == "aaaaaaa" and table[2]["commit"] == "bbbbbbb"
    assert table[2]["met"] is True and table[2]["error"] is None
    page = out.with_suffix(".md").read_text()
    assert "different commits" in page and "aaaaaaa |" in page and "bbbbbbb |" in page
    assert "| met? | also | run |" in page and "|---|---|---|---|---|---|---|---|---|" in page
    # Without --merge the table is only what ran.
    assert bench_main.main(["--only", "scrub", "--out", str(out)]) == 0
    assert [r["bench"] for r in json.loads(out.with_suffix(".json").read_text())["table"]] == ["scrub"]
