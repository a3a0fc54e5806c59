"""Every benchmark in one command, and one table of where Forge stands against what a user would pick instead.

    python -m bench [--only NAME[,NAME...]] [--full] [--out docs/bench-results]

Runs each script of bench/ in its own process, one after the other, with arguments sized so that the whole run fits
about 15 minutes on 2 CPU cores (``--full`` runs each with its own defaults instead: over an hour), reads the JSON
line each prints, and prints one table: bench, what is compared, Forge's figure, the peer's, the ratio, the goal and
whether it is met. It writes the table as ``<out>.json`` (every bench's whole JSON line too, the arguments, commit,
date and machine) and ``<out>.md``, the page the README links to. A bench that fails or times out is a row that says
so (its last stderr lines are in the JSON), and the command exits 1. ``--only NAME --merge`` re-runs some benches and
keeps the other rows of the table already written (each row then names its date and commit).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One comparison a bench reports: where its figures are in the JSON line and what the goal is."""

    what: str
    forge: str  # dotted path of Forge's figure in the bench's JSON
    peer: str  # dotted path of the peer's figure
    ratio: str  # dotted path of the ratio the bench computes
    goal: float | None  # the ratio's goal, or None where the bench only reports
    better: str = "higher"  # "higher": ratio >= goal meets it; "lower": ratio <= goal
    unit: str = ""
    also: dict = field(default_factory=dict)  # more figures to show beside it: label -> dotted path


@dataclass
class Bench:
    name: str
    quick: list[str]  # arguments of the ~15-minute run
    timeout_s: int
    rows: list[Row]


BENCHES: list[Bench] = [
    Bench("mining", [], 300, [
        Row("near-dedup vs datasketch's batch path (MinHash.bulk + insertion_session)", "forge_dedup_seconds",
            "batch_baseline_dedup_seconds", "ratio_vs_batch", 2.0, unit="s", also={"same set": "same_set_batch"}),
        Row("near-dedup vs datasketch one shingle at a time", "forge_dedup_seconds", "baseline_dedup_seconds", "ratio",
            1.0, unit="s", also={"same set": "same_set"}),
    ]),
    Bench("scrub", [], 300, [
        Row("secret scrubbing vs detect-secrets scan_line", "forge_seconds", "baseline_seconds", "ratio", 1.0, unit="s"),
    ]),
    Bench("sensor", [], 300, [
        Row("quiet sensor tick vs full fingerprint walk", "sensor_no_change_tick_seconds", "baseline_full_walk_seconds", "ratio", 1.0, unit="s"),
    ]),
    Bench("training", ["--samples", "160"], 900, [
        Row("trained tokens/s vs TRL SFTTrainer (bfd packing, padding-free)", "forge.trained_tokens_per_second",
            "trl.trained_tokens_per_second", "ratio_vs_trl", 1.2, unit="tok/s",
            also={"held-out loss Forge": "forge.heldout_loss", "held-out loss TRL": "trl.heldout_loss",
                  "coverage Forge": "forge.trained_token_coverage", "coverage TRL": "trl.trained_token_coverage",
                  "peak RSS MB Forge": "forge.peak_rss_mb", "peak RSS MB TRL": "trl.peak_rss_mb"}),
        Row("trained tokens/s vs padded transformers.Trainer", "forge.trained_tokens_per_second",
            "padded.trained_tokens_per_second", "ratio", 1.0, unit="tok/s"),
    ]),
    Bench("training_memory", ["--seq-len", "256"], 900, [
        Row("peak RSS, chunked loss vs the Trainer's loss", "chunked.peak_rss_mb", "plain.peak_rss_mb", "peak_rss_ratio",
            1.0, better="lower", unit="MB"),
    ]),
    Bench("export", ["--layers", "4", "--repeats", "1"], 900, [
        Row("HF -> F16 GGUF -> Q8_0 time vs llama.cpp's converter", "forge.total_s", "llama_cpp.total_s", "time_ratio",
            1.2, better="lower", unit="s"),
        Row("export peak RSS vs llama.cpp's converter", "forge.peak_rss_mb", "llama_cpp.peak_rss_mb", "peak_rss_ratio",
            1.0, better="lower", unit="MB"),
    ]),
    Bench("serving", ["--turns", "3", "--fim-requests", "8", "--prompt-chars", "4000"], 1200, [
        Row("agent team (4 sessions) wall time vs llama.cpp's server engine", "agent_team.forge.wall_s",
            "agent_team.engine.wall_s", "ratio", 1.10, better="lower", unit="s"),
        Row("FIM p50 latency vs the engine's /infill", "fim.forge.p50_ms", "fim.engine.p50_ms", "fim.p50_ratio", 1.10,
            better="lower", unit="ms"),
        Row("3 languages: merged servers' RSS / Forge's one server", "memory.forge_3_lang_mb", "memory.merged_3_lang_mb",
            "memory.ratio_3_lang", 1.0, unit="MB"),
    ]),
    Bench("adapter_swap", [], 900, [
        Row("adding a language: cold reload / blue-green swap", "swap.seconds", "reload.seconds", "ratio", 1.0, unit="s"),
    ]),
    Bench("gate_reference", [], 900, [
        Row("quantization gate's error vs the F32 truth (points)", "gate_error_points_new", "gate_error_points_old",
            "gate_error_points_new", 0.5, better="lower", unit="pts"),
    ]),
    Bench("incremental", ["--epochs", "0.05", "--pretrain-steps", "30"], 1500, [
        Row("push to served: full retrain / incremental", "incremental.total_seconds", "full.total_seconds", "ratio", 1.0,
            unit="s"),
    ]),
]


