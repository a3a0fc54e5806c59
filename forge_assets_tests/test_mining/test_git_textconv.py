"""A mined repository cannot make git run a program: textconv and external diff drivers are never used.

A repository's ``.gitattributes`` picks a diff driver per path (``*.py diff=evil``); a config
(repository-local here, the user's global one in real life) gives that driver a ``textconv`` or a
``command``, and ``diff.external`` names a program for every diff. ``git log --patch`` honours all
of them unless told ``--no-textconv --no-ext-diff``: mining would then run the program, and learn
from its output instead of the file.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import git

from forge_assets.config import MiningConfig, RepoSource
from forge_assets.mining import commits as history
from forge_assets.mining.dataset import mine_samples
from forge_assets.mining.snapshot import take_snapshot

APP_V1 = '''"""A tiny app."""


def greet(name):
    """Say hello to someone by name."""
    return "hello " + name
'''

APP_V2 = APP_V1.replace('return "hello " + name', 'return "hello, " + name.strip() + "!"')

BIG_V1 = "".join(f"def helper_{i}(x):\n    return x + {i}\n\n\n" for i in range(80))
BIG_V2 = BIG_V1.replace("    return x + 41\n", "    return x * 41 + real_change_marker\n")


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def _commit(repo: Path, files: dict[str, str], message: str) -> None:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


def _evil_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository whose .gitattributes and local config would run a script on every diff; and the marker it writes."""
    marker = tmp_path / "textconv-ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\necho ran \"$@\" >> '{marker}'\necho FAKE; cksum < \"$1\"\n")  # differs per version: a diff of FAKE lines
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "diff.evil.textconv", str(script))
    _git(repo, "config", "diff.evil.command", str(script))
    _git(repo, "config", "diff.external", str(script))
    _commit(repo, {".gitattributes": "*.py diff=evil\n", "src/app.py": APP_V1, "src/big.py": BIG_V1}, "Add the app")
    _commit(repo, {"src/app.py": APP_V2}, "Greet more warmly")
    _commit(repo, {"src/big.py": BIG_V2}, "Scale helper 41")
    return repo, marker


def test_the_trap_is_armed(tmp_path):
    """--no-ext-diff alone (what mining used to pass) still runs the textconv script and shows its output."""
    repo, marker = _evil_repo(tmp_path)
    log = ["git", "-C", str(repo), "log", "--patch", "--no-ext-diff", "-1", "--", "*.py"]
    out = subprocess.run(log, capture_output=True, text=True).stdout
    assert marker.exists() and "\n FAKE\n" in out


def test_commit_walk_shows_real_diffs_and_runs_nothing(tmp_path):
    repo_dir, marker = _evil_repo(tmp_path)
    repo = git.Repo(repo_dir)
    walked = list(history.iter_commits(repo, repo.head.commit.hexsha, history.pathspecs("python"), 100, 400))
    found, _ = history.last_touched(repo, repo.head.commit.hexsha, history.pathspecs("python"), {"src/app.py", "src/big.py"})
    assert not marker.exists()
    assert [c.message.strip() for c in walked] == ["Scale helper 41", "Greet more warmly", "Add the app"]
    diffs = {c.message.strip(): "\n".join(line for f in c.files for line in f.diff) for c in walked}
    assert "+    return x * 41 + real_change_marker" in diffs["Scale helper 41"]
    assert '+    return "hello, " + name.strip() + "!"' in diffs["Greet more warmly"]
    assert not any("FAKE" in d for d in diffs.values())
    assert set(found) == {"src/app.py", "src/big.py"}


def test_mining_a_repository_with_a_textconv_driver_learns_the_real_content(tmp_path):
    repo_dir, marker = _evil_repo(tmp_path)
    snap = take_snapshot([RepoSource(path=str(repo_dir))], tmp_path, tmp_path / "clones", 1_000_000)
    cfg = MiningConfig(max_file_bytes=1_000_000, fim_rate=0.0, synthetic_per_language=0, workers=1)
    mined = mine_samples("python", snap.files["python"], [], cfg)
    assert not marker.exists()
    commits = [s for s in mined.samples if s.kind == "commit"]
    texts = "\n".join(s.text for s in mined.samples)
    assert len(commits) >= 2 and "FAKE" not in texts
    assert any('"hello, " + name.strip()' in s.text for s in commits)
    assert any("real_change_marker" in s.text for s in commits)


def test_cloning_a_url_runs_no_checkout_filter(tmp_path: Path, monkeypatch):
    """A URL is cloned without a checkout: the user's global smudge filter (git-lfs and the like), which a repository
    selects with `.gitattributes`, never runs, and the snapshot still holds the real files."""
    marker = tmp_path / "smudge-ran"
    script = tmp_path / "smudge.sh"
    script.write_text(f"#!/bin/sh\necho ran >> '{marker}'\ncat\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    global_config = tmp_path / "gitconfig"
    global_config.write_text(f"[filter \"evil\"]\n\tsmudge = {script}\n\tclean = cat\n")
    repo = tmp_path / "origin"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _commit(repo, {".gitattributes": "*.py filter=evil\n", "app.py": APP_V1}, "app")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    subprocess.run(["git", "clone", "-q", f"file://{repo}", str(tmp_path / "control")], check=True, capture_output=True)
    assert marker.exists()  # control: a plain clone runs the filter
    marker.unlink()
    snap = take_snapshot([RepoSource(url=f"file://{repo}")], tmp_path, tmp_path / "clones", 1_000_000)
    assert not marker.exists()
    entry, = [f for f in snap.files["python"] if f.path == "app.py"]
    assert git.Repo(entry.repo_dir).odb.stream(bytes.fromhex(entry.blob)).read().decode() == APP_V1
