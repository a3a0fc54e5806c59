"""Benchmark: Forge's mining pipeline and its de-duplication against a plain datasketch baseline.

    python bench/mining.py [REPO_PATH...] [--workers N] [--max-commits N] [--languages python,go]

Runs the whole Forge pipeline (snapshot, mining, de-duplication, decontamination, split) over the
given git repositories, and in the same run de-duplicates the very same candidate samples twice:

- forge: ``forge_assets.mining.dedup.deduplicate`` (batched ``MinHash.bulk`` with memoised
  shingle hashes, worker processes, numpy LSH banding);
- baseline: one ``MinHash`` per document updated shingle by shingle, ``MinHashLSH.query`` then
  ``insert``, single process, the same shingles, threshold and cross-origin rule;
- batch baseline: datasketch's own fast path, what its documentation has a user write: every
  signature with ``MinHash.bulk``, every document inserted in one ``MinHashLSH.insertion_session``,
  then one ``query`` per document in order (``dedup.batch_reference_deduplicate``).

All three must keep exactly the same samples (checked against both baselines). Prints one JSON line:
files, samples, seconds for each, the ratios baseline/forge and batch baseline/forge (the goal is
>= 2x the batch path), and the whole pipeline's seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forge_assets.config import MiningConfig, RepoSource  # noqa: E402
from forge_assets.mining.dataset import _workers, assemble, content_view, mine_samples  # noqa: E402
from forge_assets.mining.dedup import batch_reference_deduplicate, deduplicate, reference_deduplicate  # noqa: E402
from forge_assets.mining.snapshot import take_snapshot  # noqa: E402
from forge_assets.mining.workers import worker_pool  # noqa: E402


def _language(language: str, snap, cfg: MiningConfig, repeats: int) -> tuple:
    """One language: mine (pipeline time), de-duplicate three ways (each the best of `repeats` turns), assemble the rest
    (pipeline time)."""
    t = time.perf_counter()
    mined = mine_samples(language, snap.files[language], [], cfg)
    pipeline_s = time.perf_counter() - t
    texts = [content_view(s) for s in mined.samples]
    groups = [s.group for s in mined.samples]
    best = {"forge": float("inf"), "baseline": float("inf"), "batch": float("inf")}
    arms = {
        "forge": lambda: deduplicate(texts, groups, cfg.near_dup_threshold, workers=_workers(cfg)).keep,
        "baseline": lambda: reference_deduplicate(texts, groups, cfg.near_dup_threshold),
        "batch": lambda: batch_reference_deduplicate(texts, groups, cfg.near_dup_threshold),
    }
    kept = {}
    for _ in range(repeats):  # the arms take turns; each keeps its best time (this machine's timings are noisy)
        for name, arm in arms.items():
            t = time.perf_counter()
            kept[name] = arm()
            best[name] = min(best[name], time.perf_counter() - t)
    forge_s, baseline_s, batch_s = best["forge"], best["baseline"], best["batch"]
    fast_keep, slow, batch = kept["forge"], kept["baseline"], kept["batch"]
    t = time.perf_counter()
    assemble(mined, cfg)  # de-duplication (again), decontamination, split: the rest of the pipeline
    pipeline_s += time.perf_counter() - t
    return (len(snap.files[language]), len(texts), sum(fast_keep), (pipeline_s, forge_s, baseline_s, batch_s),
            fast_keep == slow, fast_keep == batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repos", nargs="*", help="paths of local git repositories (default: this repository)")
    ap.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU, at most 4)")
    ap.add_argument("--max-commits", type=int, default=1000)
    ap.add_argument("--languages", default="", help="comma-separated languages (default: all found)")
    ap.add_argument("--repeats", type=int, default=5, help="turns per arm; each arm reports its best")
    args = ap.parse_args(argv)
    args.repos = args.repos or [str(Path(__file__).resolve().parents[1])]
    cfg = MiningConfig(workers=args.workers, max_commits=args.max_commits)

    t = time.perf_counter()
    snap = take_snapshot([RepoSource(path=str(Path(p).resolve())) for p in args.repos], Path.cwd(), Path("/tmp/forge-bench-clones"), cfg.max_file_bytes)
    languages = [lang for lang in snap.languages() if not args.languages or lang in args.languages.split(",")]
    pipeline_s = time.perf_counter() - t
    files = samples = kept = 0
    forge_s = baseline_s = batch_s = 0.0
    same = same_batch = True
    import datasketch  # noqa: F401 (imported before any timing: none of the three pays for it)

    with worker_pool(_workers(cfg)):  # as in the pipeline: the pool mining started serves de-duplication too
        for language in languages:
            files_, samples_, kept_, seconds, same_, same_batch_ = _language(language, snap, cfg, max(1, args.repeats))
            files, samples, kept = files + files_, samples + samples_, kept + kept_
            pipeline_s, forge_s, baseline_s, batch_s = (x + y for x, y in zip((pipeline_s, forge_s, baseline_s, batch_s), seconds))
            same, same_batch = same and same_, same_batch and same_batch_
    print(json.dumps({
        "repos": [str(Path(p)) for p in args.repos], "languages": languages, "files": files,
        "samples": samples, "kept": kept, "same_set": same, "same_set_batch": same_batch, "workers": _workers(cfg),
        "forge_dedup_seconds": round(forge_s, 3), "baseline_dedup_seconds": round(baseline_s, 3),
        "batch_baseline_dedup_seconds": round(batch_s, 3),
        "ratio": round(baseline_s / forge_s, 2) if forge_s else None,
        "ratio_vs_batch": round(batch_s / forge_s, 2) if forge_s else None, "goal_vs_batch": 2.0,
        "pipeline_seconds": round(pipeline_s, 3), "repeats": max(1, args.repeats),
    }))
    return 0 if same and same_batch else 1


if __name__ == "__main__":
    sys.exit(main())
