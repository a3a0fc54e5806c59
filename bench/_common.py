"""What the benchmarks share (imported as a sibling module: `python bench/<name>.py` puts bench/ on sys.path)."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def stdout_to_stderr():
    """Send fd 1 (Python prints and llama.cpp's C-level output alike) to stderr: stdout carries the JSON line only."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
