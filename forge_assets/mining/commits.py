"""Commit history: change samples from ``git log --patch``, and when each file was last touched.

One ``git log`` process per repository and language streams the patches (newest first, up to
``max_commits``); it is parsed line by line, so a repository's history never sits in memory at once.
Skipped, with a counted reason: merges, bot authors ([bot], dependabot, renovate, github-actions),
commits whose diff in this language exceeds ``max_commit_diff_lines``, empty messages, and per file:
vendored/lock/generated/ignored paths, binary or generated content, deletions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import git

from forge_assets.languages import EXTENSIONS, FILENAMES
from forge_assets.scrub import scrub_path

if TYPE_CHECKING:
    from forge_assets.mining.units import ParsedFile, Unit

BOT_MARKERS = ("[bot]", "dependabot", "renovate", "github-actions", "greenkeeper", "pre-commit-ci", "snyk-bot")
_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_TRAILER = re.compile(r"^(?:[A-Z][\w-]*-by|Change-Id|Signed-off-by|Co-authored-by):.*$", re.MULTILINE)
_HEADER_FORMAT = "%x01%H%x1f%P%x1f%ct%x1f%an%x1f%ae%x1f%B%x02"
# On every git command that renders content or diffs: a repository's .gitattributes (`*.py diff=x`)
# with a config's diff.x.textconv / diff.x.command, or diff.external, would otherwise run a program
# while mining and show its output instead of the file. Blobs are read raw (cat-file --batch, no
# --textconv/--filters: read_blob_text).
NO_CONVERSION = ("--no-textconv", "--no-ext-diff")


def pathspecs(language: str) -> list[str]:
    """git pathspecs matching a language's files anywhere in the tree (`*` crosses folders)."""
    specs = [f"*{ext}" for ext, lang in sorted(EXTENSIONS.items()) if lang == language]
    specs += [f"*{name}" for name, lang in sorted(FILENAMES.items()) if lang == language]
    return specs


@dataclass
class FileChange:
    """One file's part of a commit's patch."""

    path: str
    old_blob: str | None = None  # None when the file is new
    new_blob: str | None = None  # None when the file was deleted
    binary: bool = False
    special: str | None = None  # "symlink" or "submodule": not text to learn from
    added: int = 0
    removed: int = 0
    old_changed: list[int] = field(default_factory=list)  # 1-based pre-image lines removed or inserted before
    new_changed: list[int] = field(default_factory=list)  # 1-based post-image lines added
    # The hunks, "@@ ..." lines included, as git printed them: bytes that are not UTF-8 (a latin-1 file's)
    # are kept as surrogate escapes until the file's encoding is known (encoding.recode_line).
    diff: list[str] = field(default_factory=list)


@dataclass
class Commit:
    """A commit as git log showed it, with its patch restricted to one language's files."""

    sha: str
    parents: list[str]
    time: int
    author: str
    email: str
    message: str
    files: list[FileChange] = field(default_factory=list)
    truncated: bool = False  # the patch outgrew the limit and was not kept whole

    @property
    def changed_lines(self) -> int:
        return sum(f.added + f.removed for f in self.files)


def skip_reason(commit: Commit, max_diff_lines: int) -> str | None:
    """Why a whole commit is not mined, or None."""
    if len(commit.parents) > 1:
        return "merge"
    who = f"{commit.author} {commit.email}".lower()
    if any(marker in who for marker in BOT_MARKERS):
        return "bot_author"
    if commit.truncated or commit.changed_lines > max_diff_lines:
        return "huge_diff"
    if not clean_message(commit.message):
        return "no_message"
    return None


def clean_message(message: str) -> str:
    """A commit message without trailers (Signed-off-by: name <email>, ...) and surrounding blanks."""
    return _TRAILER.sub("", message).strip()


def _path_of(line: bytes) -> str:
    return line[4:].rstrip(b"\n").rstrip(b"\t").decode("utf-8", "replace")


