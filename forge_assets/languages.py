"""The programming languages Forge knows, and how a file or a fenced block names one."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

# Partition keys are these names: lower-case, stable, the users' words.
EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".rs": "rust",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".js": "javascript", ".jsx": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".go": "go",
    ".rb": "ruby", ".rake": "ruby",
    ".swift": "swift",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".java": "java", ".kt": "kotlin",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".cs": "csharp",
    ".php": "php",
}

FILENAMES: dict[str, str] = {
    "Rakefile": "ruby", "Gemfile": "ruby",
}

# Names people write after ``` in Markdown, mapped to partition keys.
FENCE_NAMES: dict[str, str] = {
    "python": "python", "py": "python", "python3": "python",
    "rust": "rust", "rs": "rust",
    "typescript": "typescript", "ts": "typescript", "tsx": "typescript",
    "javascript": "javascript", "js": "javascript", "jsx": "javascript", "node": "javascript",
    "go": "go", "golang": "go",
    "ruby": "ruby", "rb": "ruby",
    "swift": "swift",
    "sh": "shell", "bash": "shell", "shell": "shell", "zsh": "shell", "console": "shell",
    "java": "java", "kotlin": "kotlin", "kt": "kotlin",
    "c": "c", "cpp": "cpp", "c++": "cpp", "csharp": "csharp", "cs": "csharp", "php": "php",
}

KNOWN: tuple[str, ...] = tuple(sorted(set(EXTENSIONS.values()) | set(FILENAMES.values())))

# A language name becomes a Dagster partition key, a folder (<artifact_root>/<asset>/<language>), part of a
# model tag (<prefix>-<language>:<version>, Ollama allows [a-z0-9._-]) and of a URL path (/lang/<language>/...).
# So: lower case (two spellings would share one folder on a case-insensitive disk), no `/` `\\` `.` (no
# path walks: `..`, `a/b`), no `+` `#` (a URL's space and fragment), no space or control character, no
# leading `-` (an option to a command). Forge's own names (KNOWN) all fit: cpp and csharp, not c++ or c#.
LANGUAGE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
LANGUAGE_NAME_MAX = 32


class LanguageNameError(ValueError):
    """A language name that cannot be a partition key or a folder name; the message says where it came from and the fix."""


def language_name_problem(name: object) -> str | None:
    """What is wrong with a language name, and the fix (one sentence each); None when it is fine."""
    if isinstance(name, str) and LANGUAGE_NAME.fullmatch(name):
        return None
    shown = f"`{name}`" if isinstance(name, str) and name and name.isprintable() else repr(name)
    if not isinstance(name, str):
        what = f"is a {type(name).__name__}, not text"
    elif not name:
        what = "is empty"
    elif any(c in name for c in "/\\") or name.strip(".") == "":
        what = "is a path, not a name (it holds `/`, `\\` or is `.`/`..`), and a language name becomes a folder name"
    elif "." in name:
        what = "holds `.`, and a language name becomes a folder name"
    elif any(c.isspace() or not c.isprintable() for c in name):
        what = "holds a space or a control character"
    elif name.lower() != name and LANGUAGE_NAME.fullmatch(name.lower()):
        what = f"has upper-case letters (partition keys and folders are lower case: write `{name.lower()}`)"
    elif len(name) > LANGUAGE_NAME_MAX:
        what = f"is {len(name)} characters long, more than {LANGUAGE_NAME_MAX}"
    elif not ("a" <= name[0] <= "z"):
        what = "does not start with a lower-case letter"
    else:
        bad = "".join(sorted({c for c in name.lower() if not (c.isascii() and (c.isalnum() or c in "_-"))}))
        what = f"holds {', '.join(f'`{c}`' for c in bad)}" if bad else "is not a usable name"
    alias = FENCE_NAMES.get(name.strip().lower()) if isinstance(name, str) else None
    if alias and alias != name.lower():
        what += f" (Forge calls this language `{alias}`)"
    return (f"the language name {shown} {what}. Fix: write a lower-case name of letters, digits, `_` and `-` that starts "
            f"with a letter, at most {LANGUAGE_NAME_MAX} characters, like Forge's own: {', '.join(KNOWN)}")


def check_language_name(name: object, where: str) -> str:
    """The name itself when it can be a partition key and a folder name; else LanguageNameError naming where it came from."""
    problem = language_name_problem(name)
    if problem is not None:
        raise LanguageNameError(f"{where}: {problem}.")
    return name  # type: ignore[return-value]


def language_of_path(path: str) -> str | None:
    """The language a file path is written in, or None when Forge does not train on it."""
    p = PurePosixPath(path.replace("\\", "/"))
    if p.name in FILENAMES:
        return FILENAMES[p.name]
    return EXTENSIONS.get(p.suffix.lower())


def language_of_fence(info: str) -> str | None:
    """The language a Markdown fence info string (```rust ...) names, or None."""
    word = info.strip().split(maxsplit=1)[0].lower() if info.strip() else ""
    return FENCE_NAMES.get(word)
