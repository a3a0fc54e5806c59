"""Worker processes for mining: safe to start from a process that runs threads, and loud when one dies.

Mining runs inside Dagster step processes that already run threads (Dagster's own, GitPython's pipe
readers). ``fork()`` there copies locks those threads hold into the child, where nobody will ever
release them; a forked pool then hangs at 0% CPU (issue 7: ``Pool.terminate`` joining forever). So no
pool is forked from the caller: workers come from Python's **forkserver** (a single-threaded process
started once with fork+exec, which has imported the mining modules already, so a worker starts in
milliseconds), or are **spawned** where there is no forkserver. Workers receive their inputs as
pickled arguments, never as inherited globals, and keep their own per-process caches (git.Repo).

``parallel_map`` keeps the order of its inputs, so results are the same as the serial path's.
A worker that dies (killed for memory, a crash in a C extension) fails the call at once with
``WorkerCrashed`` naming the stage and the fix: ``concurrent.futures`` notices dead workers, where
``multiprocessing.Pool`` would wait for their results forever.

``with worker_pool(n):`` keeps one pool open for every ``parallel_map`` inside it (the stages of one
dataset share their workers); without it each call starts and stops its own.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Imported once by the forkserver, so the workers forked from it start with them loaded (datasketch imports scipy:
# 0.4 s that each worker would otherwise pay on its first MinHash).
PRELOAD = ["forge_assets.mining.dataset", "datasketch"]


class WorkerCrashed(RuntimeError):
    """A mining worker process died; the message names the stage and the fix."""


def mp_context() -> multiprocessing.context.BaseContext:
    """forkserver (preloaded with the mining modules) where the platform has it, else spawn; never fork."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD + _main_preload())
        return ctx
    return multiprocessing.get_context("spawn")


def _main_preload() -> list[str]:
    """"__main__" when it is a script that workers would otherwise each re-run on start (dagster's CLI).

    multiprocessing re-imports the parent's main script in every new worker; preloading it in the
    forkserver does that once. A `python -m` main (pytest) is never re-imported, so nothing is needed.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        return []
    return ["__main__"] if _guarded(main.__file__) else []


def _guarded(path: str) -> bool:
    """True when a script only defines things unless run as __main__ (console scripts, bench/*.py)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return False
    return "if __name__ == '__main__':" in text or 'if __name__ == "__main__":' in text


class _Pool:
    """A process pool started on first use."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp_context())
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


_LOCAL = threading.local()


@contextmanager
def worker_pool(workers: int) -> Iterator[None]:
    """Share one pool of `workers` processes among the parallel_map calls made inside the block (started on first use)."""
    outer = getattr(_LOCAL, "pool", None)
    if outer is not None or workers <= 1:  # an enclosing block's pool serves this one too
        yield
        return
    pool = _LOCAL.pool = _Pool(workers)
    try:
        yield
    finally:
        _LOCAL.pool = None
        pool.close()


def _run_batch(fn: Callable[[T], R], batch: list[T]) -> list[R]:
    return [fn(x) for x in batch]


def batches(items: Sequence[T], workers: int, per_worker: int = 8) -> list[list[T]]:
    """items cut into about per_worker batches per worker, in order."""
    step = max(1, -(-len(items) // (max(1, workers) * per_worker)))
    return [list(items[i:i + step]) for i in range(0, len(items), step)]


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int, what: str, per_worker: int = 8) -> list[R]:
    """[fn(x) for x in items], in worker processes when workers > 1; the same list either way.

    fn must be a module-level function (workers import it by name) and items picklable. what names
    the stage for the error a dead worker raises.
    """
    if workers <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    shared = getattr(_LOCAL, "pool", None)
    pool = shared if shared is not None else _Pool(min(workers, len(items)))
    futures = []
    try:
        executor = pool.executor()
        futures = [executor.submit(_run_batch, fn, b) for b in batches(items, pool.workers, per_worker)]
        return [r for f in futures for r in f.result()]
    except BrokenProcessPool as exc:
        pool._executor = None  # unusable now; a later call starts a fresh one
        raise WorkerCrashed(
            f"A worker process died while {what} ({pool.workers} workers; killed for memory, or a crash in a C "
            f"extension). Fix: lower `mining.workers` in forge.yaml (1 mines in this process and shows the real "
            f"error), or give the machine more memory."
        ) from exc
    finally:
        for f in futures:
            f.cancel()
        if pool is not shared:
            pool.close()
