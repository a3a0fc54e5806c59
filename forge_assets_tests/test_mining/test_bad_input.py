"""Bad input never crashes the miner: odd bytes, odd repositories, odd records."""

from __future__ import annotations

import json
import subprocess

import pytest

from forge_assets_tests.test_mining.conftest import mining_config
from mining_repos import Repo

from forge_assets.config import RepoSource
from forge_assets.mining.dataset import build_dataset, dataset_card, write_dataset
from forge_assets.mining.snapshot import FileEntry, RepoError, take_snapshot


def snap_of(path, tmp_path, **kw):
    return take_snapshot([RepoSource(path=str(path))], tmp_path, tmp_path / "clones", **kw)


def test_a_folder_that_is_not_a_git_repository_is_a_clear_error(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.py").write_text("x = 1\n")
    with pytest.raises(RepoError, match="is not a git repository.*git init"):
        snap_of(plain, tmp_path)
    with pytest.raises(RepoError, match="does not exist"):
        snap_of(tmp_path / "missing", tmp_path)


def test_a_repository_without_commits_gives_an_empty_dataset(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path / "empty")], check=True)
    snap = snap_of(tmp_path / "empty", tmp_path)
    assert snap.files == {} and "no commits" in snap.repos[0].warnings[0]
    ds = build_dataset("python", [], [], mining_config())
    write_dataset(ds, tmp_path / "out")
    assert ds.stats["samples"] == 0 and all(not rows for rows in ds.splits.values())
    assert (tmp_path / "out" / "train.jsonl").read_text() == ""
    assert "# Forge dataset: Python" in dataset_card(ds)


def test_a_repository_with_an_empty_commit(tmp_path):
    repo = Repo(tmp_path / "bare")
    repo.commit({}, "Nothing yet")
    assert snap_of(repo.path, tmp_path).files == {}


def test_shallow_clones_are_mined(repos, tmp_path):
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repos['alpha']}", str(shallow)], check=True)
    snap = snap_of(shallow, tmp_path)
    ds = build_dataset("python", snap.files["python"], [], mining_config())
    assert ds.stats["samples"] > 0 and ds.stats["commits"]["walked"] <= 1
    assert ds.stats["split"]["origins"] > 3 and ds.stats["test_samples"] > 0


def test_odd_files_are_skipped_with_reasons(tmp_path):
    repo = Repo(tmp_path / "odd")
    repo.commit({
        "binary.py": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50,
        "latin.rb": "puts 'caf\xe9'\n".encode("latin-1"),
        "huge.go": "package main\n" + "// filler line\n" * 20_000,
        "ok.py": "def ok():\n    return 1\n",
        "weird.py": "def f():\n    return '\udcff'\n".encode("utf-8", "surrogatepass"),
    }, "Odd files")
    snap = snap_of(repo.path, tmp_path, max_file_bytes=10_000_000)
    stats = {lang: build_dataset(lang, files, [], mining_config()).stats for lang, files in snap.files.items()}
    assert stats["python"]["skipped"] == {"binary": 1, "not_utf8": 1}
    assert stats["ruby"]["skipped"] == {"not_utf8": 1}
    assert stats["go"]["skipped"] == {"too_large": 1}
    assert stats["python"]["files"] == 1


def test_entries_pointing_nowhere_are_counted_not_fatal(repos, tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repos["alpha"], capture_output=True, text=True).stdout.strip()
    files = [
        FileEntry("alpha", "src/missing.py", "0" * 39 + "1", 10, head, str(repos["alpha"])),
        FileEntry("gone", "x.py", "0" * 39 + "2", 10, "f" * 40, str(tmp_path / "vanished")),
    ]
    ds = build_dataset("python", files, [], mining_config())
    assert ds.stats["skipped"] == {"unreadable": 2} and ds.stats["samples"] == 0


def test_malformed_session_records_are_counted(tmp_path):
    convs = [
        "not a dict",
        {"kind": "chat", "session": "s", "source": "x"},  # no messages
        {"kind": "chat", "session": "s", "source": "x", "messages": [{"role": "user"}]},  # no content
        {"kind": "code_change", "session": "s", "source": "x"},  # no path
        {"kind": "chat", "session": "t", "source": "x", "messages": [{"role": "user", "content": "hello there"}]},
    ]
    ds = build_dataset("python", [], convs, mining_config())
    assert ds.stats["skipped"] == {"session_empty": 1, "session_malformed": 2}
    assert ds.stats["samples_by_kind"]["chat"] == 2
    json.dumps(ds.stats)
