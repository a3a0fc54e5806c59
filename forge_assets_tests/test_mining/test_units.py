"""tree-sitter units: functions, methods, classes/impls with their doc comments, per language."""

from __future__ import annotations

import pytest

from forge_assets.mining.units import WINDOW_LINES, ast_status, parse_file

from mining_repos import APP_TS, BUILD_SH, CALC_PY, LEGACY_JS, LIB_RS, MAIN_GO, TOOL_RB, VIEW_TSX


def summary(text: str, language: str, path: str = "") -> tuple[object, dict]:
    pf = parse_file(text, language, path)
    return pf, {u.name: u for u in pf.units}


def test_python_units_docstrings_and_methods():
    pf, units = summary(CALC_PY, "python", "calc.py")
    assert pf.has_ast and not pf.parse_failed
    assert {"clamp", "mean", "primes_below", "Accumulator", "add", "average", "hypotenuse"} <= set(units)
    assert units["Accumulator"].kind == "class" and units["add"].kind == "method" and units["clamp"].kind == "function"
    assert units["add"].depth == 1 and units["clamp"].depth == 0
    assert units["clamp"].doc == "Clamp a value into the closed range from low to high."
    assert units["primes_below"].doc == ""
    # The head shown in "complete the body" prompts is the signature plus the docstring.
    head = pf.text(units["mean"].def_start, units["mean"].head_end)
    assert head.startswith("def mean(values):") and head.endswith('"""Return the arithmetic mean of a non-empty list of numbers."""')
    assert pf.text(units["clamp"].start, units["clamp"].end).rstrip().endswith("return value")
    assert pf.blocks, "blocks (FIM material) are collected"


def test_decorators_and_comments_belong_to_the_unit():
    text = "import functools\n\n# Cached squares.\n@functools.cache\ndef square(x):\n    return x * x\n"
    pf, units = summary(text, "python")
    u = units["square"]
    assert pf.text(u.start, u.end).startswith("# Cached squares.\n@functools.cache\ndef square")
    assert u.doc == "Cached squares."


@pytest.mark.parametrize("language,path,text,expected", [
    ("typescript", "web/app.ts", APP_TS, {"User": "class", "findUser": "function", "Registry": "class", "add": "method"}),
    ("typescript", "web/view.tsx", VIEW_TSX, {"Greeting": "function"}),
    ("javascript", "web/legacy.js", LEGACY_JS, {"debounce": "function", "double": "function"}),
    ("go", "cmd/main.go", MAIN_GO, {"Max": "function", "Counter": "class", "Inc": "function", "main": "function"}),
    ("ruby", "lib/tool.rb", TOOL_RB, {"DurationFormatter": "class", "format": "method"}),
    ("shell", "scripts/build.sh", BUILD_SH, {"build_all": "function"}),
])
def test_units_in_other_languages(language, path, text, expected):
    pf, units = summary(text, language, path)
    assert pf.has_ast and not pf.parse_failed
    assert {name: units[name].kind for name in expected} == expected


@pytest.mark.parametrize("language,path,text,name,doc", [
    ("typescript", "web/app.ts", APP_TS, "findUser", "Find a user by id in a list, or undefined when no user has that id."),
    ("typescript", "web/app.ts", APP_TS, "add", "Register a user and return how many users are registered now."),
    ("javascript", "web/legacy.js", LEGACY_JS, "debounce", "Debounce a function: call it once the calls stop for `wait` milliseconds."),
    ("go", "cmd/main.go", MAIN_GO, "Max", "Max returns the larger of two integers."),
    ("ruby", "lib/tool.rb", TOOL_RB, "format", "Format a number of seconds as minutes and seconds."),
    ("shell", "scripts/build.sh", BUILD_SH, "build_all", "Build every package of the project."),
])
def test_doc_comments(language, path, text, name, doc):
    _, units = summary(text, language, path)
    assert units[name].doc == doc


def test_rust_units_when_the_grammar_loads():
    assert ast_status()["rust"], "tree-sitter-rust must be an ABI-14 build (pyproject pins 0.23.2)"
    pf, units = summary(LIB_RS, "rust", "lib.rs")
    assert {"Point": "class", "distance": "method", "sum_above": "function"}.items() <= {n: u.kind for n, u in units.items()}.items()
    assert units["distance"].doc == "The distance from this point to another one."
    struct, impl = [u for u in pf.units if u.name == "Point"]  # `struct Point` and `impl Point` are both units
    assert pf.text(struct.start, struct.end).startswith("/// A point in the plane.\n#[derive") and struct.doc == "A point in the plane."
    assert pf.text(impl.start, impl.end).startswith("impl Point {")


def test_grammars_load():
    status = ast_status()
    for name in ("python", "javascript", "typescript", "tsx", "go", "ruby", "shell", "swift", "java", "kotlin", "c", "cpp",
                 "csharp", "php", "yaml"):
        assert status[name], name
    assert len(status) >= 15  # 14 languages; TypeScript has two grammars (typescript, tsx)


def test_a_tree_with_errors_falls_back_to_line_windows():
    text = "def broken(:\n    return 1\n" + "x = 1\n" * 150
    pf = parse_file(text, "python", "broken.py")
    assert pf.parse_failed and not pf.has_ast
    assert [u.kind for u in pf.units] == ["window"] * 3
    assert pf.text(pf.units[0].start, pf.units[0].end).count("\n") == WINDOW_LINES
    assert "".join(pf.text(u.start, u.end) for u in pf.units) == text


def test_languages_without_a_grammar_use_windows_without_counting_a_failure():
    pf = parse_file("local a = {}\n" * 10, "lua", "a.lua")
    assert not pf.parse_failed and not pf.has_ast and pf.units[0].kind == "window"


