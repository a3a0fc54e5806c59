"""The dataset pipeline end to end on real repositories: kinds, filters, secrets, dedup, splits, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge_assets_tests.test_mining.conftest import CONVERSATIONS, SESSION_TOKEN, mining_config
from mining_repos import SECRETS, Repo

from forge_assets.chat import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from forge_assets.mining.dataset import build_dataset, dataset_card, write_dataset
from forge_assets.mining.snapshot import take_snapshot
from forge_assets.config import RepoSource

RECORD_KEYS = {"text", "kind", "language", "repo", "path", "commit"}


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.rglob("*.jsonl")) for line in f.read_text().splitlines()]


def test_records_are_mlx_text_format_with_provenance(built):
    rows = records(built["folder"])
    assert rows
    for r in rows:
        assert set(r) == RECORD_KEYS  # no "messages" / "prompt" / "completion": mlx-lm reads them as text
        assert isinstance(r["text"], str) and r["text"].strip()
    py = built["datasets"]["python"]
    assert {r["language"] for r in py.splits["train"]} == {"python"}
    assert all(len(r["commit"]) == 40 for r in py.splits["train"] if r["kind"] != "chat" and r["kind"] != "code_change")


def test_all_sample_kinds_are_made(built):
    py = built["datasets"]["python"].stats["samples_by_kind"]
    for kind in ("fim", "instruction", "commit", "synthetic", "code", "chat", "code_change"):
        assert py[kind] > 0, kind
    for language, ds in built["datasets"].items():
        assert ds.stats["samples_by_kind"]["fim"] + ds.stats["samples_by_kind"]["code"] > 0, language
    fims = [r["text"] for r in records(built["folder"]) if r["kind"] == "fim"]
    spm = [t for t in fims if f"{FIM_PREFIX}{FIM_SUFFIX}" in t]
    assert spm and len(spm) < len(fims)  # both orderings occur
    assert all(FIM_MIDDLE in t for t in fims)


def test_no_planted_secret_reaches_any_written_file(built):
    written = "".join(p.read_text(encoding="utf-8") for p in built["folder"].rglob("*") if p.is_file())
    written += "".join(dataset_card(ds) for ds in built["datasets"].values())
    for name, secret in SECRETS.items():
        assert secret not in written, name
    assert SESSION_TOKEN not in written
    assert "[REDACTED_AWS_ACCESS_KEY]" in written and "[REDACTED_PRIVATE_KEY]" in written
    redacted = built["datasets"]["python"].stats["secrets_redacted"]
    for kind in ("aws_access_key", "github_token", "openai_key", "anthropic_key", "slack_token", "private_key",
                 "url_credentials", "connection_string_password", "password", "secret_assignment"):
        assert redacted.get(kind, 0) >= 1, kind
    assert built["datasets"]["shell"].stats["secrets_redacted"]["password"] >= 1  # export DB_PASSWORD=...


def test_the_pasted_humaneval_solution_is_gone(built):
    py = built["datasets"]["python"]
    assert py.stats["contamination_removed"]["humaneval"] >= 3
    assert not any(r["path"] == "src/strings_he.py" for rows in py.splits.values() for r in rows)
    assert "maxlen = max(len(x) for x in strings)" not in "".join(r["text"] for r in records(built["folder"]))


def test_near_duplicates_are_removed_across_paths_and_repos(built, snap):
    from forge_assets.mining.dataset import content_view, deduplicate, featurize, mine_samples

    py = built["datasets"]["python"]
    assert py.stats["duplicates"]["near"] >= 2
    # Before the split (whose test-overlap step may also drop the original when the copy lands in test):
    mined = mine_samples("python", snap.files["python"], CONVERSATIONS, mining_config())
    views = [content_view(s) for s in mined.samples]
    sigs, has, _, _ = featurize(views, [s.text for s in mined.samples], 1)
    keep = deduplicate(views, [s.group for s in mined.samples], 0.85, sigs=sigs, has=has).keep
    kept = [s for s, k in zip(mined.samples, keep) if k and s.kind == "code"]
    copies = [s for s in kept if s.path == "src/calc_copy.py"]
    originals = [s for s in kept if s.path == "src/calc.py"]
    assert originals and len(copies) < len(originals)  # the copy's unchanged units are exact or near copies
    rows = [r for rows in py.splits.values() for r in rows]
    beta = [r for r in rows if r["repo"] == "beta"]
    assert beta and not [r for r in beta if r["kind"] == "code"]  # alpha's text utilities, copied into beta, are (near) duplicates


def test_every_skip_has_a_reason(built, snap):
    skipped = built["datasets"]["python"].stats["skipped"]
    for reason in ("binary", "not_utf8", "empty", "generated", "gitignored", "license_only", "data_file", "too_large"):
        assert skipped.get(reason) == 1, reason
    assert built["datasets"]["javascript"].stats["skipped"] == {"minified": 1}
    assert snap.skipped["symlink"] == 1 and snap.skipped["submodule"] == 1
    assert snap.skipped["vendored"] == 1 and snap.skipped["minified"] == 1 and snap.skipped["generated"] == 1
    assert built["datasets"]["python"].stats["parse_failures"] == 1  # src/broken.py: line windows instead
    assert any(r["path"] == "src/broken.py" for r in records(built["folder"]))


def test_commit_history_is_mined_and_filtered(built):
    commits = built["datasets"]["python"].stats["commits"]
    assert commits["used"] >= 5 and commits["skipped"]["bot_author"] == 1 and commits["skipped"]["huge_diff"] >= 1
    assert commits["skipped"]["file_symlink"] == 1
    assert commits["scopes"]["function"] >= 1
    texts = [r["text"] for r in records(built["folder"]) if r["kind"] == "commit"]
    assert not any("Bump version" in t for t in texts)  # the bot's commit


def test_split_is_by_time(built):
    py = built["datasets"]["python"]
    test_paths = {r["path"] for r in py.splits["test"]}
    # src/text.py, touched by the newest commit, holds about a fifth of the samples: far more than test_fraction
    # (0.1), so it stays whole in train and the newest files that fit are held out instead.
    assert "src/text.py" not in test_paths and {"src/calc_copy.py", "src/broken.py"} <= test_paths
    assert not test_paths & {r["path"] for r in py.splits["train"] + py.splits["valid"]}  # an origin never straddles
    assert py.stats["split"]["test_since"].startswith("2023-")
    for name in ("train", "valid", "test"):
        assert py.stats[f"{name}_samples"] == len(py.splits[name]) > 0


def test_sessions_become_chats_rendered_with_the_template(built):
    rows = [r for r in records(built["folder"] / "python") if r["kind"] in ("chat", "code_change")]
    assert {r["kind"] for r in rows} == {"chat", "code_change"}
    chat = next(r for r in rows if r["kind"] == "chat")
    assert chat["text"].startswith("<|im_start|>system\n") and "<|im_start|>user\n" in chat["text"] and chat["text"].endswith("<|endoftext|>")
    assert chat["repo"] == "opencode" and chat["path"] == "ses_1" and chat["commit"] == ""


def test_stats_and_card(built):
    ds = built["datasets"]["python"]
    json.dumps(ds.stats)
    for key in ("samples", "samples_by_kind", "approx_tokens", "files", "repos", "skipped", "duplicates",
                "contamination_removed", "secrets_redacted", "parse_failures", "commits", "split", "versions"):
        assert key in ds.stats, key
    assert ds.stats["repos"] == 2 and ds.stats["files"] > 5
    assert json.loads((built["folder"] / "python" / "stats.json").read_text()) == ds.stats
    card = dataset_card(ds)
    assert card.startswith("# Forge dataset: Python")
    for heading in ("## Splits", "## Sample kinds", "## Filtering", "## De-duplication and decontamination", "## Secrets"):
        assert heading in card
    assert f"| train | {ds.stats['train_samples']:,} |" in card


def test_rerun_is_byte_identical(snap, built, tmp_path):
    for language in ("python", "typescript"):
        convs = CONVERSATIONS if language == "python" else []
        again = build_dataset(language, list(reversed(snap.files[language])), convs, mining_config(workers=2))
        write_dataset(again, tmp_path / language)
        for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "stats.json"):
            assert (tmp_path / language / name).read_bytes() == (built["folder"] / language / name).read_bytes(), name


@pytest.mark.slow
def test_rerun_in_a_fresh_process_with_another_hash_seed_is_byte_identical(repos, built, tmp_path):
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from mining_repos import snapshot
from forge_assets_tests.test_mining.conftest import mining_config, CONVERSATIONS
from forge_assets.mining.dataset import build_dataset, write_dataset
snap = snapshot([Path({str(repos['alpha'])!r}), Path({str(repos['beta'])!r})], Path({str(tmp_path)!r}), max_file_bytes=1_000_000)
write_dataset(build_dataset("python", snap.files["python"], CONVERSATIONS, mining_config()), Path({str(tmp_path / 'out')!r}))
"""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=Path(__file__).parents[2], timeout=120)
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "stats.json"):
        assert (tmp_path / "out" / name).read_bytes() == (built["folder"] / "python" / name).read_bytes(), name


