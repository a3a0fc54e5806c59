"""Benchmark: Forge's secret scrubber against plain detect-secrets line scanning, on the same files.

    python bench/scrub.py [REPO_PATH...] [--max-files N]

- forge: ``forge_assets.scrub.scrub_text`` over each file (needle-gated patterns, then
  detect-secrets plugins only on candidate lines);
- baseline: detect-secrets' documented in-process API, ``scan_line`` with its default plugins
  on every line of every file, replacing each reported secret.

Prints one JSON line: files, bytes, seconds and redactions for each, and the ratio baseline/forge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forge_assets.config import RepoSource  # noqa: E402
from forge_assets.mining.dataset import read_blob  # noqa: E402
from forge_assets.mining.snapshot import take_snapshot  # noqa: E402
from forge_assets.scrub import scrub_text  # noqa: E402


def corpus(paths: list[str], max_files: int) -> list[str]:
    """The UTF-8 text of the source files at each repository's HEAD, in a stable order."""
    snap = take_snapshot([RepoSource(path=p) for p in paths], Path.cwd(), Path("/tmp/forge-bench-clones"))
    texts = []
    for entry in sorted(f for files in snap.files.values() for f in files)[:max_files]:
        try:
            texts.append(read_blob(entry.repo_dir, entry.blob).decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return texts


def baseline(texts: list[str]) -> tuple[list[str], int]:
    """detect-secrets' scan_line on every line, each reported secret replaced."""
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings

    out, found = [], 0
    with default_settings():
        for text in texts:
            lines = []
            for line in text.split("\n"):
                for secret in scan_line(line):
                    if secret.secret_value and secret.secret_value in line:
                        line = line.replace(secret.secret_value, "[REDACTED]")
                        found += 1
                lines.append(line)
            out.append("\n".join(lines))
    return out, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repos", nargs="*", help="paths of local git repositories (default: this repository)")
    ap.add_argument("--max-files", type=int, default=3000)
    args = ap.parse_args()
    args.repos = args.repos or [str(Path(__file__).resolve().parents[1])]
    texts = corpus(args.repos, args.max_files)
    t0 = time.perf_counter()
    forge_found = sum(sum(scrub_text(t)[1].values()) for t in texts)
    forge_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, base_found = baseline(texts)
    base_s = time.perf_counter() - t0
    print(json.dumps({"repos": args.repos, "files": len(texts), "bytes": sum(len(t.encode()) for t in texts),
                      "forge_seconds": round(forge_s, 3), "forge_redactions": forge_found,
                      "baseline_seconds": round(base_s, 3), "baseline_redactions": base_found,
                      "ratio": round(base_s / forge_s, 2) if forge_s else None}))


if __name__ == "__main__":
    main()
