"""Worker processes: never forked from the (threaded) caller, same output as one process, a dead worker is a clear error."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from forge_assets_tests.test_mining.conftest import mining_config
from mining_repos import Repo

import forge_assets.mining.dataset as dataset_mod
from forge_assets.config import RepoSource
from forge_assets.mining.dataset import build_dataset, write_dataset
from forge_assets.mining.snapshot import take_snapshot
from forge_assets.mining.workers import WorkerCrashed, mp_context, parallel_map, worker_pool


def _square_or_die(x: int) -> int:
    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    return x * x


def test_workers_are_never_forked_from_the_caller():
    assert mp_context().get_start_method() in ("forkserver", "spawn")


def test_parallel_map_keeps_order_and_a_dead_worker_fails_fast():
    items = [x for x in range(200) if x != 13]
    assert parallel_map(_square_or_die, items, 2, "testing") == [x * x for x in items]

    t = time.monotonic()
    with pytest.raises(WorkerCrashed, match=r"worker process died while mining test files.*Fix: lower `mining.workers`"):
        parallel_map(_square_or_die, list(range(100)), 2, "mining test files")
    assert time.monotonic() - t < 60  # an error, not a hang

    with worker_pool(2):  # a pool that lost a worker is replaced, not reused
        with pytest.raises(WorkerCrashed):
            parallel_map(_square_or_die, list(range(100)), 2, "mining test files")
        assert parallel_map(_square_or_die, items, 2, "testing") == [x * x for x in items]


def _many_files(path) -> Repo:
    """70 Python files over two commits: enough for every pool (files >= 64, changes >= 32, samples >= 400)."""
    repo = Repo(path)
    files = {f"pkg/mod_{i:02d}.py": "".join(
        f'\n\ndef f{i}_{j}(values, limit={j}):\n    """Keep the values of module {i} below {j}."""\n'
        f"    out = []\n    for v in values:\n        if v < limit * {i + 1}:\n            out.append(v * {j + i})\n    return out\n"
        for j in range(4)) for i in range(70)}
    repo.commit(files, "Add the modules")
    repo.commit({k: v.replace("return out", "return sorted(out)") for k, v in list(files.items())[:40]}, "Sort the kept values")
    return repo


@pytest.mark.slow
def test_pools_give_the_same_bytes_as_one_process_while_threads_run(tmp_path, monkeypatch):
    repo = _many_files(tmp_path / "many")
    snap = take_snapshot([RepoSource(path=str(repo.path))], tmp_path, tmp_path / "clones")
    used: list[tuple[str, int]] = []
    real = dataset_mod.parallel_map
    monkeypatch.setattr(dataset_mod, "parallel_map", lambda fn, items, workers, what, **kw: used.append((what, workers)) or real(fn, items, workers, what, **kw))

    # A busy thread holding a lock, as Dagster's and GitPython's threads do: a forked pool could inherit it held.
    lock, stop = threading.Lock(), threading.Event()

    def busy():
        while not stop.is_set():
            with lock:
                time.sleep(0.001)

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    outputs = []
    try:
        for workers in (1, 2):
            ds = build_dataset("python", snap.files["python"], [], mining_config(workers=workers, synthetic_per_language=0))
            write_dataset(ds, tmp_path / f"w{workers}")
            outputs.append({n: (tmp_path / f"w{workers}" / n).read_bytes() for n in ("train.jsonl", "valid.jsonl", "test.jsonl", "stats.json")})
    finally:
        stop.set()
        thread.join()
    assert outputs[0] == outputs[1]
    assert ("mining python files", 2) in used and ("mining python commits", 2) in used
    assert ("computing MinHash signatures", 2) in used
