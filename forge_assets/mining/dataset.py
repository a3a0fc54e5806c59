"""Datasets: training samples from a language's snapshot files and session conversations.

Every record is mlx-lm's "text" format ({"text": ...}) plus provenance keys (kind, language,
repo, path, commit) that mlx-lm ignores; chats are rendered in ChatML so one file holds every kind.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import git

from forge_assets.config import MiningConfig
from forge_assets.mining.filters import content_skip_reason
from forge_assets.mining.snapshot import FileEntry

from forge_assets.chat import EOT, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME, render_chat
SPLITS = ("train", "valid", "test")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


@dataclass
class Dataset:
    """A language's samples in train/valid/test order, and the figures that describe them."""

    language: str
    splits: dict[str, list[dict]]
    stats: dict = field(default_factory=dict)


def read_blob(repo_dir: str, blob: str, _cache: dict = {}) -> bytes:
    """The bytes git stores for a blob."""
    repo = _cache.get(repo_dir) or _cache.setdefault(repo_dir, git.Repo(repo_dir))
    return repo.odb.stream(bytes.fromhex(blob)).read()


def approx_tokens(text: str) -> int:
    """A tokenizer-free token estimate (words and punctuation marks)."""
    return len(_TOKEN_RE.findall(text))


def code_units(text: str, language: str, max_lines: int = 60) -> list[tuple[int, int]]:
    """Line spans (start, end) of a file's units: top-level definitions for Python, else windows."""
    lines = text.splitlines()
    if language == "python":
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            tree = None
        if tree is not None:
            spans = []
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
                    spans.append((start, node.end_lineno or start + 1))
            if spans:
                return spans
    return [(i, min(i + max_lines, len(lines))) for i in range(0, len(lines), max_lines) if "".join(lines[i:i + max_lines]).strip()]


def fim_sample(repo: str, path: str, text: str, rng: random.Random, spm: bool) -> str | None:
    """A fill-in-the-middle sample in Qwen's tokens, the middle a random line span."""
    lines = text.splitlines(keepends=True)
    if len(lines) < 3:
        return None
    a = rng.randrange(0, len(lines) - 1)
    b = rng.randrange(a + 1, min(len(lines), a + 12) + 1)
    prefix, middle, suffix = "".join(lines[:a]), "".join(lines[a:b]), "".join(lines[b:])
    header = f"{REPO_NAME}{repo}\n{FILE_SEP}{path}\n"
    if spm:
        return f"{header}{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix}{middle}{EOT}"
    return f"{header}{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}{EOT}"


def _split_of(key: str, cfg: MiningConfig) -> str:
    h = int(hashlib.sha256(f"{cfg.seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < cfg.test_fraction:
        return "test"
    if h < cfg.test_fraction + cfg.valid_fraction:
        return "valid"
    return "train"


def build_dataset(language: str, files: list[FileEntry], conversations: list[dict], cfg: MiningConfig) -> Dataset:
    """Samples for one language: code units, FIM and session chats, exact-deduplicated and split."""
    stats: Counter = Counter()
    skipped: Counter = Counter()
    samples: list[dict] = []
    for entry in sorted(files):
        raw = read_blob(entry.repo_dir, entry.blob)
        reason = content_skip_reason(raw)
        if reason is None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                reason = "not_utf8"
        if reason:
            skipped[reason] += 1
            continue
        stats["files"] += 1
        base = {"language": language, "repo": entry.repo, "path": entry.path, "commit": entry.commit}
        lines = text.splitlines(keepends=True)
        for start, end in code_units(text, language):
            unit = "".join(lines[start:end]).strip("\n")
            if unit.strip():
                samples.append({"text": f"{FILE_SEP}{entry.path}\n{unit}\n{EOT}", "kind": "code", **base})
        rng = random.Random(f"{cfg.seed}:{entry.blob}")
        if rng.random() < cfg.fim_rate:
            fim = fim_sample(entry.repo, entry.path, text, rng, spm=rng.random() < cfg.spm_rate)
            if fim:
                samples.append({"text": fim, "kind": "fim", **base})
    for conv in conversations:
        where = {"language": language, "repo": conv.get("source", ""), "path": conv.get("session", ""), "commit": ""}
        if conv.get("kind") == "code_change":
            messages = [{"role": "user", "content": f"Edit `{conv['path']}`:\n```\n{conv.get('before', '')}\n```"},
                        {"role": "assistant", "content": f"```\n{conv.get('after', '')}\n```"}]
            samples.append({"text": render_chat(messages) + EOT, "kind": "code_change", **where})
        elif conv.get("messages"):
            samples.append({"text": render_chat(conv["messages"]) + EOT, "kind": "chat", **where})
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    duplicates = 0
    for s in samples:
        h = hashlib.sha256(s["text"].encode()).hexdigest()
        if h in seen:
            duplicates += 1
            continue
        seen.add(h)
        splits[_split_of(f"{s['repo']}:{s['path']}", cfg)].append(s)
    if not splits["valid"] and len(splits["train"]) > 1:
        splits["valid"].append(splits["train"].pop())
    if not splits["test"] and len(splits["train"]) > 1:
        splits["test"].append(splits["train"].pop())
    kinds = Counter(s["kind"] for split in splits.values() for s in split)
    return Dataset(language, splits, {
        "samples": sum(len(v) for v in splits.values()),
        **{f"{k}_samples": len(v) for k, v in splits.items()},
        "samples_by_kind": dict(sorted(kinds.items())),
        "approx_tokens": sum(approx_tokens(s["text"]) for v in splits.values() for s in v),
        "files": stats["files"],
        "repos": len({f.repo for f in files}),
        "duplicates_removed": duplicates,
        "skipped": dict(sorted(skipped.items())),
    })


def write_dataset(dataset: Dataset, folder: Path) -> None:
    """train.jsonl, valid.jsonl, test.jsonl and stats.json, byte-stable for the same samples."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in dataset.splits.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    (folder / "stats.json").write_text(json.dumps(dataset.stats, indent=2, sort_keys=True))


def dataset_card(dataset: Dataset) -> str:
    """A Markdown card: what the dataset holds and what was dropped on the way."""
    s = dataset.stats
    lines = [f"# Dataset card: {dataset.language}", "",
             f"{s.get('samples', 0)} samples ({s.get('train_samples', 0)} train / {s.get('valid_samples', 0)} valid / {s.get('test_samples', 0)} test) "
             f"from {s.get('files', 0)} files in {s.get('repos', 0)} repositories.", "", "| kind | samples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s.get("samples_by_kind", {}).items()]
    lines += ["", "| skipped because | files |", "|---|---|"] + [f"| {k} | {v} |" for k, v in s.get("skipped", {}).items()]
    lines += ["", f"Exact duplicates removed: {s.get('duplicates_removed', 0)}."]
    return "\n".join(lines)
