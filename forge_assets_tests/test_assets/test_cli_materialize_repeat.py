"""Issue 7: `dagster asset materialize` (multiprocess executor, threaded step processes) with mining worker pools,
four times in a row (two rounds, two languages): every run finishes, none hangs. It is also the README's
`dagster asset materialize ... --partition python` line, run as a user would."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge_assets.artifacts import ArtifactStore
from forge_assets_tests.conftest import commit_files, make_repo, write_config

pytestmark = pytest.mark.slow  # four `dagster asset materialize` runs

FILES_PER_LANGUAGE = 70  # >= 64: the file pool is used; the first commit's changes (>= 32) use the commit pool


def _py(i: int, version: int = 0) -> str:
    return "".join(
        f'\n\ndef step_{i}_{j}(rows, scale={j + 1}):\n    """Scale the rows of stage {i}, keeping those over {j + version}."""\n'
        f"    out = []\n    for row in rows:\n        if row > {j + version}:\n            out.append(row * scale + {i})\n    return out\n"
        for j in range(4))


def _rs(i: int, version: int = 0) -> str:
    return "".join(
        f"\n/// Scales the rows of stage {i}, keeping those over {j + version}.\n"
        f"pub fn step_{i}_{j}(rows: &[i64], scale: i64) -> Vec<i64> {{\n"
        f"    rows.iter().filter(|r| **r > {j + version}).map(|r| r * scale + {i}).collect()\n}}\n"
        for j in range(4))


def test_repeated_cli_materializations_with_worker_pools_never_hang(tmp_path: Path):
    files = {f"app/stage_{i:02d}.py": _py(i) for i in range(FILES_PER_LANGUAGE)}
    files.update({f"src/stage_{i:02d}.rs": _rs(i) for i in range(FILES_PER_LANGUAGE)})
    repo = make_repo(tmp_path / "repo", files)
    cfg = write_config(tmp_path, [repo], mining={"workers": 2, "synthetic_per_language": 0, "max_commits": 50})
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "FORGE_CONFIG": str(cfg)}
    subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; "
                    "DagsterInstance.get().add_dynamic_partitions('language', ['python', 'rust'])"], env=env, check=True)

    versions: dict[str, set[str]] = {"python": set(), "rust": set()}
    for round_ in range(2):
        if round_:  # change a file of each language so the dataset is built again, not reused
            commit_files(repo, {"app/stage_00.py": _py(0, round_), "src/stage_00.rs": _rs(0, round_)}, f"round {round_}")
        for language in ("python", "rust"):
            t = time.monotonic()
            try:
                out = subprocess.run(["dagster", "asset", "materialize", "-m", "forge_assets.definitions",
                                      "--select", "repo_snapshot,session_logs,dataset", "--partition", language],
                                     env=env, capture_output=True, text=True, timeout=90)
            except subprocess.TimeoutExpired as exc:
                raise AssertionError(f"round {round_}, {language}: `dagster asset materialize` hung for 90 s "
                                     f"(issue 7: a forked pool in a threaded process?)\n{(exc.stderr or b'')[-3000:]}") from None
            assert out.returncode == 0, f"round {round_}, {language} ({time.monotonic() - t:.0f} s):\n{out.stderr[-3000:]}"
            art = ArtifactStore(tmp_path / "artifacts").promoted("dataset", language)
            assert art is not None and art.manifest()["stats"]["files"] == FILES_PER_LANGUAGE
            versions[language].add(art.version)
    assert all(len(v) == 2 for v in versions.values()), versions  # each round built a new dataset