def iter_commits(repo: git.Repo, head: str, specs: list[str], max_count: int, max_diff_lines: int) -> Iterator[Commit]:
    """The commits reachable from head that touch the pathspecs, newest first, with their patches."""
    proc = repo.git(c="core.quotepath=false").log(
        head, f"--max-count={max_count}", *NO_CONVERSION, "--no-color", "--no-renames", "--full-index",
        "--patch", "--unified=3", f"--format={_HEADER_FORMAT}", "--", *specs, as_process=True,
    )
    stdout = proc.proc.stdout
    commit: Commit | None = None
    change: FileChange | None = None
    header: list[bytes] | None = None
    old_left = new_left = 0
    old_line = new_line = 0
    limit = max_diff_lines * 4 + 200  # lines of patch text kept per commit before it is declared huge
    kept = 0
    try:
        for line in stdout:
            if line.startswith(b"\x01"):  # a commit header starts (patch lines never start with \x01)
                if commit is not None:
                    yield commit
                commit, change, header, kept = None, None, [], 0
                old_left = new_left = 0
                line = line[1:]
            if header is not None:  # the header (with a multi-line message) runs up to \x02
                header.append(line)
                if b"\x02" in line:
                    commit, header = _parse_header(b"".join(header)), None
                continue
            if commit is None:
                continue
            if old_left > 0 or new_left > 0:  # inside a hunk: the counts say which lines belong to it
                tag = line[:1]
                if tag == b" ":
                    old_left -= 1
                    new_left -= 1
                    old_line += 1
                    new_line += 1
                elif tag == b"-":
                    old_left -= 1
                    change.removed += 1
                    change.old_changed.append(old_line)
                    old_line += 1
                elif tag == b"+":
                    new_left -= 1
                    change.added += 1
                    change.new_changed.append(new_line)
                    change.old_changed.append(old_line)
                    new_line += 1
                if tag != b"\\" and not commit.truncated:
                    kept += 1
                    if kept > limit:
                        commit.truncated = True
                        for f in commit.files:
                            f.diff.clear()
                    else:
                        change.diff.append(line.decode("utf-8", "surrogateescape").rstrip("\n"))
                continue
            if line.startswith(b"diff --git "):
                old_left = new_left = 0
                change = FileChange(path=_diff_git_path(line))
                commit.files.append(change)
            elif change is None:
                continue
            elif line.startswith(b"@@"):
                m = _HUNK.match(line)
                if m:
                    old_line, old_left = int(m.group(1)), int(m.group(2) or b"1")
                    new_line, new_left = int(m.group(3)), int(m.group(4) or b"1")
                    if not commit.truncated:
                        change.diff.append(line.decode("utf-8", "surrogateescape").rstrip("\n"))
            elif line.startswith(b"+++ "):
                path = _path_of(line)
                if path != "/dev/null":
                    change.path = path[2:] if path.startswith("b/") else path
            elif line.startswith(b"--- "):
                path = _path_of(line)
                if path != "/dev/null" and not change.path:
                    change.path = path[2:] if path.startswith("a/") else path
            elif line.startswith(b"index "):
                fields = line[6:].split()
                if len(fields) > 1:
                    change.special = _special_mode(fields[1]) or change.special
                blobs = fields[0].split(b"..") if fields else []
                if len(blobs) == 2:
                    old, new = (b.decode() for b in blobs)
                    change.old_blob = None if set(old) == {"0"} else old
                    change.new_blob = None if set(new) == {"0"} else new
            elif line.startswith(b"new file mode"):
                change.old_blob = None
                change.special = _special_mode(line.split()[-1]) or change.special
            elif line.startswith(b"deleted file mode"):
                change.new_blob = None
            elif line.startswith(b"new mode") or line.startswith(b"old mode"):
                change.special = _special_mode(line.split()[-1]) or change.special
            elif line.startswith(b"Binary files") or line.startswith(b"GIT binary patch"):
                change.binary = True
        if commit is not None:
            yield commit
    finally:
        _stop(proc)


def _special_mode(mode: bytes) -> str | None:
    return {b"120000": "symlink", b"160000": "submodule"}.get(mode.strip())


def _stop(proc: object) -> None:
    """End a streaming git process we may have stopped reading early."""
    try:
        if proc.proc.poll() is None:
            proc.proc.kill()
        proc.proc.wait()
        for stream in (proc.proc.stdout, proc.proc.stderr):
            if stream:
                stream.close()
    except Exception:
        pass


def _diff_git_path(line: bytes) -> str:
    text = line[len(b"diff --git "):].rstrip(b"\n").decode("utf-8", "replace")
    cut = text.rfind(" b/")
    return text[cut + 3:] if cut >= 0 else text


def _parse_header(raw: bytes) -> Commit:
    text = raw.split(b"\x02", 1)[0].decode("utf-8", "replace")
    parts = text.split("\x1f", 5)
    parts += [""] * (6 - len(parts))
    sha, parents, ctime, author, email, message = parts
    return Commit(sha.strip(), parents.split(), int(ctime or 0), author, email, message)


