"""What long work reports: progress lines with rate and ETA (validation, perplexity, generation, the sandbox), and
the process's peak memory.

    progress = Progress(log, "validation", "batches")
    for i, batch in enumerate(batches, 1):
        ...
        progress(i, len(batches))

logs ``validation 1/25 batches, 0.8 batches/s, ETA 30 s`` after the first item (so a slow phase shows its pace at
once), then at most every `every` seconds, and ``validation 25/25 batches in 31 s (0.8 batches/s)`` at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


def duration(seconds: float) -> str:
    """`42 s`, `3 min 20 s`, `1 h 05 min`: short, for log lines."""
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def rate(count: float, seconds: float, unit: str) -> str:
    """`3.1 batches/s`, or `12 s/batch` when one item takes more than a second (easier to read than 0.08/s)."""
    if count <= 0:
        return f"0 {unit}/s"
    seconds = max(seconds, 1e-3)  # a loop that took no measurable time
    per_second = count / seconds
    if per_second >= 1:
        return f"{_number(per_second)} {unit}/s"
    one = unit[:-2] if unit.endswith(("ches", "shes", "xes")) else unit[:-1] if unit.endswith("s") else unit
    return f"{_number(seconds / count)} s/{one}"


def _number(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def pace(done: int, left: int, seconds: float, unit: str) -> str:
    """`14.9 s/step, ETA 4 min 28 s` for `done` items in `seconds` with `left` to go ("" before the first item)."""
    if done <= 0:
        return ""
    return f"{rate(done, seconds, unit)}, ETA {duration(seconds / done * left)}"


class Progress:
    """Call with (done, total) after each item; logs the first, then every `every` seconds, then the last."""

    def __init__(self, log: Callable[[str], None], what: str, unit: str = "items", every: float = 10.0):
        self.log, self.what, self.unit, self.every = log, what, unit, every
        self.started = time.monotonic()
        self.last: float | None = None  # when the last line was logged

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        spent = now - self.started
        if done >= total:
            self.log(f"{self.what} {done}/{total} {self.unit} in {duration(spent)} ({rate(done, spent, self.unit)})")
        elif self.last is None or now - self.last >= self.every:
            eta = spent / done * (total - done) if done else float("nan")
            self.log(f"{self.what} {done}/{total} {self.unit}, {rate(done, spent, self.unit)}, "
                     f"ETA {duration(eta) if eta == eta else '?'}")
        else:
            return
        self.last = now


def peak_memory() -> dict:
    """`peak_rss_mb`: this process's peak resident memory so far (its whole life: model loading included), and, when
    torch has used a CUDA device, `cuda_peak_memory_mb`: the most its tensors held there at once."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mb": round(rss / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)}
    torch = sys.modules.get("torch")  # only report what was used: never import torch (or start CUDA) for this
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
    return out
