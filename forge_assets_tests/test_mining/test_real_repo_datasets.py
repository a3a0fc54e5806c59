"""Datasets of real repositories with real history (the vendored bundles): a Swift package, a Kotlin and a Java
project, and a Flux/Kustomize/Helm manifests repository. Each is mined through its tree-sitter grammar (the card says
which, and its version), FIM is at least a quarter of the samples made from code, every code language gets RAFT
samples, the manifests give "write the HelmRelease" instructions, and READMEs give documentation samples."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from forge_assets.config import MiningConfig, RepoSource
from forge_assets.mining.dataset import CODE_KINDS, build_dataset, dataset_card
from forge_assets.mining.snapshot import take_snapshot
from forge_assets_tests.real_repos import REAL_REPOS, clone_real_repo

GRAMMAR_WHEELS = {"swift": "tree-sitter-swift", "kotlin": "tree-sitter-kotlin", "java": "tree-sitter-java",
                  "yaml": "tree-sitter-yaml"}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("real_datasets")
    out = {}
    for name, repo in REAL_REPOS.items():
        work = clone_real_repo(name, root / name)
        snap = take_snapshot([RepoSource(path=str(work))], root, root / "clones")
        cfg = MiningConfig(max_commits=60, workers=1, synthetic_per_language=0)
        out[repo.language] = build_dataset(repo.language, snap.files[repo.language], [], cfg)
    return out


def _rows(ds) -> list[dict]:
    return [r for rows in ds.splits.values() for r in rows]


@pytest.mark.parametrize("language", ["swift", "kotlin", "java", "yaml"])
def test_each_language_is_mined_through_its_grammar_and_the_card_names_it(datasets, language):
    ds = datasets[language]
    s = ds.stats
    wheel = GRAMMAR_WHEELS[language]
    assert s["grammar"] == {language: f"{wheel} {metadata.version(wheel)}"}
    assert s["files"] >= 15 and s["ast_files"] >= s["files"] - 3, (s["files"], s["ast_files"])  # Swift: 2 files lost
    card = dataset_card(ds)
    assert f"`{language}` ({wheel} {metadata.version(wheel)})" in card
    assert f"{s['ast_files']:,} of {s['files']:,} files were mined through a syntax tree" in card


@pytest.mark.parametrize("language", ["swift", "kotlin", "java", "yaml"])
def test_fim_is_at_least_a_quarter_of_the_samples_made_from_code(datasets, language):
    kinds = datasets[language].stats["samples_by_kind"]
    made_from_code = sum(kinds[k] for k in CODE_KINDS)
    assert kinds["fim"] >= 0.25 * made_from_code, kinds
    assert datasets[language].stats["fim_share"] == round(kinds["fim"] / made_from_code, 4)
    # Several middles per file, spread over its units: files with two or more FIM samples, none repeated.
    fims = [r for r in _rows(datasets[language]) if r["kind"] == "fim"]
    per_file = {}
    for r in fims:
        per_file.setdefault(r["path"], []).append(r["text"])
    several = [p for p, texts in per_file.items() if len(texts) >= 2]
    if language != "yaml":  # a manifest is one short document: one middle
        assert len(several) >= len(per_file) // 3, {p: len(t) for p, t in per_file.items()}
    assert all(len(set(texts)) == len(texts) for texts in per_file.values())


@pytest.mark.parametrize("language", ["swift", "kotlin", "java"])
def test_every_code_language_gets_raft_samples_that_cite_a_retrieved_unit(datasets, language):
    rafts = [r for r in _rows(datasets[language]) if r["kind"] == "raft"]
    assert rafts, datasets[language].stats["samples_by_kind"]
    for r in rafts:
        user, answer = r["text"].split("<|im_start|>assistant\n", 1)
        labels = re.findall(r"^\[(\d)\] (.+?) — ", user, flags=re.M)
        assert 3 <= len(labels) <= 5  # the oracle and 2-4 distractors
        cited = re.match(r"The answer is in \[(\d)\] `([^`]+)`", answer)
        assert cited and (cited.group(1), cited.group(2)) in labels
        assert "##begin_quote##" in answer and f"```{language}" in answer


def test_the_manifests_become_write_the_resource_instructions(datasets):
    rows = _rows(datasets["yaml"])
    instructions = [r for r in rows if r["kind"] == "instruction"]
    helm = [r for r in instructions if "Write the Flux HelmRelease `" in r["text"]]
    assert helm, [r["text"][:200] for r in instructions][:5]
    for r in helm:  # the answer is the manifest itself
        answer = r["text"].split("<|im_start|>assistant\n", 1)[1]
        assert answer.startswith("```yaml\n") and "kind: HelmRelease" in answer
    assert any("Kustomization" in r["text"] for r in instructions)
    assert not [r for r in rows if r["kind"] == "raft"]  # manifests are not retrieval material of a code language


@pytest.mark.parametrize("language", ["swift", "kotlin", "java"])
def test_the_readme_becomes_question_answer_samples_of_the_code_language(datasets, language):
    docs = [r for r in _rows(datasets[language]) if r["kind"] == "doc"]
    stats = datasets[language].stats
    assert docs and stats["docs"].get("readme", 0) >= 1, (stats["samples_by_kind"], stats["docs"])
    assert sum(stats["docs"].values()) >= len(docs)
    for r in docs:
        assert r["path"].lower().endswith(".md") and "CHANGELOG" not in r["path"].upper()
        assert r["text"].count("<|im_start|>assistant") == 1
