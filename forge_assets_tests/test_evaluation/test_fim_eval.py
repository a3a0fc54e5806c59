"""FIM evaluation cases on this repository's own source: slices, kinds, balance, prompt format, metrics."""

from __future__ import annotations

import ast
import random
import textwrap
from pathlib import Path

import pytest

from forge_assets.chat import EOT
from forge_assets.evaluation.fim_eval import (
    CASE_KINDS,
    FimCase,
    build_cases,
    edit_similarity,
    exact_match,
    fim_prompt,
    summarize,
    truncate_middle,
)
from forge_assets.mining.fim import fim_sample
from forge_assets.mining.units import parse_file

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["forge_assets/config.py", "forge_assets/mining/fim.py", "forge_assets/mining/units.py",
         "forge_assets/evaluation/scores.py", "forge_assets/chat.py"]
FILES = [("forge/forge", p, (ROOT / p).read_text(encoding="utf-8")) for p in PATHS]
SOURCES = {p: s for _, p, s in FILES}


@pytest.fixture(scope="module")
def cases() -> list[FimCase]:
    return build_cases(FILES, "python", max_cases=200, seed=0)


def test_every_case_is_a_contiguous_slice_of_its_file(cases):
    untrimmed = build_cases(FILES, "python", max_cases=10_000, max_context_chars=10**9)
    assert len(untrimmed) > 200
    for c in untrimmed:
        assert c.prefix + c.middle + c.suffix == SOURCES[c.path]
    for c in cases:
        source = SOURCES[c.path]
        whole = c.prefix + c.middle + c.suffix
        assert whole in source
        assert len(c.prefix) <= 4000 and len(c.suffix) <= 4000
        if len(source) - len(c.middle) <= 4000:  # nothing to trim
            assert whole == source
        assert c.middle.strip()


def test_trimming_cuts_at_line_boundaries():
    for c in build_cases(FILES, "python", max_cases=60, seed=3, max_context_chars=300):
        source = SOURCES[c.path]
        start = source.index(c.prefix + c.middle + c.suffix)
        assert start == 0 or source[start - 1] == "\n"
        end = start + len(c.prefix + c.middle + c.suffix)
        assert end == len(source) or c.suffix.endswith("\n")
        assert len(c.prefix) <= 300 and len(c.suffix) <= 300


def test_each_kind_is_what_it_claims(cases):
    for c in cases:
        assert c.kind in CASE_KINDS
        if c.kind == "line":
            assert c.middle.count("\n") <= 1 and (c.middle.endswith("\n") or not c.suffix)
            assert c.middle == c.middle.lstrip() and not c.prefix.split("\n")[-1].strip()  # only indentation before it
            ast.parse(c.middle)  # one whole statement
        elif c.kind == "arguments":
            assert "\n" not in c.middle and c.middle.strip()
            assert c.prefix.endswith("(") and c.suffix.startswith(")")
            ast.parse(f"f({c.middle})")
        else:
            lines = c.middle.splitlines()
            assert 1 <= len(lines) <= 15 and c.middle.endswith("\n")
            assert c.prefix.endswith("\n") and lines[0].startswith((" ", "\t"))
            ast.parse(textwrap.dedent(c.middle))


def test_balanced_deterministic_and_seeded(cases):
    assert len(cases) == 200
    counts = {k: sum(c.kind == k for c in cases) for k in CASE_KINDS}
    assert all(n >= 40 for n in counts.values()), counts
    assert len({c.path for c in cases}) == len(PATHS)
    key = [(c.path, c.kind, len(c.prefix), c.middle) for c in cases]
    assert key == [(c.path, c.kind, len(c.prefix), c.middle) for c in build_cases(FILES, "python", max_cases=200, seed=0)]
    other = [(c.path, c.kind, len(c.prefix), c.middle) for c in build_cases(FILES, "python", max_cases=200, seed=1)]
    assert other != key and set(other) != set(key)


def test_fewer_candidates_than_asked_gives_them_all():
    small = [("r", "a.py", "def f(a):\n    x = g(a, 1)\n    return x\n")]
    got = build_cases(small, "python", max_cases=200)
    assert sorted((c.kind, c.middle) for c in got) == sorted([
        ("line", "x = g(a, 1)\n"), ("line", "return x\n"),
        ("block", "    x = g(a, 1)\n    return x\n"), ("arguments", "a, 1"),
    ])


def test_prompt_is_the_serving_format_byte_for_byte():
    c = FimCase("acme/tools", "src/app.py", "def f():\n    return ", "x + 1\n", "\n\nprint(f())\n", "line")
    expected = ("<|repo_name|>acme/tools\n<|file_sep|>src/app.py\n"
                "<|fim_prefix|>def f():\n    return <|fim_suffix|>\n\nprint(f())\n<|fim_middle|>")
    assert c.prompt == expected == fim_prompt("acme/tools", "src/app.py", "def f():\n    return ", "\n\nprint(f())\n")
    assert c.prompt.encode() == expected.encode()


def test_prompt_matches_the_psm_training_layout():
    source = SOURCES["forge_assets/mining/fim.py"]
    pf = parse_file(source, "python", "forge_assets/mining/fim.py")
    _, text = fim_sample(pf, "forge/forge", "forge_assets/mining/fim.py", random.Random(0), spm=False, context_chars=10**9)
    head_and_prefix, _, rest = text.partition("<|fim_suffix|>")
    suffix, _, middle = rest.partition("<|fim_middle|>")
    prefix = head_and_prefix.split("<|fim_prefix|>", 1)[1]
    assert fim_prompt("forge/forge", "forge_assets/mining/fim.py", prefix, suffix) + middle == text