def pick(data: dict, path: str):
    """The value at a dotted path of a bench's JSON line, or None."""
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def met(ratio, row: Row) -> bool | None:
    if row.goal is None or not isinstance(ratio, (int, float)):
        return None
    return ratio >= row.goal if row.better == "higher" else ratio <= row.goal


def run_bench(bench: Bench, full: bool, log_dir: Path) -> dict:
    """Run one script in its own process; its JSON line (the last line of stdout that parses), or the failure."""
    args = [] if full else bench.quick
    cmd = [sys.executable, str(ROOT / "bench" / f"{bench.name}.py"), *args]
    log = log_dir / f"{bench.name}.stderr.log"
    started = time.perf_counter()
    print(f"[bench] {bench.name} {' '.join(args)} ...", file=sys.stderr, flush=True)
    try:
        with open(log, "w") as err:
            done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                  timeout=None if full else bench.timeout_s)
        code, out = done.returncode, done.stdout
    except subprocess.TimeoutExpired as e:
        code, out = "timeout", (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout) or ""
    seconds = round(time.perf_counter() - started, 1)
    data = None
    for line in reversed(out.strip().splitlines()):
        try:
            data = json.loads(line)
            break
        except ValueError:
            continue
    tail = log.read_text(errors="replace").strip().splitlines()[-8:] if log.exists() else []
    print(f"[bench] {bench.name}: exit {code} in {seconds} s", file=sys.stderr, flush=True)
    return {"name": bench.name, "args": args, "exit": code, "seconds": seconds, "result": data,
            "stderr_tail": tail if code != 0 or data is None else []}


def table_rows(benches: list[Bench], runs: list[dict]) -> list[dict]:
    rows = []
    for bench, run in zip(benches, runs):
        for row in bench.rows:
            data = run["result"] or {}
            ratio = pick(data, row.ratio)
            rows.append({
                "bench": bench.name, "what": row.what, "forge": pick(data, row.forge), "peer": pick(data, row.peer),
                "unit": row.unit, "ratio": ratio, "goal": None if row.goal is None else
                f"{'>=' if row.better == 'higher' else '<='} {row.goal}", "met": met(ratio, row),
                "also": {k: pick(data, p) for k, p in row.also.items()},
                "error": None if run["exit"] == 0 and run["result"] is not None else f"exit {run['exit']}",
                "date": run.get("date"), "commit": run.get("commit"),
            })
    return rows


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench` ({header['mode']}) on {header['date']}, commit {header['commit']}, "
        f"{header['machine']}; {header['seconds']:.0f} s in all. Each script's own figures and options: "
        "[benchmarks.md](benchmarks.md). Do not edit by hand: run `python -m bench` again.",
        "",
        "| bench | compared | Forge | peer | ratio | goal | met? | also |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mixed = len({(r.get("date"), r.get("commit")) for r in rows}) > 1
    if mixed:  # some rows were re-run on their own (--merge): each says when
        lines[2] = lines[2].replace(f"on {header['date']}, commit {header['commit']}, ", "on ") + \
            " Rows were run at different commits (--only ... --merge): the last column says which."
        lines[4] = lines[4] + " run |"
        lines[5] = lines[5] + "---|"
    for r in rows:
        also = "; ".join(f"{k} {_cell(v)}" for k, v in r["also"].items())
        met_cell = "FAILED: " + r["error"] if r["error"] else _cell(r["met"])
        unit = f" {r['unit']}" if r["unit"] and r["forge"] is not None else ""
        lines.append(f"| {r['bench']} | {r['what']} | {_cell(r['forge'])}{unit} | {_cell(r['peer'])}{unit} | "
                     f"{_cell(r['ratio'])} | {r['goal'] or '-'} | {met_cell} | {also or '-'} |"
                     + (f" {r.get('date')}, {r.get('commit')} |" if mixed else ""))
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated bench names (default: all: "
                    + ", ".join(b.name for b in BENCHES) + ")")
    ap.add_argument("--full", action="store_true", help="each bench with its own defaults (over an hour on 2 cores)")
    ap.add_argument("--out", default="docs/bench-results", help="where the table goes: <out>.json and <out>.md")
    ap.add_argument("--merge", action="store_true", help="with --only: replace those benches' rows in the table already "
                    "at <out>.json and keep the others (each row says its own date and commit)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {b.name for b in BENCHES})
    if unknown:
        ap.error(f"no bench named {', '.join(unknown)}; the benches are {', '.join(b.name for b in BENCHES)}")
    chosen = [b for b in BENCHES if not names or b.name in names]
    out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / ".bench-logs"
    log_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    runs = [run_bench(b, args.full, log_dir) for b in chosen]
    header = {"date": datetime.date.today().isoformat(), "commit": _commit(), "mode": "--full" if args.full else "quick",
              "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}",
              "seconds": round(time.perf_counter() - started, 1)}
    for run in runs:
        run.update(date=header["date"], commit=header["commit"])
    if args.merge and out.with_suffix(".json").is_file():  # the other benches' runs as they were, in BENCHES order
        earlier = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text()).get("runs", [])}
        old_header = json.loads(out.with_suffix(".json").read_text())
        for r in earlier.values():
            r.setdefault("date", old_header.get("date"))
            r.setdefault("commit", old_header.get("commit"))
        fresh = {r["name"]: r for r in runs}
        chosen = [b for b in BENCHES if b.name in fresh or b.name in earlier]
        runs = [fresh.get(b.name) or earlier[b.name] for b in chosen]
        header["seconds"] = sum(r.get("seconds") or 0 for r in runs)
    rows = table_rows(chosen, runs)
    (out.with_suffix(".json")).write_text(json.dumps({**header, "table": rows, "runs": runs}, indent=1) + "\n")
    page = markdown(rows, header)
    (out.with_suffix(".md")).write_text(page)
    print(page)
    return 0 if all(r["exit"] == 0 and r["result"] is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
