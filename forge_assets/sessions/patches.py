"""opencode's `apply_patch` envelope (`*** Begin Patch` … `*** End Patch`): its files and hunks."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER = re.compile(r"^\*\*\* (Add|Update|Delete) File: (.+?)\s*$")
_MOVE = re.compile(r"^\*\*\* Move to: (.+?)\s*$")


@dataclass(frozen=True)
class PatchHunk:
    """One change of a patch: the text of a region before and after (context lines in both)."""

    path: str
    op: str  # "add" | "update" | "delete"
    before: str
    after: str


def patch_files(text: str) -> list[str]:
    """Every path a patch adds, updates, deletes or moves to, in order."""
    files: list[str] = []
    for line in text.splitlines():
        m = _HEADER.match(line) or _MOVE.match(line)
        if m:
            files.append(m.group(m.lastindex or 1))
    return files


def patch_hunks(text: str) -> list[PatchHunk]:
    """The hunks of a patch: one per `@@` region of an updated file, one per added or deleted file."""
    hunks: list[PatchHunk] = []
    path: str | None = None
    op = ""
    before: list[str] = []
    after: list[str] = []

    def flush() -> None:
        if path is not None and (before or after or op == "delete"):
            hunks.append(PatchHunk(path, op, "\n".join(before), "\n".join(after)))
        before.clear()
        after.clear()

    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            flush()
            op, path = header.group(1).lower(), header.group(2)
            continue
        move = _MOVE.match(line)
        if move and path is not None:
            path = move.group(1)
            continue
        if line.startswith("*** "):  # Begin/End Patch, End of File
            if line.startswith("*** End Patch"):
                flush()
                path = None
            continue
        if path is None or op == "delete":
            continue
        if line.startswith("@@"):
            flush()
            continue
        if op == "add":
            after.append(line[1:] if line.startswith("+") else line)
        elif line.startswith("+"):
            after.append(line[1:])
        elif line.startswith("-"):
            before.append(line[1:])
        else:
            # Context: a leading space, or a bare blank line models often write.
            ctx = line[1:] if line.startswith(" ") else line
            before.append(ctx)
            after.append(ctx)
    flush()
    return hunks
