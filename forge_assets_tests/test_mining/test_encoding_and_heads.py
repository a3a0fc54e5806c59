"""Coding cookies (PEP 263) decide how a blob becomes text, in files and in commit samples; a detached HEAD is reported."""

from __future__ import annotations

import json

import pytest

from forge_assets_tests.test_mining.conftest import mining_config
from mining_repos import Repo

from forge_assets.config import RepoSource
from forge_assets.mining.dataset import build_dataset, write_dataset
from forge_assets.mining.encoding import decode_source, declared_encoding
from forge_assets.mining.snapshot import take_snapshot

COOKIE = "# -*- coding: latin-1 -*-\n"
MENU_PY = COOKIE + '''"""Le menu du café."""


def price(item):
    """Le prix d'un article du café, en euros."""
    prices = {"café": 2, "crème brûlée": 6, "thé": 3}
    return prices[item]
'''
# A long file (over 200 lines) whose module-level change becomes a `diff` commit sample.
FILLER = "".join(f"\n\ndef helper_{i}(x):\n    return x + {i}\n" for i in range(60))
LONG_PY = "#!/usr/bin/env python\n# vim: set fileencoding=iso-8859-1 :\n" + FILLER + '\nSPECIAL = "crêpe"\n'


@pytest.mark.parametrize("data, expected", [
    ("# -*- coding: latin-1 -*-\nx = 'caf\xe9'\n".encode("latin-1"), "# -*- coding: latin-1 -*-\nx = 'caf\xe9'\n"),
    ("#!/usr/bin/env python\n# coding=cp1252\nx = '\u20ac'\n".encode("cp1252"), "#!/usr/bin/env python\n# coding=cp1252\nx = '\u20ac'\n"),
    ("// -*- coding: latin-1 -*-\nint caf\xe9;\n".encode("latin-1"), "// -*- coding: latin-1 -*-\nint caf\xe9;\n"),
    ("x = 1\n\n# coding: latin-1\ny = 'caf\xe9'\n".encode("latin-1"), None),  # line 3: not a cookie; not UTF-8
    ("x = 1\n# coding: latin-1\ny = 'caf\xe9'\n".encode("latin-1"), None),  # line 1 is code: line 2 is no cookie
    ("caf\xe9 = 1\n".encode("utf-8"), "caf\xe9 = 1\n"),  # no cookie: UTF-8
    ("caf\xe9 = 1\n".encode("latin-1"), None),
    (b"# coding: no-such-codec\nx = 1\n", "# coding: no-such-codec\nx = 1\n"),  # unknown codec: UTF-8
    (b"# coding: rot13\nk = 1\n", "# coding: rot13\nk = 1\n"),  # not a text encoding: UTF-8
    (b"\xef\xbb\xbf# coding: latin-1\nx = '\xc3\xa9'\n", "\ufeff# coding: latin-1\nx = '\xe9'\n"),  # a BOM wins over a cookie
    ("# coding: ascii\nx = '\xe9'\n".encode("latin-1"), None),  # declared ASCII, bytes are not
])
def test_decode_source(data: bytes, expected: str | None):
    assert decode_source(data, "x.py") == expected


def test_declared_encoding_names_the_codec():
    assert declared_encoding(b"# -*- coding: Latin-1 -*-\n") == "iso8859-1"
    assert declared_encoding(b"# encoding: utf-8\n") == "utf-8"
    assert declared_encoding(b"x = 1\n") is None


def test_a_latin1_file_with_a_cookie_is_mined_as_latin1(tmp_path):
    repo = Repo(tmp_path / "latin")
    repo.commit({"menu.py": MENU_PY.encode("latin-1"), "long.py": LONG_PY.encode("latin-1")}, "Add the menu")
    repo.commit({"menu.py": MENU_PY.replace('"thé": 3', '"thé": 4').encode("latin-1"),
                 "long.py": LONG_PY.replace('"crêpe"', '"crêpe suzette"').encode("latin-1")}, "Raise the price of thé")
    snap = take_snapshot([RepoSource(path=str(repo.path))], tmp_path, tmp_path / "clones")
    ds = build_dataset("python", snap.files["python"], [], mining_config(synthetic_per_language=0))
    write_dataset(ds, tmp_path / "out")

    assert ds.stats["skipped"] == {} and ds.stats["files"] == 2
    records = [json.loads(line) for name in ("train", "valid", "test")
               for line in (tmp_path / "out" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = "\n".join(r["text"] for r in records)
    assert "\ufffd" not in texts and "Ã" not in texts  # neither dropped bytes nor UTF-8 mojibake
    assert 'prices = {"café": 2, "crème brûlée": 6' in texts
    commits = [r for r in records if r["kind"] == "commit"]
    scopes = ds.stats["commits"]["scopes"]
    assert scopes.get("function", 0) >= 1 and scopes.get("diff", 0) == 1
    assert any('"thé": 4' in r["text"] for r in commits)  # the function-scope sample, decoded as latin-1
    diff = [r["text"] for r in commits if "```diff" in r["text"]]
    assert len(diff) == 1 and '-SPECIAL = "crêpe"' in diff[0] and '+SPECIAL = "crêpe suzette"' in diff[0]


def test_a_detached_head_is_mined_with_a_warning(tmp_path):
    repo = Repo(tmp_path / "detached")
    first = repo.commit({"a.py": "def a():\n    return 1\n"}, "First")
    repo.commit({"a.py": "def a():\n    return 2\n"}, "Second")
    repo.git("checkout", "-q", "--detach", first)

    snap = take_snapshot([RepoSource(path=str(repo.path))], tmp_path, tmp_path / "clones")
    state = snap.repos[0]
    assert state.commit == first
    assert len(state.warnings) == 1
    warning = state.warnings[0]
    assert "is detached" in warning and first in warning and str(repo.path) in warning
    assert "(detached)" in warning and "Fix:" in warning and "branch:" in warning

    on_branch = take_snapshot([RepoSource(path=str(repo.path), branch="main")], tmp_path, tmp_path / "clones")
    assert on_branch.repos[0].warnings == [] and on_branch.repos[0].commit != first
