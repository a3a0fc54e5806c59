"""Benchmark: a git_push_sensor tick that finds no change, against the full-walk fingerprint computation.

    python bench/sensor.py [REPO_PATH...] [--ticks N]

With no path, this repository's own git history is polled. Writes a temporary forge.yaml naming the
repositories, evaluates the real sensor once (it walks every tree and stores fingerprints and heads
in its cursor), then times, in the same run:

- sensor: N more ticks of ``git_push_sensor`` with that cursor on an unchanged repository (each must
  skip): open the repositories, resolve their heads, see that none moved;
- baseline: N times what every tick cost before (and what a tick still costs when a head moved):
  ``language_fingerprints()``, i.e. load the config, walk every repository's tree at its head and
  hash each language's (repo, path, blob) rows.

Prints one JSON line: repositories, commits, files, the median seconds of each and the ratio baseline/sensor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_seconds(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repos", nargs="*", help="paths of local git repositories (default: this repository)")
    ap.add_argument("--ticks", type=int, default=5, help="timed evaluations of each (the median is reported)")
    args = ap.parse_args(argv)
    repos = [str(Path(p).resolve()) for p in (args.repos or [ROOT])]

    import yaml
    from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

    from forge_assets.config import load_config
    from forge_assets.definitions import defs
    from forge_assets.mining.snapshot import snapshot_of
    from forge_assets.sensors import git_push_sensor, language_fingerprints

    with tempfile.TemporaryDirectory(prefix="forge-bench-sensor-") as tmp:
        cfg_path = Path(tmp) / "forge.yaml"
        cfg_path.write_text(yaml.safe_dump({"artifact_root": str(Path(tmp) / "artifacts"), "repos": [{"path": p} for p in repos]}))
        os.environ["FORGE_CONFIG"] = str(cfg_path)
        instance = DagsterInstance.ephemeral()

        first = git_push_sensor(build_sensor_context(instance=instance, cursor=None, definitions=defs))
        if not isinstance(first, SensorResult):
            print(json.dumps({"error": f"the first tick found nothing to mine in {repos}: {first}"}))
            return 1
        instance.add_dynamic_partitions("language", sorted({r.partition_key for r in first.run_requests}))
        cursor = first.cursor

        def tick() -> None:
            result = git_push_sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
            assert isinstance(result, SkipReason), f"the repositories changed during the benchmark: {result}"

        expected = json.loads(cursor)["fingerprints"]

        def baseline() -> None:
            assert language_fingerprints() == expected

        tick()  # warm both paths the same way (imports, git object caches) before timing
        baseline()
        sensor_s = _median_seconds(tick, args.ticks)
        baseline_s = _median_seconds(baseline, args.ticks)
        snap = snapshot_of(load_config())

    commits = sum(int(subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=p, capture_output=True, text=True).stdout or 0)
                  for p in repos)
    print(json.dumps({
        "repos": repos, "commits": commits, "files": sum(len(v) for v in snap.files.values()),
        "tree_entries_walked": sum(len(v) for v in snap.files.values()) + sum(snap.skipped.values()),
        "languages": snap.languages(), "ticks": args.ticks,
        "sensor_no_change_tick_seconds": round(sensor_s, 4), "baseline_full_walk_seconds": round(baseline_s, 4),
        "ratio": round(baseline_s / sensor_s, 1) if sensor_s else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
