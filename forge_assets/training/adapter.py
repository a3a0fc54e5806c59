"""Adapters: choose the training backend, train, and merge an adapter into its base model."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from forge_assets.config import TrainingConfig
from forge_assets.training import mlx_backend, peft_backend


def choose_backend(requested: str) -> str:
    """The backend to train with: `auto` is mlx on Apple silicon, else peft (CUDA or CPU)."""
    if requested != "auto":
        if requested == "mlx" and not mlx_backend.available():
            raise RuntimeError("training.backend is `mlx` but mlx / mlx-lm do not import here. Fix: pip install 'mlx[cpu]' mlx-lm (Linux) or mlx mlx-lm (macOS), or use backend: peft.")
        return requested
    if platform.system() == "Darwin" and platform.machine() == "arm64" and mlx_backend.available():
        return "mlx"
    return "peft"


def train_adapter(base: Path, dataset: Path, out: Path, cfg: TrainingConfig, log=print) -> dict:
    """Train a LoRA adapter with the configured backend; the folder is that backend's standard format."""
    backend = choose_backend(cfg.backend)
    module = mlx_backend if backend == "mlx" else peft_backend
    result = module.train(base, dataset, out, cfg, log=log)
    (out / "forge_adapter.json").write_text(json.dumps({"backend": backend, "rank": cfg.rank, "alpha": cfg.alpha, "method": cfg.method}, indent=2))
    return result


def adapter_backend(adapter: Path) -> str:
    """Which backend wrote an adapter folder (peft writes adapter_model.safetensors, mlx adapters.safetensors)."""
    if (adapter / "adapter_model.safetensors").is_file():
        return "peft"
    if (adapter / "adapters.safetensors").is_file():
        return "mlx"
    raise ValueError(f"{adapter}: neither a PEFT (adapter_model.safetensors) nor an mlx-lm (adapters.safetensors) adapter folder. Fix: rematerialize `adapter`.")


def merge_adapter(base: Path, adapter: Path, out: Path) -> None:
    """A plain Hugging Face model folder with the adapter folded into the base weights."""
    backend = adapter_backend(adapter)
    (mlx_backend if backend == "mlx" else peft_backend).merge(base, adapter, out)
