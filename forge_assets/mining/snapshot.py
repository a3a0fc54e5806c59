"""Repository snapshots: which file blobs at which commit make up each language's corpus.

A URL in forge.yaml is cloned under ``<artifact_root>/clones`` (0700, forge_assets.private). Credentials in it
(``https://user:token@host/...``) are given to git at clone and fetch time only, through the git child's environment
(private.git_credential_env): the clone's ``remote.origin.url`` is the URL without the secret, the token is never on a
command line, and every message, warning and error names the URL redacted (``https://user:***@host/...``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import git

from forge_assets.config import ForgeConfig, RepoSource
from forge_assets.languages import language_of_path
from forge_assets.mining.filters import path_skip_reason
from forge_assets.private import ensure_private_dir, git_credential_env, git_remote, redact_text, redact_url


class RepoError(ValueError):
    """A configured repository cannot be read; the message names it and the fix."""


@dataclass(frozen=True, order=True)
class FileEntry:
    """One file of a snapshot: where it lives and the blob git stores it as."""

    repo: str
    path: str
    blob: str
    size: int
    commit: str
    repo_dir: str


@dataclass
class RepoState:
    """A repository as Forge found it: resolved folder, commit and warnings."""

    name: str
    repo_dir: str
    commit: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    """Every kept file of the configured repositories, grouped by language, with skip counts."""

    repos: list[RepoState]
    files: dict[str, list[FileEntry]]
    skipped: Counter

    def manifest(self, language: str) -> dict:
        """The partition's manifest: (repo, commit, path, blob) rows, sorted; content-addressed."""
        rows = [asdict(f) for f in sorted(self.files.get(language, []))]
        for row in rows:
            row.pop("repo_dir")
        return {"language": language, "repos": {r.name: r.commit for r in self.repos}, "files": rows}

    def fingerprint(self, language: str) -> str:
        """A content hash of the language's files: changes exactly when one of them does."""
        rows = sorted((f.repo, f.path, f.blob) for f in self.files.get(language, []))
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def languages(self) -> list[str]:
        return sorted(lang for lang, files in self.files.items() if files)


def repo_name(source: RepoSource) -> str:
    """The repository's short name (its folder or URL stem), never a secret of its URL."""
    return RepoSource(url=redact_url(source.url), branch=source.branch).name if source.url else source.name


def clone_dir(source: RepoSource, clone_root: Path) -> Path:
    """Where a URL is cloned: named by a hash of the URL as shown (credentials redacted), so rotating a token keeps
    the clone."""
    return clone_root / (hashlib.sha1(redact_url(source.url).encode()).hexdigest()[:10] + "-" + repo_name(source))


