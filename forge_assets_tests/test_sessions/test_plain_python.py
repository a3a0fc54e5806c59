"""The sessions package is plain Python: the Dagster asset imports it, never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

import forge_assets.sessions as sessions

PACKAGE = Path(sessions.__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_imports_dagster() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 6
    for f in files:
        bad = {m for m in _imported_modules(f) if m.split(".")[0] in ("dagster", "dagster_aws", "torch", "transformers")}
        assert not bad, f"{f.name} imports {bad}"


def test_public_api() -> None:
    for name in ("load_sources", "classify", "classify_all", "conversations", "collect", "languages_seen", "SessionSourceError"):
        assert callable(getattr(sessions, name)), name