@pytest.mark.slow
def test_worker_processes_give_the_same_bytes(tmp_path):
    repo = Repo(tmp_path / "many")
    files = {f"pkg/mod_{i:03d}.py": f'"""Module {i}."""\n\n\ndef work_{i}(items):\n    """Add {i} to every item of a list."""\n'
             f"    out = []\n    for x in items:\n        out.append(x + {i})\n    return out\n" for i in range(70)}
    repo.commit(files, "Add seventy modules")
    snap = take_snapshot([RepoSource(path=str(repo.path))], tmp_path, tmp_path / "clones")
    outputs = []
    for workers in (1, 2):
        ds = build_dataset("python", snap.files["python"], [], mining_config(workers=workers, max_file_bytes=200_000))
        write_dataset(ds, tmp_path / f"w{workers}")
        outputs.append({n: (tmp_path / f"w{workers}" / n).read_bytes() for n in ("train.jsonl", "valid.jsonl", "test.jsonl", "stats.json")})
    assert outputs[0] == outputs[1]
    assert ds.stats["files"] == 70 and ds.stats["samples_by_kind"]["code"] > 0


def test_fim_is_a_quarter_of_code_samples_and_raft_samples_are_made(built):
    py = built["datasets"]["python"]
    kinds = py.stats["samples_by_kind"]
    assert kinds["fim"] >= 0.25 * (kinds["code"] + kinds["fim"] + kinds["instruction"] + kinds["raft"]), kinds
    assert py.stats["candidates_by_kind"]["raft"] >= 1  # raft_share of alpha's 42 samples made from code
    rows = [r for rows in py.splits.values() for r in rows if r["kind"] == "raft"]
    for r in rows:
        assert "These documents were retrieved from `" in r["text"] and "The answer is in [" in r["text"]
