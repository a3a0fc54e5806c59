"""Fixtures for the mining tests: the alpha/beta repositories and their datasets, built once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mining_repos import build_alpha, build_beta, snapshot  # noqa: E402

from forge_assets.config import MiningConfig  # noqa: E402
from forge_assets.mining.dataset import build_dataset, write_dataset  # noqa: E402

# A session record of each kind, one carrying a secret the scrubber must catch.
SESSION_TOKEN = "ghp_Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"
CONVERSATIONS = [
    {"kind": "chat", "session": "ses_1", "source": "opencode", "time": 1_600_000_000,
     "messages": [{"role": "user", "content": f"Why does the deploy fail? My token is {SESSION_TOKEN}"},
                  {"role": "assistant", "content": "The token expired; rotate it and never paste it in chats."}]},
    {"kind": "code_change", "session": "ses_2", "source": "claude_code", "path": "src/calc.py",
     "before": "def half(x):\n    return x / 2\n", "after": "def half(x: float) -> float:\n    return x / 2\n"},
]


def mining_config(**overrides) -> MiningConfig:
    """The configuration the integration tests mine with: every sample kind switched on."""
    base = {"max_file_bytes": 50_000, "fim_rate": 1.0, "synthetic_per_language": 6, "workers": 1}
    return MiningConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def repos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mining_repos")
    return {"alpha": build_alpha(root / "alpha"), "beta": build_beta(root / "beta"), "root": root}


@pytest.fixture(scope="session")
def snap(repos):
    return snapshot([repos["alpha"], repos["beta"]], repos["root"], max_file_bytes=1_000_000)


@pytest.fixture(scope="session")
def built(snap, tmp_path_factory) -> dict:
    """Every language's dataset of alpha+beta, built and written once: {"datasets", "folder"}."""
    folder = tmp_path_factory.mktemp("datasets")
    datasets = {}
    for language in snap.languages():
        convs = CONVERSATIONS if language == "python" else []
        ds = build_dataset(language, snap.files[language], convs, mining_config())
        write_dataset(ds, folder / language)
        datasets[language] = ds
    return {"datasets": datasets, "folder": folder}
