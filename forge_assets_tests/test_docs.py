"""The documentation holds together: the README stays a short guide, every relative link in README.md and docs/*.md
points to a file that exists, and every `forge <command>` the README's CLI section names is a command of the real
parser (and the section names every command the parser has)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250
CLI_HEADING = "## The `forge` command"

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The targets of Markdown links outside code that point into the repository (no scheme, not a bare anchor)."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return [t for t in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines, more than {MAX_README_LINES}. Fix: move the detail to a page under docs/ and link it.")


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = [t for t in relative_links(page.read_text(encoding="utf-8"))
              if not (page.parent / t.split("#", 1)[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_link_finder_sees_links_and_skips_code() -> None:
    text = ("see [a](docs/a.md#x) and [b](https://example.com) or [c](#here)\n"
            "`[d](nope.md)`\n```\n[e](nope2.md)\n```\n[f](../bench/x.py)\n")
    assert relative_links(text) == ["docs/a.md#x", "../bench/x.py"]


def _cli_parsers() -> dict:
    """{command: its argparse parser}, from the real `forge` parser."""
    from forge_assets import cli

    parser = cli.build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert subparsers, "forge's parser has no subcommands"
    return dict(subparsers[0].choices)


def _cli_commands() -> set[str]:
    return set(_cli_parsers())


def _cli_section() -> str:
    text = README.read_text(encoding="utf-8")
    assert CLI_HEADING in text, f"README.md has no section {CLI_HEADING!r}. Fix: keep the CLI section under that heading."
    section = text.split(CLI_HEADING, 1)[1]
    return section.split("\n## ", 1)[0]


def test_readme_cli_section_matches_the_parser() -> None:
    commands = _cli_commands()
    named = set(re.findall(r"\bforge ([a-z][a-z-]*)", _cli_section()))
    assert len(named) >= 5, f"the README's CLI section names too few commands to check: {sorted(named)}"
    unknown = named - commands
    assert not unknown, f"README.md's CLI section names `forge` commands the parser does not have: {sorted(unknown)}"
    missing = commands - named
    assert not missing, f"README.md's CLI section does not describe these `forge` commands: {sorted(missing)}"


def test_readme_links_every_docs_page() -> None:
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README.read_text(encoding="utf-8"))}
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md links no docs page {unlinked}. Fix: add it to the README's Documentation list."


def test_readme_cli_options_exist() -> None:
    parsers = _cli_parsers()
    usages = re.findall(r"`forge ([a-z][a-z-]*)([^`]*)`", _cli_section())
    checked, wrong = 0, []
    for command, rest in usages:
        if command not in parsers:
            continue  # test_readme_cli_section_matches_the_parser names it
        known = {o for a in parsers[command]._actions for o in a.option_strings}
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            checked += 1
            if option not in known:
                wrong.append(f"forge {command} {option}")
    assert checked >= 5, f"the README's CLI section shows too few options to check ({checked})"
    assert not wrong, f"README.md's CLI section shows options the parser does not have: {wrong}"