def test_non_ascii_offsets_are_bytes_and_slice_cleanly():
    text = 'def grüß(name):\n    """Sag „Hallo“ — höflich."""\n    return f"Grüß dich, {name} 👋"\n'
    pf, units = summary(text, "python")
    u = units["grüß"]
    assert pf.text(u.start, u.end) == text.rstrip("\n")
    assert u.doc == "Sag „Hallo“ — höflich."


def test_a_tree_with_errors_keeps_its_clean_units_and_windows_the_broken_stretch():
    good = "def fine(x):\n    \"\"\"Add one.\"\"\"\n    return x + 1\n\n\n"
    broken = "def broken(:\n" + "    y = 2\n" * 5 + "\n\n"
    text = good + broken + "def also_fine(y):\n    return y * 2\n"
    pf = parse_file(text, "python", "partial.py")
    assert pf.parse_failed and pf.has_ast
    names = [u.name for u in pf.units if u.kind != "window"]
    assert names == ["fine", "also_fine"]
    windows = [pf.text(u.start, u.end) for u in pf.units if u.kind == "window"]
    assert len(windows) == 1 and "def broken(:" in windows[0] and "def fine" not in windows[0]
    assert "def also_fine" not in windows[0]
    assert pf.blocks and not [b for b in pf.blocks if "broken(:" in pf.text(b[0], b[1])]  # blocks: clean subtrees only
    assert {u.doc for u in pf.units if u.name == "fine"} == {"Add one."}


# One small real-shaped file per new grammar: (language, path, source, {unit name: (kind, doc or None)}).
NEW_LANGUAGE_FILES = [
    ("swift", "Sources/App/Parse.swift",
     "/// Parses the arguments.\npublic func parse(_ args: [String]) throws -> Int {\n    if args.isEmpty { return 0 }\n"
     "    return args.count\n}\n\n/**\n A command.\n */\nstruct Command {\n    init(name: String) {\n        self.name = name\n"
     "    }\n}\n",
     {"parse": ("function", "Parses the arguments."), "Command": ("class", "A command."), "init": ("method", None)}),
    ("java", "src/main/java/x/Box.java",
     "package x;\n\n/** A box of things. */\npublic final class Box {\n  /**\n   * Returns the value.\n   */\n"
     "  public int get() {\n    return value;\n  }\n}\n",
     {"Box": ("class", "A box of things."), "get": ("method", "Returns the value.")}),
    ("kotlin", "src/main/kotlin/app/Turbine.kt",
     "package app\n\n/**\n * Awaits the next item.\n */\nsuspend fun <T> Flow<T>.awaitItem(): T {\n  return first()\n}\n\n"
     "class Turbine {\n  /** Cancels it. */\n  fun cancel() {\n    channel.cancel()\n  }\n}\n",
     {"awaitItem": ("function", "Awaits the next item."), "Turbine": ("class", None), "cancel": ("method", "Cancels it.")}),
    ("c", "src/add.c",
     "#include <stdio.h>\n\n/* Adds two numbers. */\nstatic int add(int a, int b) {\n    return a + b;\n}\n\n"
     "int *make(void) {\n    return 0;\n}\n",
     {"add": ("function", "Adds two numbers."), "make": ("function", None)}),
    ("cpp", "src/widget.cpp",
     "namespace app {\n/// A widget.\nclass Widget {\n public:\n  /// Draws it.\n  void draw(int x) const {\n    render(x);\n"
     "  }\n};\ntemplate <typename T> T biggest(T a, T b) { return a > b ? a : b; }\n"
     "void Widget::resize(int w) { width_ = w; }\n}\n",
     {"Widget": ("class", "A widget."), "draw": ("method", "Draws it."), "biggest": ("function", None),
      "Widget::resize": ("function", None)}),
    ("csharp", "src/UserRepo.cs",
     "namespace App;\n\n/// <summary>\n/// A repository of users.\n/// </summary>\npublic sealed class UserRepo\n{\n"
     "    /// <summary>Finds a user.</summary>\n    public User Find(int id)\n    {\n        return _users[id];\n    }\n}\n",
     {"UserRepo": ("class", "A repository of users."), "Find": ("method", "Finds a user.")}),
    ("php", "src/greet.php",
     "<?php\n\n/**\n * Greets a user.\n */\nfunction greet(string $name): string {\n    return \"hi $name\";\n}\n\n"
     "class UserController {\n    /** Shows one. */\n    public function show(int $id) {\n        return $id;\n    }\n}\n",
     {"greet": ("function", "Greets a user."), "UserController": ("class", None), "show": ("method", "Shows one.")}),
    ("yaml", "apps/base/podinfo/release.yaml",
     "# The podinfo release.\napiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: podinfo\n"
     "spec:\n  interval: 50m\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: podinfo\n",
     {"HelmRelease/podinfo": ("class", "The podinfo release."), "Namespace/podinfo": ("class", None)}),
]


@pytest.mark.parametrize("language,path,text,expected", NEW_LANGUAGE_FILES, ids=[f[0] for f in NEW_LANGUAGE_FILES])
def test_each_new_grammar_gives_named_units_with_their_doc_comments(language, path, text, expected):
    pf = parse_file(text, language, path)
    assert pf.has_ast and not pf.parse_failed
    assert pf.blocks, "FIM blocks"
    units = {u.name: u for u in pf.units if u.name}
    for name, (kind, doc) in expected.items():
        assert name in units, (name, sorted(units))
        assert units[name].kind == kind, (name, units[name].kind)
        if doc is not None:
            assert units[name].doc == doc, (name, units[name].doc)