def test_metrics_on_hand_made_predictions():
    assert exact_match("foo(x)  \n", "foo(x)\n") and not exact_match("foo(y)", "foo(x)")
    assert edit_similarity("return x + 1\n", "return x + 1") == 1.0
    assert edit_similarity("", "return x + 1") == 0.0
    typo = edit_similarity("return x + 2", "return x + 1")
    assert 0.0 < typo < 1.0 and typo == pytest.approx(1 - 1 / 12)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("abc", "xyz") == 0.0

    cs = [FimCase("r", "p", "", "a(b)\n", "", "line"), FimCase("r", "p", "f(", "x, y", ")", "arguments"),
          FimCase("r", "p", "", "    pass\n", "", "block")]
    got = summarize(["a(b)\n", "x, z", ""], cs)
    assert got["cases"] == 3 and got["exact_match"] == pytest.approx(1 / 3)
    assert got["edit_similarity"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert got["by_kind"]["line"] == {"cases": 1, "exact_match": 1.0, "edit_similarity": 1.0}
    assert got["by_kind"]["arguments"]["exact_match"] == 0.0 and got["by_kind"]["arguments"]["edit_similarity"] == 0.75
    assert got["by_kind"]["block"] == {"cases": 1, "exact_match": 0.0, "edit_similarity": 0.0}
    assert summarize([], [])["by_kind"]["line"] == {"cases": 0, "exact_match": None, "edit_similarity": None}
    with pytest.raises(ValueError):
        summarize(["x"], [])


def test_truncate_middle():
    line = FimCase("r", "p", "", "x = 1\n", "", "line")
    block = FimCase("r", "p", "", "    x = 1\n    y = 2\n", "", "block")
    assert truncate_middle(f"x = 1\ny = 2\n{EOT}junk", line) == "x = 1\n"
    assert truncate_middle(f"    x = 1\n    y = 2\n{EOT}z = 3", block) == "    x = 1\n    y = 2\n"
    assert truncate_middle("    x = 1\n<|file_sep|>other.py\n", block) == "    x = 1\n"
    assert truncate_middle("a, b)\nmore", FimCase("r", "p", "f(", "a, b", ")", "arguments")) == "a, b)\n"


def test_a_tree_with_errors_keeps_its_clean_spans():
    # The header's `)` is MISSING and `)(` / `x = = 2` are an ERROR node: the body parsed cleanly and is kept, the
    # broken lines give no case (units.parse_file keeps the clean units of such a tree the same way).
    broken = "def f(:\n    return 1\n\n  )(\nx = = 2\n"
    got = build_cases([("r", "bad.py", broken)], "python")
    assert sorted((c.kind, c.middle) for c in got) == [("block", "    return 1\n"), ("line", "return 1\n")]
    assert all(c.prefix + c.middle + c.suffix == broken for c in got)


def test_unparsable_file_and_unknown_language_give_line_cases():
    broken = "def f(:\n  )(\nx = = 2\n"  # nothing in it parses cleanly
    got = build_cases([("r", "bad.py", broken)], "python")
    assert got and {c.kind for c in got} == {"line"}
    for c in got:
        assert c.prefix + c.middle + c.suffix == broken and c.middle.count("\n") <= 1
    assert {c.middle for c in got} == {"def f(:\n", "x = = 2\n"}
    cobol = "       IDENTIFICATION DIVISION.\n       PROGRAM-ID. HELLO.\n\n       PROCEDURE DIVISION.\n"
    got = build_cases([("r", "hello.cob", cobol)], "cobol")
    assert sorted(c.middle for c in got) == sorted(["IDENTIFICATION DIVISION.\n", "PROGRAM-ID. HELLO.\n", "PROCEDURE DIVISION.\n"])
    assert {c.kind for c in got} == {"line"} and all(c.prefix + c.middle + c.suffix == cobol for c in got)
    assert build_cases([("r", "empty.py", "")], "python") == []
    assert build_cases([("r", "blank.rs", "\n\n  \n")], "rust") == []
    assert build_cases([], "python") == []
    weird = "x = '\ud800'\nprint(x)\n"  # a lone surrogate survives the round trip
    for c in build_cases([("r", "w.py", weird)], "python"):
        assert c.prefix + c.middle + c.suffix == weird


@pytest.mark.parametrize("language,path,source", [
    ("rust", "src/lib.rs", "fn main() {\n    let x = foo(1, 2);\n    if x > 1 {\n        bar(x);\n    }\n}\n"),
    ("javascript", "a.js", "function f(a) {\n  const x = g(a, 1);\n  if (x) {\n    h(x);\n  }\n  return x;\n}\n"),
    ("typescript", "a.ts", "function f(a: number): number {\n  const x = g(a, 1);\n  return x;\n}\n"),
    ("go", "a.go", "package main\n\nfunc f(a int) int {\n\tx := g(a, 1)\n\treturn x\n}\n"),
])
def test_other_grammars_give_all_kinds(language, path, source):
    got = build_cases([("r", path, source)], language)
    assert {c.kind for c in got} == set(CASE_KINDS)
    for c in got:
        assert c.prefix + c.middle + c.suffix == source
        if c.kind == "arguments":
            assert c.prefix.endswith("(") and c.suffix.startswith(")") and c.middle in ("a, 1", "1, 2", "x")
