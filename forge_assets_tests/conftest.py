"""Fixtures shared by Forge's tests: real git repositories, a small forge.yaml, a tiny base model."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PY_FILES = {
    "app/handlers.py": '''"""Request handlers."""


def handle_get(request, store):
    """Return the item named in the request."""
    key = request["key"]
    item = store.get(key)
    if item is None:
        return {"status": 404, "error": f"no item {key}"}
    return {"status": 200, "item": item}


def handle_put(request, store):
    """Store the request body under its key."""
    key = request["key"]
    store[key] = request["body"]
    return {"status": 201}


class Store(dict):
    """An in-memory item store."""

    def keys_sorted(self):
        return sorted(self.keys())
''',
    "app/pipeline.py": '''"""Data pipeline steps."""

import json


def load(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def transform(rows):
    out = []
    for row in rows:
        if row.get("skip"):
            continue
        out.append({"id": row["id"], "total": sum(row.get("values", []))})
    return out


def save(rows, path):
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\\n")
''',
}

RS_FILES = {
    "src/lib.rs": '''/// Adds two numbers.
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// A counter.
pub struct Counter {
    n: u64,
}

impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}
''',
}


def git(repo: Path, *args: str) -> str:
    """Run git in repo with a fixed identity and dates; return its output."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.com", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def commit_files(repo: Path, files: dict[str, str], message: str) -> str:
    """Write files into repo, commit them, and return the commit sha."""
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def make_repo(path: Path, files: dict[str, str], message: str = "initial commit") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    commit_files(path, files, message)
    return path


@pytest.fixture
def py_repo(tmp_path: Path) -> Path:
    """A git repository with Python files and one commit."""
    return make_repo(tmp_path / "repo", PY_FILES)


@pytest.fixture
def two_language_repo(tmp_path: Path) -> Path:
    """A git repository with Python and Rust files."""
    return make_repo(tmp_path / "repo", {**PY_FILES, **RS_FILES})


SMALL = {
    "tiny_model": {"vocab_size": 600, "hidden_size": 256, "intermediate_size": 256, "num_layers": 1, "num_heads": 4,
                   "num_kv_heads": 2, "context_length": 256, "pretrain_steps": 15},
    # long_answers: drop: at a 96-token window nearly every chat answer is over-long; cut heads of them (the default,
    # truncate) would make most of these few steps (docs/training.md).
    "training": {"backend": "peft", "rank": 4, "alpha": 8, "learning_rate": 0.003, "max_steps": 6, "batch_size": 4, "seq_len": 96,
                 "long_answers": "drop"},
    # FIM prefix and suffix sized to the 96-token window (the default, 400 characters each, is ~200 tokens: every FIM
    # sample would be cut, and these six steps would train on little else).
    "mining": {"fim_context_chars": 120},
    # Every figure is computed, on few cases (the default-sized evaluation runs in the README's `forge run`).
    "eval": {"perplexity_samples": 20, "fim_cases": 12, "fim_max_new_tokens": 16, "codebleu_samples": 2, "codebleu_max_new_tokens": 24,
             "humaneval": {"problems": 2, "max_new_tokens": 24}, "gguf_windows": 4, "gguf_window_tokens": 64},
}


def write_config(folder: Path, repos: list[Path], **overrides) -> Path:
    """A forge.yaml for tests: small model, short training, artifacts under folder."""
    data = {"artifact_root": str(folder / "artifacts"), "repos": [{"path": str(r)} for r in repos], **SMALL}
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path = folder / "forge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def forge_instance(*languages: str):
    """A Dagster test instance with the language partitions added (default: python)."""
    from dagster import instance_for_test

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("language", list(languages or ["python"]))
        yield instance


def materialize_assets(cfg: Path, assets=None, *, instance, language: str | None = "python", **kwargs):
    """Materialize, in instance, the forge.yaml at cfg: assets is None (every asset and check), asset names (those
    assets, no checks) or definitions. language is the partition (None: an unpartitioned selection); kwargs go to
    Dagster's materialize (raise_on_error, selection, ...). Returns the result."""
    from dagster import materialize

    from forge_assets.definitions import all_assets, all_checks
    from forge_assets.resources import ForgeResource

    if assets is None:
        defs = [*all_assets, *all_checks]
    elif all(isinstance(a, str) for a in assets):
        defs = [a for a in all_assets if a.key.path[0] in assets]
    else:
        defs = list(assets)
    if language is not None:
        kwargs["partition_key"] = language
    return materialize(defs, instance=instance, resources={"forge": ForgeResource(config_path=str(cfg))}, **kwargs)


def latest_metadata(instance, asset: str) -> dict:
    """asset's latest materialization metadata in instance, as plain values."""
    from dagster import AssetKey

    event = instance.get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@contextlib.contextmanager
def materialized_chain(cfg: Path, language: str = "python"):
    """Every asset and check materialized for one language partition of the forge.yaml at cfg, in a test instance.
    Yields (result, meta): meta(asset) is that asset's latest materialization metadata as plain values. The model
    server the deployment started is stopped on the way out."""
    from forge_assets.deploy import llama_server

    root = Path(yaml.safe_load(Path(cfg).read_text())["artifact_root"])
    with forge_instance(language) as instance:
        try:
            result = materialize_assets(cfg, instance=instance, language=language, raise_on_error=False)
            yield result, lambda asset: latest_metadata(instance, asset)
        finally:
            llama_server.stop(root / "deployment" / "_endpoint")


def free_port() -> int:
    from forge_assets.files import free_port as forge_free_port  # imported late: the offline settings above come first

    return forge_free_port("127.0.0.1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """forge-tiny built once per test session from the test corpus (HF format on disk)."""
    from forge_assets.config import TinyModelConfig
    from forge_assets.training.base_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    texts = list(PY_FILES.values()) + list(RS_FILES.values())
    build_tiny_model(texts * 3, out, TinyModelConfig(**SMALL["tiny_model"]), log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A dataset folder (train/valid/test JSONL) from the test corpus, FIM samples included."""
    import json

    from forge_assets.chat import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

    folder = tmp_path_factory.mktemp("dataset")
    texts = [f"{t}{EOT}" for t in PY_FILES.values()]
    src = PY_FILES["app/handlers.py"]
    fim = f"{FIM_PREFIX}{src[:120]}{FIM_SUFFIX}{src[160:]}{FIM_MIDDLE}{src[120:160]}{EOT}"
    for split, rows in {"train": texts * 4 + [fim], "valid": texts[:1], "test": texts[1:] + [fim]}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": r, "kind": "code"}) + "\n" for r in rows))
    return folder


def forge_processes() -> list:
    """Live llama.cpp servers and Forge routers started by this test process (deploy tests assert none is left)."""
    import psutil

    from forge_assets.deploy import llama_server

    markers = ("llama_cpp.server", llama_server.SERVER_MODULE, str(llama_server.ROUTER_SCRIPT))
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and any(m in child.cmdline() for m in markers):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def assert_no_forge_processes() -> None:
    """Kill any server or router this test process left running (so the next test starts clean), then fail if there was one."""
    leftovers = forge_processes()
    for proc in leftovers:
        proc.kill()
        proc.wait(10)
    assert not leftovers, f"processes left running: {[p.cmdline() for p in leftovers]}"
