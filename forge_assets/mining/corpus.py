"""forge-tiny's pretraining (and tokenizer) corpus: a snapshot's files, filtered and scrubbed like the dataset's.

Whatever forge-tiny is trained on ends up in its vocabulary and its weights, and a served model
recites what it memorized. So its corpus is held to the dataset's rules, through the same code:
`clean_file` is the first half of `dataset.mine_file` (path, .gitignore and content filters, the
blob read, decoding by `filters.content_check`, `scrub.scrub_text`), and nothing reaches
`build_tiny_model` without it.

Plain Python: no Dagster.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from forge_assets.config import MiningConfig
from forge_assets.mining.dataset import _gitignore, read_blob
from forge_assets.mining.filters import content_check, path_skip_reason
from forge_assets.mining.snapshot import FileEntry, Snapshot
from forge_assets.scrub import scrub_text


@dataclass
class CleanFile:
    """One snapshot file as training text: the scrubbed text and its redactions, or why it was skipped."""

    text: str | None
    skip: str | None = None
    redactions: Counter = field(default_factory=Counter)


def clean_file(entry: FileEntry, cfg: MiningConfig, ignored: bool) -> CleanFile:
    """A file as the dataset sees it: filtered by path, .gitignore and content, decoded, secrets scrubbed."""
    reason = path_skip_reason(entry.path, entry.size, cfg.max_file_bytes) or ("gitignored" if ignored else None)
    if reason:
        return CleanFile(None, reason)
    try:
        raw = read_blob(entry.repo_dir, entry.blob)
    except Exception:  # a missing object (partial clone), a vanished repository
        return CleanFile(None, "unreadable")
    if len(raw) > cfg.max_file_bytes:
        return CleanFile(None, "too_large")
    reason, text = content_check(raw, entry.path)  # content filters, and decoding (coding cookies: encoding.py)
    if reason or text is None:
        return CleanFile(None, reason or "not_utf8")
    text, redactions = scrub_text(text)
    return CleanFile(text, None, redactions)


@dataclass
class Corpus:
    """The texts forge-tiny is built from, and what filtering and scrubbing did to get them."""

    texts: list[str]
    files: int  # files kept
    skipped: Counter  # files left out, by reason (the dataset's reasons)
    redactions: Counter  # secrets replaced, by type

    def stats(self) -> dict:
        return {"files": self.files, "skipped": dict(sorted(self.skipped.items())),
                "redactions": dict(sorted(self.redactions.items())), "redacted": sum(self.redactions.values())}


def pretraining_corpus(snapshot: Snapshot, cfg: MiningConfig) -> Corpus:
    """Every language's snapshot files as forge-tiny's corpus, each through `clean_file`; sorted, so deterministic."""
    entries = sorted({f for files in snapshot.files.values() for f in files})
    ignores = {key: _gitignore(*key) for key in sorted({(f.repo_dir, f.commit) for f in entries})}
    texts: list[str] = []
    skipped: Counter = Counter()
    redactions: Counter = Counter()
    for entry in entries:
        try:
            got = clean_file(entry, cfg, ignores[(entry.repo_dir, entry.commit)].ignored(entry.path))
        except Exception:  # one bad file never stops the corpus (as in the dataset)
            got = CleanFile(None, "error")
        if got.skip or not got.text:
            skipped[got.skip or "empty"] += 1
            continue
        texts.append(got.text)
        redactions.update(got.redactions)
    return Corpus(texts, len(texts), skipped, redactions)