def last_touched(repo: git.Repo, head: str, specs: list[str], wanted: set[str]) -> tuple[dict[str, tuple[int, str]], tuple[int, str] | None]:
    """For each wanted path, (time, sha) of the newest commit that changed it; and the oldest commit seen.

    The walk stops once every wanted path is found; paths never found (a shallow clone's boundary,
    history rewritten) belong to the oldest commit seen.
    """
    found: dict[str, tuple[int, str]] = {}
    oldest: tuple[int, str] | None = None
    if not wanted:
        return found, oldest
    proc = repo.git(c="core.quotepath=false").log(
        head, *NO_CONVERSION, "--no-renames", "--name-only", "--format=%x01%ct %H", "--", *specs, as_process=True)
    stdout = proc.proc.stdout
    current: tuple[int, str] | None = None
    try:
        for line in stdout:
            if line.startswith(b"\x01"):
                t, sha = line[1:].decode().split()
                current = (int(t), sha)
                oldest = current
                continue
            path = line.rstrip(b"\n").decode("utf-8", "replace")
            if path and current is not None and path in wanted and path not in found:
                found[path] = current
                if len(found) == len(wanted):
                    break
    finally:
        _stop(proc)
    return found, oldest


def read_blob_text(repo: git.Repo, blob: str | None) -> bytes:
    """A blob's bytes (b"" for None: the side of a change that does not exist); encoding.decode_source makes them text."""
    if not blob:
        return b""
    return repo.odb.stream(bytes.fromhex(blob)).read()



MAX_FILE_LINES = 200  # a whole pre-image is shown only for files this small


@dataclass
class ChangeSample:
    """One commit sample: a file's change in a commit, rendered as a conversation."""

    path: str
    commit: str
    time: int
    scope: str  # "function", "file", "diff" or "new_file"
    text: str


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _enclosing_unit(pf: "ParsedFile", lines: list[int], name: str | None = None) -> "Unit | None":
    """The innermost function/method (of that name, if given) whose lines hold all the given lines."""
    best = None
    lo, hi = min(lines), max(lines)
    for u in pf.units:
        if u.kind not in ("function", "method") or (name is not None and u.name != name):
            continue
        if _line_of(pf.data, u.def_start) <= lo and hi <= _line_of(pf.data, max(u.def_start, u.end - 1)):
            if best is None or u.end - u.start < best.end - best.start:
                best = u
    return best


def change_sample(commit: Commit, change: FileChange, before: str, after: str, language: str) -> ChangeSample | None:
    """The conversation for one file's change: message + pre-image (function or file) -> the change."""
    from forge_assets.mining.instruct import chat_text, code_block
    from forge_assets.mining.units import parse_file

    message = clean_message(commit.message)
    where = f"`{scrub_path(change.path)}`"
    if not before:
        if after.count("\n") + 1 > MAX_FILE_LINES * 2 or not after.strip():
            return None
        user = f"{message}\n\nCreate {where}."
        return ChangeSample(change.path, commit.sha, commit.time, "new_file", chat_text(user, code_block(after, language)))
    if change.old_changed and change.new_changed is not None:
        pre = parse_file(before, language, change.path, details=False)
        unit = _enclosing_unit(pre, change.old_changed) if pre.has_ast else None
        if unit is not None:
            post = parse_file(after, language, change.path, details=False)
            new_lines = change.new_changed or [max(1, min(change.old_changed))]
            unit_after = _enclosing_unit(post, new_lines, unit.name) if post.has_ast else None
            if unit_after is not None:
                old_code = pre.text(pre.line_start(unit.def_start), unit.end)
                new_code = post.text(post.line_start(unit_after.def_start), unit_after.end)
                if old_code != new_code:
                    user = f"{message}\n\nMake this change to `{unit.name}` in {where}:\n\n{code_block(old_code, language)}"
                    return ChangeSample(change.path, commit.sha, commit.time, "function", chat_text(user, code_block(new_code, language)))
    if before.count("\n") + 1 <= MAX_FILE_LINES and after.count("\n") + 1 <= MAX_FILE_LINES * 2:
        if before == after or not after.strip():
            return None
        user = f"{message}\n\nMake this change in {where}:\n\n{code_block(before, language)}"
        return ChangeSample(change.path, commit.sha, commit.time, "file", chat_text(user, code_block(after, language)))
    if not change.diff:
        return None
    # A big file: show the old side of the hunks and answer with the patch.
    context = "\n...\n".join(
        "\n".join(l[1:] for l in hunk.split("\n")[1:] if l[:1] in (" ", "-"))
        for hunk in "\n".join(change.diff).split("\n@@")
    )
    diff = "\n".join(change.diff)
    user = f"{message}\n\nMake this change in {where}. The code around it:\n\n{code_block(context, language)}\n\nAnswer with a unified diff."
    return ChangeSample(change.path, commit.sha, commit.time, "diff", chat_text(user, f"```diff\n--- a/{scrub_path(change.path)}\n+++ b/{scrub_path(change.path)}\n{diff}\n```"))
