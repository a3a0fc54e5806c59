"""forge_assets.languages.LANGUAGES is the one registry of the languages Forge knows; these checks catch the mistakes a
new entry can make (a clash, a grammar node type that does not exist, a grammar wheel missing from pyproject.toml)."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from forge_assets.languages import (BY_NAME, EXTENSIONS, FENCE_NAMES, FILENAMES, GRAMMARS, KNOWN, LANGUAGES, check_language_name,
                                    display_name, fence_info, grammar_for, language_of_fence, language_of_path)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _clashes(attr: str) -> list[str]:
    counts = Counter(v for lang in LANGUAGES for v in getattr(lang, attr))
    return sorted(v for v, n in counts.items() if n > 1)


def test_names_are_unique_and_usable_and_each_value_belongs_to_one_language():
    assert len(BY_NAME) == len(LANGUAGES)
    for lang in LANGUAGES:
        assert check_language_name(lang.name, "LANGUAGES") == lang.name
        assert lang.display and lang.extensions and lang.fence_names, lang.name
        assert all(re.fullmatch(r"\.[a-z0-9+]+", ext) for ext in lang.extensions), lang.name
        assert all(w == w.lower() for w in lang.fence_names), lang.name
    for attr in ("extensions", "filenames", "fence_names"):
        assert not _clashes(attr), f"{attr} claimed by two languages: {_clashes(attr)}"
    assert len({g.name for lang in LANGUAGES for g in lang.grammars}) == sum(len(lang.grammars) for lang in LANGUAGES)
    assert KNOWN == tuple(sorted(BY_NAME))


def test_the_derived_lookups_read_the_registry():
    for lang in LANGUAGES:
        for ext in lang.extensions:
            assert EXTENSIONS[ext] == lang.name and language_of_path(f"src/x{ext.upper()}") == lang.name
        for name in lang.filenames:
            assert FILENAMES[name] == lang.name and language_of_path(f"a/{name}") == lang.name
        for word in lang.fence_names:
            assert FENCE_NAMES[word] == lang.name and language_of_fence(f"{word} title=x") == lang.name
        assert display_name(lang.name) == lang.display and fence_info(lang.name) == (lang.fence or lang.name)
    assert display_name("cobol") == "cobol" and fence_info("shell") == "bash" and display_name("cpp") == "C++"


def test_each_language_with_grammars_has_exactly_one_default_and_tsx_gets_its_own():
    for lang in LANGUAGES:
        if lang.grammars:
            assert sum(not g.only_for for g in lang.grammars) == 1, lang.name
            assert all(set(g.only_for) <= set(lang.extensions) for g in lang.grammars), lang.name
    assert grammar_for("typescript", "ui/App.tsx").name == "tsx" and grammar_for("typescript", "a.ts").name == "typescript"
    assert grammar_for("java", "A.java").name == "java" and grammar_for("lua", "a.lua") is None and grammar_for("nope") is None


def test_every_grammar_wheel_is_a_dependency_in_pyproject():
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].strip().lower() for d in deps}
    missing = sorted({g.distribution for g in GRAMMARS.values()} - names)
    assert not missing, f"grammar wheels not in pyproject.toml's dependencies: {missing}. Fix: add them (an ABI-14 release)"


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_every_node_type_a_grammar_names_exists_in_it(name):
    """units.load_grammar skips a pattern the installed grammar rejects (so one missing node type does not disable the
    rest); a misspelt node type in the registry would vanish silently, so each pattern must compile here."""
    from forge_assets.mining.units import tree_sitter_language

    grammar = GRAMMARS[name]
    language = tree_sitter_language(name)
    assert language is not None, f"grammar {name} ({grammar.module}.{grammar.attr}) does not load"
    assert grammar.units and grammar.blocks
    for pattern in grammar.units + grammar.blocks:
        assert re.search(r"@(function|class|block)\)*$", pattern), pattern
        language.query(pattern)  # raises on a node type the grammar lacks
    assert all(p.endswith("@block") for p in grammar.blocks)


def test_codebleu_names_are_codebleus_and_scored_where_a_grammar_loads():
    from codebleu.utils import AVAILABLE_LANGS

    from forge_assets.evaluation import codebleu_eval

    for lang in LANGUAGES:
        if lang.codebleu:
            assert lang.codebleu in AVAILABLE_LANGS, lang.name
        assert codebleu_eval.supported(lang.name) == bool(lang.codebleu and lang.grammars), lang.name
