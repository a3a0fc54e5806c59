"""The programming languages Forge knows, and how a file or a fenced block names one.

LANGUAGES is the one registry: each language's extensions, file names, Markdown fence names, human name, tree-sitter
grammar (module, pip distribution, the node types that make code units and FIM blocks) and CodeBLEU name. Mining
(units, instruct, dataset), sessions and evaluation (codebleu_eval) read it; adding a language is one entry here,
its grammar wheel in pyproject.toml, and a test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

@dataclass(frozen=True)
class Grammar:
    """A tree-sitter grammar Forge parses a language with: where it comes from and which nodes are units and blocks."""

    name: str  # the grammar's key (units.load_grammar, ast_status): the language's name, or e.g. `tsx`
    module: str  # the Python module of the grammar wheel, e.g. tree_sitter_python
    distribution: str  # its pip distribution (pinned in pyproject.toml; recorded in each dataset's manifest)
    units: tuple[str, ...]  # tree-sitter query patterns: `(node) @function` / `(node) @class` are code units
    blocks: tuple[str, ...]  # `(node) @block`: bodies FIM middles are drawn from
    attr: str = "language"  # the module's function returning the language capsule
    only_for: tuple[str, ...] = ()  # file extensions this grammar is for instead of the language's first one


@dataclass(frozen=True)
class Language:
    """One programming language Forge knows: the one place each is described (see docs/extending.md)."""

    name: str  # the partition key: lower-case, stable, the users' word (see LANGUAGE_NAME)
    display: str  # its human name in prompts ("Rust", "C++")
    extensions: tuple[str, ...]  # file extensions (lower case, with the dot)
    fence_names: tuple[str, ...]  # words people write after ``` in Markdown for it
    filenames: tuple[str, ...] = ()  # whole file names without a telling extension (Rakefile)
    fence: str = ""  # the fence info string Forge writes for it; "" = name
    grammars: tuple[Grammar, ...] = ()  # none: files are cut into line windows, FIM middles are lines
    codebleu: str | None = None  # the `codebleu` package's name for it; None: no CodeBLEU (needs a grammar too)

    @property
    def fence_info(self) -> str:
        return self.fence or self.name


# tree-sitter query patterns shared by JavaScript and TypeScript.
_JS_UNITS = (
    "(function_declaration) @function", "(generator_function_declaration) @function",
    "(method_definition) @function", "(class_declaration) @class",
    "(variable_declarator value: [(arrow_function) (function_expression)]) @function",
)
_TS_UNITS = _JS_UNITS + ("(abstract_class_declaration) @class", "(interface_declaration) @class")
_JS_BLOCKS = ("(statement_block) @block",)
# C and C++: functions with a body (not prototypes), and structs, unions and enums that define members.
_C_UNITS = (
    "(function_definition body: (compound_statement)) @function", "(struct_specifier body: (_)) @class",
    "(union_specifier body: (_)) @class", "(enum_specifier body: (_)) @class",
)

LANGUAGES: tuple[Language, ...] = (
    Language("python", "Python", (".py", ".pyi"), ("python", "py", "python3"), codebleu="python", grammars=(
        Grammar("python", "tree_sitter_python", "tree-sitter-python",
                ("(function_definition) @function", "(class_definition) @class"), ("(block) @block",)),)),
    Language("rust", "Rust", (".rs",), ("rust", "rs"), codebleu="rust", grammars=(
        Grammar("rust", "tree_sitter_rust", "tree-sitter-rust",
                ("(function_item) @function", "(impl_item) @class", "(trait_item) @class", "(struct_item) @class",
                 "(enum_item) @class"), ("(block) @block",)),)),
    Language("typescript", "TypeScript", (".ts", ".tsx", ".mts", ".cts"), ("typescript", "ts", "tsx"), grammars=(
        Grammar("typescript", "tree_sitter_typescript", "tree-sitter-typescript", _TS_UNITS, _JS_BLOCKS,
                attr="language_typescript"),
        Grammar("tsx", "tree_sitter_typescript", "tree-sitter-typescript", _TS_UNITS, _JS_BLOCKS,
                attr="language_tsx", only_for=(".tsx",)))),
    Language("javascript", "JavaScript", (".js", ".jsx", ".mjs", ".cjs"), ("javascript", "js", "jsx", "node"),
             codebleu="javascript", grammars=(
        Grammar("javascript", "tree_sitter_javascript", "tree-sitter-javascript", _JS_UNITS, _JS_BLOCKS),)),
    Language("go", "Go", (".go",), ("go", "golang"), codebleu="go", grammars=(
        Grammar("go", "tree_sitter_go", "tree-sitter-go",
                ("(function_declaration) @function", "(method_declaration) @function", "(type_declaration) @class"),
                ("(block) @block",)),)),
    Language("ruby", "Ruby", (".rb", ".rake"), ("ruby", "rb"), filenames=("Rakefile", "Gemfile"), codebleu="ruby", grammars=(
        Grammar("ruby", "tree_sitter_ruby", "tree-sitter-ruby",
                ("(method) @function", "(singleton_method) @function", "(class) @class", "(module) @class"),
                ("(body_statement) @block", "(do_block) @block")),)),
    Language("swift", "Swift", (".swift",), ("swift",), grammars=(
        Grammar("swift", "tree_sitter_swift", "tree-sitter-swift",
                ("(function_declaration) @function", "(init_declaration) @function", "(deinit_declaration) @function",
                 "(subscript_declaration) @function", "(class_declaration) @class", "(protocol_declaration) @class"),
                ("(statements) @block",)),)),
    Language("shell", "shell", (".sh", ".bash", ".zsh"), ("sh", "bash", "shell", "zsh", "console"), fence="bash", grammars=(
        Grammar("shell", "tree_sitter_bash", "tree-sitter-bash", ("(function_definition) @function",),
                ("(compound_statement) @block",)),)),
    Language("java", "Java", (".java",), ("java",), codebleu="java", grammars=(
        Grammar("java", "tree_sitter_java", "tree-sitter-java",
                ("(method_declaration body: (block)) @function", "(constructor_declaration) @function",
                 "(class_declaration) @class", "(interface_declaration) @class", "(enum_declaration) @class",
                 "(record_declaration) @class", "(annotation_type_declaration) @class"),
                ("(block) @block", "(constructor_body) @block")),)),
    Language("kotlin", "Kotlin", (".kt", ".kts"), ("kotlin", "kt"), grammars=(
        Grammar("kotlin", "tree_sitter_kotlin", "tree-sitter-kotlin",
                ("(function_declaration) @function", "(class_declaration) @class", "(object_declaration) @class"),
                ("(block) @block", "(lambda_literal) @block")),)),  # `fun f() = runTest { ... }`: a lambda body
    Language("c", "C", (".c", ".h"), ("c",), codebleu="c", grammars=(
        Grammar("c", "tree_sitter_c", "tree-sitter-c", _C_UNITS, ("(compound_statement) @block",)),)),
    Language("cpp", "C++", (".cc", ".cpp", ".cxx", ".hpp", ".hh"), ("cpp", "c++"), codebleu="cpp", grammars=(
        Grammar("cpp", "tree_sitter_cpp", "tree-sitter-cpp", _C_UNITS + ("(class_specifier body: (_)) @class",),
                ("(compound_statement) @block",)),)),
    Language("csharp", "C#", (".cs",), ("csharp", "cs", "c#"), codebleu="c_sharp", grammars=(
        Grammar("csharp", "tree_sitter_c_sharp", "tree-sitter-c-sharp",
                ("(method_declaration body: (_)) @function", "(constructor_declaration) @function",
                 "(class_declaration) @class", "(interface_declaration) @class", "(struct_declaration) @class",
                 "(record_declaration) @class", "(enum_declaration) @class"), ("(block) @block",)),)),
    Language("php", "PHP", (".php",), ("php",), codebleu="php", grammars=(
        Grammar("php", "tree_sitter_php", "tree-sitter-php",
                ("(function_definition) @function", "(method_declaration body: (_)) @function",
                 "(class_declaration) @class", "(interface_declaration) @class", "(trait_declaration) @class",
                 "(enum_declaration) @class"), ("(compound_statement) @block",), attr="language_php"),)),
    # Manifests and configuration: a unit is a YAML document (a Kubernetes resource, a workflow), split by its
    # top-level keys when it is long; FIM middles are mapping pairs and sequence items.
    Language("yaml", "YAML", (".yaml", ".yml"), ("yaml", "yml"), grammars=(
        Grammar("yaml", "tree_sitter_yaml", "tree-sitter-yaml",
                ("(document) @class", "(document (block_node (block_mapping (block_mapping_pair) @function)))"),
                ("(block_mapping) @block", "(block_sequence) @block")),)),
)
BY_NAME: dict[str, Language] = {lang.name: lang for lang in LANGUAGES}

# Derived lookups (partition keys are the names: lower-case, stable, the users' words).
EXTENSIONS: dict[str, str] = {ext: lang.name for lang in LANGUAGES for ext in lang.extensions}
FILENAMES: dict[str, str] = {fn: lang.name for lang in LANGUAGES for fn in lang.filenames}
# Names people write after ``` in Markdown, mapped to partition keys.
FENCE_NAMES: dict[str, str] = {word: lang.name for lang in LANGUAGES for word in lang.fence_names}
# Grammar name -> Grammar, for every grammar of every language (typescript's two: typescript, tsx).
GRAMMARS: dict[str, Grammar] = {g.name: g for lang in LANGUAGES for g in lang.grammars}

KNOWN: tuple[str, ...] = tuple(sorted(set(EXTENSIONS.values()) | set(FILENAMES.values())))

# A language name becomes a Dagster partition key, a folder (<artifact_root>/<asset>/<language>), part of a
# model tag (<prefix>-<language>:<version>, Ollama allows [a-z0-9._-]) and of a URL path (/lang/<language>/...).
# So: lower case (two spellings would share one folder on a case-insensitive disk), no `/` `\\` `.` (no
# path walks: `..`, `a/b`), no `+` `#` (a URL's space and fragment), no space or control character, no
# leading `-` (an option to a command). Forge's own names (KNOWN) all fit: cpp and csharp, not c++ or c#.
LANGUAGE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
LANGUAGE_NAME_MAX = 32


class LanguageNameError(ValueError):
    """A language name that cannot be a partition key or a folder name; the message says where it came from and the fix."""


def language_name_problem(name: object) -> str | None:
    """What is wrong with a language name, and the fix (one sentence each); None when it is fine."""
    if isinstance(name, str) and LANGUAGE_NAME.fullmatch(name):
        return None
    shown = f"`{name}`" if isinstance(name, str) and name and name.isprintable() else repr(name)
    if not isinstance(name, str):
        what = f"is a {type(name).__name__}, not text"
    elif not name:
        what = "is empty"
    elif any(c in name for c in "/\\") or name.strip(".") == "":
        what = "is a path, not a name (it holds `/`, `\\` or is `.`/`..`), and a language name becomes a folder name"
    elif "." in name:
        what = "holds `.`, and a language name becomes a folder name"
    elif any(c.isspace() or not c.isprintable() for c in name):
        what = "holds a space or a control character"
    elif name.lower() != name and LANGUAGE_NAME.fullmatch(name.lower()):
        what = f"has upper-case letters (partition keys and folders are lower case: write `{name.lower()}`)"
    elif len(name) > LANGUAGE_NAME_MAX:
        what = f"is {len(name)} characters long, more than {LANGUAGE_NAME_MAX}"
    elif not ("a" <= name[0] <= "z"):
        what = "does not start with a lower-case letter"
    else:
        bad = "".join(sorted({c for c in name.lower() if not (c.isascii() and (c.isalnum() or c in "_-"))}))
        what = f"holds {', '.join(f'`{c}`' for c in bad)}" if bad else "is not a usable name"
    alias = FENCE_NAMES.get(name.strip().lower()) if isinstance(name, str) else None
    if alias and alias != name.lower():
        what += f" (Forge calls this language `{alias}`)"
    return (f"the language name {shown} {what}. Fix: write a lower-case name of letters, digits, `_` and `-` that starts "
            f"with a letter, at most {LANGUAGE_NAME_MAX} characters, like Forge's own: {', '.join(KNOWN)}")


def check_language_name(name: object, where: str) -> str:
    """The name itself when it can be a partition key and a folder name; else LanguageNameError naming where it came from."""
    problem = language_name_problem(name)
    if problem is not None:
        raise LanguageNameError(f"{where}: {problem}.")
    return name  # type: ignore[return-value]


def language_of_path(path: str) -> str | None:
    """The language a file path is written in, or None when Forge does not train on it."""
    p = PurePosixPath(path.replace("\\", "/"))
    if p.name in FILENAMES:
        return FILENAMES[p.name]
    return EXTENSIONS.get(p.suffix.lower())


def language_of_fence(info: str) -> str | None:
    """The language a Markdown fence info string (```rust ...) names, or None."""
    word = info.strip().split(maxsplit=1)[0].lower() if info.strip() else ""
    return FENCE_NAMES.get(word)


def grammar_for(language: str, path: str = "") -> Grammar | None:
    """The grammar a file of this language is parsed with (a .tsx file: TSX), or None when Forge has none."""
    lang = BY_NAME.get(language)
    if lang is None or not lang.grammars:
        return None
    suffix = PurePosixPath(path.replace("\\", "/")).suffix.lower()
    return next((g for g in lang.grammars if suffix in g.only_for), None) or next(g for g in lang.grammars if not g.only_for)


def display_name(language: str) -> str:
    """A language's human name ("C++"), or the name itself for one Forge does not know."""
    lang = BY_NAME.get(language)
    return lang.display if lang else language


def fence_info(language: str) -> str:
    """The Markdown fence info string Forge writes for a language (shell: bash)."""
    lang = BY_NAME.get(language)
    return lang.fence_info if lang else language
