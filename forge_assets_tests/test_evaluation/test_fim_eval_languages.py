"""FIM evaluation cases for the grammars added with Swift, Java, Kotlin, C, C++, C#, PHP and YAML: each language's
node-type table gives its kinds with the exact middles a small real-shaped file should give, trees with syntax errors
keep the cases of what parsed cleanly, and on real repositories (the vendored bundles, and the full mirrors where
this machine has them) nearly every file gives AST cases."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from forge_assets.evaluation.fim_eval import CASE_KINDS, MAX_BLOCK_LINES, FimCase, build_cases
from forge_assets.languages import language_of_path
from forge_assets.mining.units import ast_status
from forge_assets_tests.real_repos import REAL_REPOS, clone_real_repo

NEW = ("swift", "java", "kotlin", "c", "cpp", "csharp", "php", "yaml")
pytestmark = pytest.mark.skipif(not all(ast_status().get(g) for g in NEW),
                                reason="a tree-sitter grammar of Swift/Java/Kotlin/C/C++/C#/PHP/YAML does not load here")

# language -> (path, source, every (kind, middle) its cases must be: nothing missing, nothing more)
SMALL = {
    "swift": ("Sources/Greeter.swift", '''import Foundation

struct Greeter {
    let name: String

    func greet(_ others: [String]) -> String {
        let joined = others.joined(separator: ", ")
        return "Hello, \\(joined)"
    }
}
''', [
        ("arguments", 'separator: ", "'),  # a call's arguments, label included
        ("block", '        let joined = others.joined(separator: ", ")\n        return "Hello, \\(joined)"\n'),
        ("line", 'let joined = others.joined(separator: ", ")\n'),
        ("line", "let name: String\n"),
        ("line", 'return "Hello, \\(joined)"\n'),
    ]),
    "java": ("src/main/java/com/example/Greeter.java", '''package com.example;

public final class Greeter {
  private final String name;

  public String greet(List<String> others) {
    String joined = String.join(", ", others);
    return "Hello, " + joined;
  }
}
''', [
        ("arguments", '", ", others'),
        ("block", '    String joined = String.join(", ", others);\n    return "Hello, " + joined;\n'),  # the method's body
        ("line", 'String joined = String.join(", ", others);\n'),
        ("line", "private final String name;\n"),
        ("line", 'return "Hello, " + joined;\n'),
    ]),
    "kotlin": ("src/main/kotlin/Greeter.kt", '''package com.example

class Greeter(private val name: String) {
  fun greet(others: List<String>): String {
    val joined = others.joinToString(separator = ", ")
    return "Hello, $joined"
  }
}
''', [
        ("arguments", 'separator = ", "'),
        ("block", '    val joined = others.joinToString(separator = ", ")\n    return "Hello, $joined"\n'),
        ("line", 'return "Hello, $joined"\n'),
        ("line", 'val joined = others.joinToString(separator = ", ")\n'),
    ]),
    "c": ("src/greet.c", '''#include <stdio.h>

static int greet(const char *name, int times)
{
    for (int i = 0; i < times; i++) {
        printf("Hello, %s\\n", name);
    }
    return times;
}
''', [
        ("arguments", '"Hello, %s\\n", name'),
        ("block", '        printf("Hello, %s\\n", name);\n'),  # the for loop's body
        ("block", '    for (int i = 0; i < times; i++) {\n        printf("Hello, %s\\n", name);\n    }\n    return times;\n'),
        ("line", 'printf("Hello, %s\\n", name);\n'),
        ("line", "return times;\n"),
    ]),
    "cpp": ("src/greeter.cpp", '''#include <string>

std::string greet(const std::vector<std::string>& others) {
    auto joined = join(others, ", ");
    return "Hello, " + joined;
}
''', [
        ("arguments", 'others, ", "'),
        ("block", '    auto joined = join(others, ", ");\n    return "Hello, " + joined;\n'),
        ("line", 'auto joined = join(others, ", ");\n'),
        ("line", 'return "Hello, " + joined;\n'),
    ]),
    "csharp": ("src/Greeter.cs", '''namespace Demo
{
    public class Greeter
    {
        public string Greet(List<string> others)
        {
            var joined = string.Join(", ", others);
            return "Hello, " + joined;
        }
    }
}
''', [
        ("arguments", '", ", others'),
        ("block", '            var joined = string.Join(", ", others);\n            return "Hello, " + joined;\n'),
        ("line", 'return "Hello, " + joined;\n'),
        ("line", 'var joined = string.Join(", ", others);\n'),
    ]),
    "php": ("src/Greeter.php", '''<?php

namespace App;

class Greeter
{
    public function greet(array $others): string
    {
        $joined = implode(', ', $others);
        return "Hello, " . $joined;
    }
}
''', [
        ("arguments", "', ', $others"),
        ("block", "        $joined = implode(', ', $others);\n        return \"Hello, \" . $joined;\n"),
        ("line", "$joined = implode(', ', $others);\n"),
        ("line", 'return "Hello, " . $joined;\n'),
    ]),
    "yaml": ("apps/base/podinfo/deployment.yaml", '''apiVersion: apps/v1
kind: Deployment
metadata:
  name: podinfo
spec:
  template:
    spec:
      containers:
        - name: podinfo
          image: ghcr.io/stefanprodan/podinfo:6.5.0
          args:
            - --port=9898
''', [
        # blocks: the value under each key that has one on the lines below it
        ("block", "            - --port=9898\n"),  # args:
        ("block", "        - name: podinfo\n          image: ghcr.io/stefanprodan/podinfo:6.5.0\n          args:\n"
                  "            - --port=9898\n"),  # containers:
        ("block", "      containers:\n        - name: podinfo\n          image: ghcr.io/stefanprodan/podinfo:6.5.0\n"
                  "          args:\n            - --port=9898\n"),  # spec: (the template's)
        ("block", "    spec:\n      containers:\n        - name: podinfo\n          image: ghcr.io/stefanprodan/podinfo:6.5.0\n"
                  "          args:\n            - --port=9898\n"),  # template:
        ("block", "  name: podinfo\n"),  # metadata:
        ("block", "  template:\n    spec:\n      containers:\n        - name: podinfo\n"
                  "          image: ghcr.io/stefanprodan/podinfo:6.5.0\n          args:\n            - --port=9898\n"),  # spec:
        # lines: a `key: value` pair or a `- item` alone on its line (`- name: podinfo` is an item of several lines)
        ("line", "- --port=9898\n"),
        ("line", "apiVersion: apps/v1\n"),
        ("line", "image: ghcr.io/stefanprodan/podinfo:6.5.0\n"),
        ("line", "kind: Deployment\n"),
        ("line", "name: podinfo\n"),
    ]),
}


def _kinds_are_what_they_claim(c: FimCase) -> None:
    assert c.middle.strip(), c
    if c.kind == "line":
        assert c.middle.count("\n") <= 1 and (c.middle.endswith("\n") or not c.suffix), c
        assert c.middle == c.middle.lstrip() and not c.prefix.split("\n")[-1].strip(), c  # only indentation before it
    elif c.kind == "arguments":
        assert "\n" not in c.middle and c.prefix.endswith("(") and c.suffix.startswith(")"), c
    else:
        assert c.kind == "block", c
        assert 1 <= len(c.middle.splitlines()) <= MAX_BLOCK_LINES and c.middle.endswith("\n"), c
        assert c.prefix == "" or c.prefix.endswith("\n"), c


@pytest.mark.parametrize("language", NEW)
def test_a_small_file_gives_every_kind_with_the_expected_middles(language):
    path, source, expected = SMALL[language]
    assert language_of_path(path) == language
    got = build_cases([("acme/greeter", path, source)], language, max_cases=1000, max_context_chars=10**9)
    assert sorted((c.kind, c.middle) for c in got) == sorted(expected)
    assert {c.kind for c in got} == ({"line", "block"} if language == "yaml" else set(CASE_KINDS))
    for c in got:
        assert c.prefix + c.middle + c.suffix == source
        _kinds_are_what_they_claim(c)
    for c in build_cases([("acme/greeter", path, source)], language, max_cases=1000, max_context_chars=60):
        assert c.prefix + c.middle + c.suffix in source  # a trimmed case is still one contiguous slice


def test_a_tree_with_errors_keeps_what_parsed_cleanly():
    # `a = = 2;` holds an ERROR: it gives no line and f's body no block; g(1)'s statement, h's body and the calls stay.
    java = "class A {\n  void f() {\n    int a = g(1);\n    a = = 2;\n  }\n\n  void h() {\n    k(3);\n  }\n}\n"
    got = build_cases([("r", "A.java", java)], "java", max_cases=100)
    assert sorted((c.kind, c.middle) for c in got) == [
        ("arguments", "1"), ("arguments", "3"), ("block", "    k(3);\n"), ("line", "int a = g(1);\n"), ("line", "k(3);\n")]
    # Swift that tree-sitter-swift 0.0.1 cannot read (typed throws, an attribute with empty parentheses, both valid
    # Swift 6): the functions around the construct keep their cases.
    swift = ("struct Tool {\n    @Option() var name: String\n\n"
             "    func parse(_ text: String) throws(ParseError) -> Int {\n        let value = try decode(text)\n        return value\n    }\n\n"
             "    func run() {\n        print(name)\n    }\n}\n")
    got = build_cases([("r", "Tool.swift", swift)], "swift", max_cases=100)
    assert sorted((c.kind, c.middle) for c in got) == [
        ("arguments", "name"), ("arguments", "text"),
        ("block", "        let value = try decode(text)\n        return value\n"), ("block", "        print(name)\n"),
        ("line", "let value = try decode(text)\n"), ("line", "print(name)\n"), ("line", "return value\n")]
    for c in got:
        assert c.prefix + c.middle + c.suffix == swift


@pytest.mark.parametrize("language,path,source,lines", [
    # the call and its arguments sit under the ERROR node: clean themselves, but not taken
    ("python", "a.py", "if x\n    foo(1, 2)\n", ["if x\n", "foo(1, 2)\n"]),
    ("kotlin", "a.kt", "fun f() {\n    g(1)\n\n\nfun h() {\n    k(2)\n}\n", ["fun f() {\n", "g(1)\n", "fun h() {\n", "k(2)\n"]),
])
def test_nothing_under_an_error_node_and_plain_lines_when_no_clean_span(language, path, source, lines):
    got = build_cases([("r", path, source)], language, max_cases=100)
    assert {c.kind for c in got} == {"line"} and sorted(c.middle for c in got) == sorted(lines)
    assert all(c.prefix + c.middle + c.suffix == source for c in got)


# ---------------------------------------------------------------- real repositories


def _figures(files: list[tuple[str, str]], language: str) -> dict:
    """Per-file cases of a repository's files of one language: how many files give AST cases, how many fall back
    to plain lines (a tree with errors and no clean span), how many give none (declarations only, a comment), and the
    cases of each kind. Every case is checked to be a slice of its file and of the shape of its kind."""
    out = {"files": len(files), "ast": 0, "plain_lines": 0, "no_case": 0, **{k: 0 for k in CASE_KINDS}}
    for path, source in files:
        cases = build_cases([("r", path, source)], language, max_cases=100_000, max_context_chars=10**9)
        plain = build_cases([("r", path, source)], "none", max_cases=100_000, max_context_chars=10**9)  # no grammar
        for c in cases:
            assert c.prefix + c.middle + c.suffix == source, (path, c.kind, c.middle)
            _kinds_are_what_they_claim(c)
            out[c.kind] += 1
        if not cases:
            out["no_case"] += 1
        elif {(c.kind, len(c.prefix), c.middle) for c in cases} == {(c.kind, len(c.prefix), c.middle) for c in plain}:
            out["plain_lines"] += 1
        else:
            out["ast"] += 1
    return out


def _check_figures(name: str, language: str, got: dict, record_property) -> None:
    record_property(f"fim_cases_{name}", got)
    print(f"{name} ({language}): {got}")
    with_cases = got["ast"] + got["plain_lines"]
    assert got["files"] >= 15, got
    assert got["ast"] >= 0.85 * got["files"] - 1, got  # the rest: files of declarations only, or a comment alone
    assert got["ast"] >= 0.95 * with_cases, got  # plain lines only where tree-sitter-swift 0.0.1 reads next to nothing
    kinds = ("line", "block") if language == "yaml" else CASE_KINDS
    assert all(got[k] >= 100 for k in kinds), got
    if language == "yaml":
        assert got["arguments"] == 0, got


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fim_real_repos")
    return {name: clone_real_repo(name, root / name) for name in REAL_REPOS}


@pytest.mark.parametrize("name", sorted(REAL_REPOS))
def test_vendored_repositories_give_ast_cases_in_nearly_every_file(name, bundles, record_property):
    language = REAL_REPOS[name].language
    tree = bundles[name]
    paths = subprocess.run(["git", "ls-files", "-z"], cwd=tree, check=True, capture_output=True, text=True).stdout.split("\0")
    files = [(p, (tree / p).read_text(encoding="utf-8")) for p in paths if p and language_of_path(p) == language]
    _check_figures(name, language, _figures(files, language), record_property)


MIRRORS = Path("/work/.mirror")
MIRRORED = {"apple+swift-argument-parser": "swift", "square+javapoet": "java", "cashapp+turbine": "kotlin",
            "fluxcd+flux2-kustomize-helm-example": "yaml"}


@pytest.mark.parametrize("mirror", sorted(MIRRORED))
def test_whole_mirrored_repositories_give_ast_cases_in_nearly_every_file(mirror, record_property):
    git_dir = MIRRORS / mirror / "repo"
    if not git_dir.is_dir():
        pytest.skip(f"{git_dir} is absent: the bare mirrors exist only on the development machine (CI has the "
                    f"vendored bundles, tested above)")
    language = MIRRORED[mirror]
    archive = subprocess.run(["git", "-C", str(git_dir), "archive", "--format=tar", "HEAD"], check=True, capture_output=True).stdout
    files = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile() and language_of_path(member.name) == language:
                files.append((member.name, tar.extractfile(member).read().decode("utf-8")))
    _check_figures(mirror, language, _figures(files, language), record_property)
