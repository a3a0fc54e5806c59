"""FIM formats and middles; instruction and synthetic tasks built from real units."""

from __future__ import annotations

import random
import re
from collections import Counter

from forge_assets.chat import EOT, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME
from forge_assets.mining.fim import fim_sample
from forge_assets.mining.instruct import instruction_pair, synthetic_task, unit_texts
from forge_assets.mining.units import parse_file

from mining_repos import CALC_PY, MAIN_GO

PSM = re.compile(re.escape(REPO_NAME) + r"(?P<repo>.*)\n" + re.escape(FILE_SEP) + r"(?P<path>.*)\n" + re.escape(FIM_PREFIX)
                 + r"(?P<prefix>[\s\S]*)" + re.escape(FIM_SUFFIX) + r"(?P<suffix>[\s\S]*)" + re.escape(FIM_MIDDLE)
                 + r"(?P<middle>[\s\S]*)" + re.escape(EOT) + "$")
SPM = re.compile(re.escape(REPO_NAME) + r"(?P<repo>.*)\n" + re.escape(FILE_SEP) + r"(?P<path>.*)\n" + re.escape(FIM_PREFIX)
                 + re.escape(FIM_SUFFIX) + r"(?P<suffix>[\s\S]*)" + re.escape(FIM_MIDDLE) + r"(?P<rest>[\s\S]*)" + re.escape(EOT) + "$")


def test_psm_and_spm_layouts_reassemble_the_file():
    pf = parse_file(CALC_PY, "python", "src/calc.py")
    for seed in range(40):
        spm = seed % 2 == 1
        kind, text = fim_sample(pf, "alpha", "src/calc.py", random.Random(seed), spm=spm)
        m = (SPM if spm else PSM).match(text)
        assert m, text[:200]
        assert (m["repo"], m["path"]) == ("alpha", "src/calc.py")
        if spm:
            # SPM: suffix first, then prefix + middle in file order.
            assert m["rest"] + m["suffix"] == CALC_PY
        else:
            assert m["prefix"] + m["middle"] + m["suffix"] == CALC_PY
            assert m["middle"].strip()


def test_middles_come_from_ast_spans_and_random_spans():
    pf = parse_file(CALC_PY, "python", "src/calc.py")
    kinds = Counter(fim_sample(pf, "r", "p.py", random.Random(seed), spm=False)[0] for seed in range(200))
    assert set(kinds) == {"block", "statements", "random"}
    assert kinds["block"] + kinds["statements"] > kinds["random"]
    # A "block" middle is exactly a block's statements, from the start of its first line.
    block_spans = {(pf.line_start(stmts[0][0]), stmts[-1][1]) for _, _, stmts in pf.blocks}
    for seed in range(200):
        rng = random.Random(seed)
        kind, text = fim_sample(pf, "r", "p.py", rng, spm=False)
        if kind == "block":
            m = PSM.match(text)
            start = len(m["prefix"].encode())
            assert (start, start + len(m["middle"].encode())) in block_spans


def test_prefix_and_suffix_are_trimmed_at_line_boundaries():
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(400))
    pf = parse_file(text, "python", "big.py")
    for seed in range(10):
        _, sample = fim_sample(pf, "r", "big.py", random.Random(seed), spm=False, context_chars=500)
        m = PSM.match(sample)
        assert len(m["prefix"]) <= 500 and len(m["suffix"]) <= 500
        assert m["prefix"] == "" or m["prefix"].startswith("def ") or m["prefix"].startswith(("    ", "\n"))


def test_instruction_pairs_doc_to_code_and_signature_to_body():
    units = {u.name: u for u in unit_texts(parse_file(CALC_PY, "python", "src/calc.py"), "src/calc.py")}
    documented = instruction_pair(units["clamp"])
    assert "Write the Python function `clamp`" in documented and "Clamp a value into the closed range" in documented
    assert "def clamp(value, low, high):" in documented.split("<|im_start|>assistant")[1]
    undocumented = instruction_pair(units["primes_below"])
    prompt, answer = undocumented.split("<|im_start|>assistant")
    assert "Complete the body" in prompt and "def primes_below(limit):" in prompt and "sieve" not in prompt
    assert "sieve = [True] * limit" in answer
    assert undocumented.endswith(EOT) and "messages" not in undocumented


def test_synthetic_fix_plants_one_bug_and_answers_with_the_original():
    units = {u.name: u for u in unit_texts(parse_file(MAIN_GO, "go", "cmd/main.go"), "cmd/main.go")}
    text = synthetic_task(units["Max"], "fix", random.Random(0))
    prompt, answer = text.split("<|im_start|>assistant")
    assert "if a > b {" in prompt and "if a >= b {" in answer and "`>=`" in answer


def test_synthetic_refactor_renames_a_local_everywhere():
    units = {u.name: u for u in unit_texts(parse_file(CALC_PY, "python", "src/calc.py"), "src/calc.py")}
    text = synthetic_task(units["mean"], "refactor", random.Random(0))
    prompt, answer = text.split("<|im_start|>assistant")
    assert "rename the local `n` to `count`" in prompt or "rename the local `v` to `value`" in prompt
    code = answer.split("```python\n")[1].split("```")[0]
    compile(code, "mean.py", "exec")  # still valid Python
    assert ("count += 1" in code and " n " not in code) or ("for value in values" in code)


def test_synthetic_implement_uses_the_signature_and_doc():
    units = {u.name: u for u in unit_texts(parse_file(CALC_PY, "python", "src/calc.py"), "src/calc.py")}
    text = synthetic_task(units["hypotenuse"], "implement", random.Random(0))
    prompt, answer = text.split("<|im_start|>assistant")
    assert "Implement `hypotenuse`" in prompt and "def hypotenuse(a, b):" in prompt
    assert "math.sqrt(a * a + b * b)" in answer
