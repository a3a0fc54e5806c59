"""The programming languages Forge knows, and how a file or a fenced block names one."""

from __future__ import annotations

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
