"""HumanEval pass@1 through the sandbox: canonical solutions pass, empty bodies fail, post-processing and selection."""

from __future__ import annotations

import pytest

from forge_assets.evaluation.humaneval import build_program, select_problems, score, truncate_completion

# All 164 problems take about 14 s on 2 cores in the namespace sandbox: the canonical solutions use the whole set.
ALL = select_problems(None)


@pytest.mark.slow
def test_canonical_solutions_score_one():
    result = score({p["task_id"]: p["canonical_solution"] for p in ALL}, ALL, workers=2)
    assert result["total"] == 164
    assert result["passed"] == 164 and result["pass_at_1"] == 1.0, {k: v for k, v in result["results"].items()
                                                                       if v != "passed"}


@pytest.mark.slow
def test_empty_bodies_score_zero():
    some = select_problems(40, seed=3)  # the tests can fail: 40 of them are enough to show it (all 164 pass above)
    result = score({p["task_id"]: "    pass\n" for p in some}, some, workers=2)
    assert result["total"] == 40 and result["passed"] == 0 and result["pass_at_1"] == 0.0
    assert set(result["results"]) == {p["task_id"] for p in some}


def test_missing_and_hanging_completions_fail():
    problems = select_problems(2, seed=1)
    first, second = problems
    result = score({first["task_id"]: "    while True:\n        pass\n"}, problems, timeout_s=2, cpu_s=1)
    assert result["results"] == {first["task_id"]: result["results"][first["task_id"]], second["task_id"]: "missing"}
    assert result["results"][first["task_id"]] in ("timeout", "killed")
    assert result["pass_at_1"] == 0.0 and result["total"] == 2


def test_build_program_calls_check_on_the_entry_point():
    problem = ALL[0]
    program = build_program(problem, problem["canonical_solution"])
    assert program.startswith(problem["prompt"]) and program.endswith(f"check({problem['entry_point']})\n")


def test_truncate_completion_keeps_only_the_body():
    body = "    total = 0\n    for x in xs:\n\n        total += x\n    return total\n"
    assert truncate_completion(body) == body
    for tail in ("\n\ndef other():\n    pass\n", "\nclass A:\n    pass\n", "\nif __name__ == '__main__':\n    main()\n",
                 "\nprint(f([1]))\n", "\n# test\n", "\nassert f([1]) == 1\n", "\n```\n", "\nfoo = 3\n"):
        assert truncate_completion(body + tail) == body, tail
    assert truncate_completion("    return 1") == "    return 1\n"
    # indented comments and nested definitions are part of the body
    nested = "    # helper\n    def inner(y):\n        return y\n    return inner(1)\n"
    assert truncate_completion(nested + "\ndef g():\n    pass\n") == nested


def test_select_problems_is_deterministic_and_sized():
    assert len(select_problems(None)) == 164 and len(select_problems(500)) == 164
    twenty = select_problems(20)
    assert len(twenty) == 20 and len({p["task_id"] for p in twenty}) == 20
    assert twenty == select_problems(20)
    assert [p["task_id"] for p in twenty] != [p["task_id"] for p in select_problems(20, seed=1)]
    numbers = [int(p["task_id"].split("/")[1]) for p in twenty]
    assert numbers == sorted(numbers)
    assert [p["task_id"] for p in ALL] == [f"HumanEval/{i}" for i in range(164)]
    assert select_problems(0) == []