def open_repo(source: RepoSource, base_dir: Path, clone_root: Path, index: int = 0) -> git.Repo:
    """Open a configured repository; clone or fetch a URL into clone_root first.

    After a fetch, ``origin/HEAD`` is refreshed from the remote (``git remote set-head origin --auto``),
    so a URL without ``branch:`` follows the remote's default branch, renames included.
    """
    where = f"forge.yaml repos[{index}]"
    if source.url:
        shown = redact_url(source.url)
        remote, creds = git_remote(source.url)
        env = git_credential_env(creds)
        target = clone_dir(source, clone_root)
        ensure_private_dir(clone_root)
        legacy = clone_root / (hashlib.sha1(source.url.encode()).hexdigest()[:10] + "-" + source.name)
        if legacy != target and legacy.exists() and not target.exists():
            legacy.rename(target)  # cloned by an earlier Forge, named by the URL with its credentials
        error = None
        try:
            if (target / ".git").exists() or (target / "HEAD").exists():
                repo = git.Repo(target)
                if repo.remotes.origin.url != remote:  # also scrubs a token an earlier Forge left in .git/config
                    repo.git.remote("set-url", "origin", remote)
                with repo.git.custom_environment(**env):
                    repo.remotes.origin.fetch()
                    if not source.branch:
                        try:
                            repo.git.remote("set-head", "origin", "--auto")
                        except git.GitCommandError:
                            pass  # the remote has no HEAD (empty, or a bare repository without one): _head_commit says so
            else:
                kwargs = {"branch": source.branch} if source.branch else {}
                # --no-checkout: mining reads the object database only, and a checkout would run the smudge and
                # process filters (git-lfs, ...) of the user's git config on the repository's say-so
                repo = git.Repo.clone_from(remote, target, env=env or None, no_checkout=True, **kwargs)
        except git.GitCommandError as exc:
            # GitPython's message quotes the command line; git's stderr may quote the URL: both redacted
            error = f"{where}.url: cannot clone or fetch {shown}: {(exc.stderr or '').strip() or exc}. Fix: check the URL and your access to it."
        if error is not None:  # raised outside the except block: no chained GitCommandError reaches a log
            raise RepoError(redact_text(error, creds.secrets if creds else ()))
        return repo
    path = Path(source.path).expanduser()
    path = path if path.is_absolute() else (base_dir / path)
    if not path.exists():
        raise RepoError(f"{where}.path: {path} does not exist. Fix: point it at a local git repository.")
    try:
        return git.Repo(path, search_parent_directories=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RepoError(f"{where}.path: {path} is not a git repository (no .git there). Fix: point it at the repository's top folder, or run `git init` and commit.") from None


def _head_commit(repo: git.Repo, source: RepoSource, where: str, warnings: list[str] | None = None) -> git.Commit | None:
    """The commit to mine: `branch:` (origin/<branch> for a URL), else the remote's default branch
    (origin/HEAD) for a URL, else the local HEAD (with a warning in `warnings` when it is detached)."""
    ref = source.branch
    warnings = warnings if warnings is not None else []
    try:
        if ref:
            return repo.commit(f"origin/{ref}") if source.url else repo.commit(ref)
        if source.url:
            try:
                return repo.commit("refs/remotes/origin/HEAD")
            except (git.BadName, ValueError, git.GitCommandError):
                warnings.append(f"{where}.url: {redact_url(source.url)} names no default branch (no HEAD on the remote); mining the clone's "
                                f"HEAD. Fix: set `branch:` for this repository in forge.yaml.")
        commit = repo.head.commit
        if repo.head.is_detached:
            warnings.append(f"{where} ({source.name}): HEAD of {repo.working_dir or repo.git_dir} is detached; mining commit {commit.hexsha}. "
                            f"Fix: check out a branch there, or set `branch:` for this repository in forge.yaml.")
        return commit
    except ValueError:  # an empty repository: HEAD points at an unborn branch
        return None
    except (git.BadName, git.GitCommandError):
        raise RepoError(f"{where}.branch: no branch or ref `{ref}` in {repo.working_dir or repo.git_dir}. Fix: name an existing branch.") from None


@dataclass
class OpenedRepo:
    """A configured repository opened (URLs fetched) and its head resolved: what a snapshot walks."""

    source: RepoSource
    repo: git.Repo
    state: RepoState
    head: git.Commit | None


def open_repos(sources: list[RepoSource], base_dir: Path, clone_root: Path) -> list[OpenedRepo]:
    """Open every configured repository and resolve the commit to mine; no tree is walked (cheap)."""
    opened: list[OpenedRepo] = []
    names: Counter = Counter()
    for i, source in enumerate(sources):
        repo = open_repo(source, base_dir, clone_root, i)
        name = repo_name(source)
        names[name] += 1
        if names[name] > 1:
            name = f"{name}-{names[name]}"
        repo_dir = str(Path(repo.working_dir or repo.git_dir).resolve())
        warnings: list[str] = []
        commit = _head_commit(repo, source, f"forge.yaml repos[{i}]", warnings)
        state = RepoState(name, repo_dir, commit.hexsha if commit else None, warnings)
        if commit is None:
            state.warnings.append(f"{repo_dir}: the repository has no commits yet; nothing to mine.")
        opened.append(OpenedRepo(source, repo, state, commit))
    return opened


def snapshot_repos(opened: list[OpenedRepo], max_file_bytes: int = 200_000) -> Snapshot:
    """Walk each opened repository's tree at its head; keep source files of known languages."""
    files: dict[str, list[FileEntry]] = {}
    skipped: Counter = Counter()
    for o in opened:
        commit, name, repo_dir = o.head, o.state.name, o.state.repo_dir
        if commit is None:
            continue
        for item in commit.tree.traverse():
            if item.type == "submodule":
                skipped["submodule"] += 1
                continue
            if item.type != "blob":
                continue
            if item.mode == 0o120000:
                skipped["symlink"] += 1
                continue
            language = language_of_path(item.path)
            if language is None:
                skipped["not_source"] += 1
                continue
            reason = path_skip_reason(item.path, item.size, max_file_bytes)
            if reason:
                skipped[reason] += 1
                continue
            files.setdefault(language, []).append(FileEntry(name, item.path, item.hexsha, item.size, commit.hexsha, repo_dir))
    for entries in files.values():
        entries.sort()
    return Snapshot([o.state for o in opened], files, skipped)


def take_snapshot(sources: list[RepoSource], base_dir: Path, clone_root: Path, max_file_bytes: int = 200_000) -> Snapshot:
    """Walk each repository's tree at its branch head; keep source files of known languages."""
    return snapshot_repos(open_repos(sources, base_dir, clone_root), max_file_bytes)


def opened_repos_of(cfg: ForgeConfig) -> list[OpenedRepo]:
    """forge.yaml's repositories opened (URLs cloned or fetched under <artifact_root>/clones), heads resolved."""
    return open_repos(cfg.repos, cfg.resolve("."), cfg.artifact_path / "clones")


def snapshot_of(cfg: ForgeConfig) -> Snapshot:
    """The snapshot of forge.yaml's repositories (URLs cloned under <artifact_root>/clones)."""
    return take_snapshot(cfg.repos, cfg.resolve("."), cfg.artifact_path / "clones", cfg.mining.max_file_bytes)
