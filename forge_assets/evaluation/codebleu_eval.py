"""CodeBLEU (the `codebleu` package) on generated answers vs reference answers, for the languages it parses.

codebleu 0.7.0 builds its tree-sitter `Language` from `tree_sitter_<lang>.language()` directly. The
grammar wheels Forge pins (0.23.x, ABI 14) return a PyCapsule there, which tree-sitter 0.22 (the
version codebleu pins) only accepts as an integer pointer, so codebleu's own loader raises
`TypeError: an integer is required`. `score` therefore hands `calc_codebleu` the Language that
Forge's miner loads the same grammar with (`mining.units.tree_sitter_language`), by replacing
codebleu's loader for the duration of the call. Everything else (weights, keywords, n-gram, syntax
and dataflow matching) is codebleu's own, so the figures are codebleu's.
"""

from __future__ import annotations

import logging
import re

from forge_assets.languages import LANGUAGES

# Forge language -> codebleu language, from forge_assets.languages (codebleu has no TypeScript or shell
# keywords/dataflow rules). A language is scored only when Forge also ships its grammar (see _language).
CODEBLEU_LANGS = {lang.name: lang.codebleu for lang in LANGUAGES if lang.codebleu}
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)


def supported(language: str) -> bool:
    return language in CODEBLEU_LANGS and _language(language) is not None


def extract_code(answer: str) -> str:
    """The code of a chat answer: the contents of its fenced blocks (an unclosed last fence counts), else the whole text."""
    blocks = _FENCE.findall(answer)
    return "\n".join(b.rstrip() for b in blocks) if blocks else answer


def _language(language: str):
    """The loadable tree-sitter Language of a Forge language's grammar, or None."""
    from forge_assets.mining.units import grammar_name, tree_sitter_language

    name = grammar_name(language)
    return tree_sitter_language(name) if name else None


def score(predictions: list[str], references: list[str], language: str) -> dict | None:
    """codebleu's figures (`codebleu` and its four components, each in [0, 1]) over the pairs, or None
    when codebleu cannot score this language or there are no pairs."""
    if len(predictions) != len(references):
        raise ValueError(f"codebleu: {len(predictions)} predictions for {len(references)} references; they must pair one to one.")
    lang = CODEBLEU_LANGS.get(language)
    ts_lang = _language(language) if lang else None
    if ts_lang is None or not predictions:
        return None
    import codebleu.codebleu as cb

    own = cb.get_tree_sitter_language
    cb.get_tree_sitter_language = lambda _lang: ts_lang  # the loadable Language (see the module docstring)
    logging.disable(logging.WARNING)  # codebleu warns on the root logger for every batch without data flow; the figure says so
    try:
        out = cb.calc_codebleu(references, predictions, lang=lang)
    finally:
        cb.get_tree_sitter_language = own
        logging.disable(logging.NOTSET)
    return {k.removesuffix("_score"): round(float(v), 4) for k, v in out.items()}
