"""Adapters: choose the training backend, train, and merge an adapter into its base model."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from forge_assets.config import TrainingConfig
from forge_assets.training import mlx_backend, peft_backend
from forge_assets.chat import template_of
from forge_assets.training.base_model import mlx_quantization
from forge_assets.training.data import read_records, read_texts, skip_fim


def choose_backend(requested: str, base: Path | None = None) -> str:
    """The backend to train with: `auto` is mlx on Apple silicon, else peft (CUDA or CPU); and mlx wherever mlx imports
    when `base` is an MLX-quantized model (mlx-community 4/8-bit), which only mlx-lm can train on as it is (PEFT would
    refuse it: transformers cannot load packed MLX weights)."""
    if requested != "auto":
        if requested == "mlx" and not mlx_backend.available():
            raise RuntimeError("training.backend is `mlx` but mlx / mlx-lm do not import here. Fix: pip install 'mlx[cpu]' mlx-lm (Linux) or mlx mlx-lm (macOS), or use backend: peft.")
        return requested
    if platform.system() == "Darwin" and platform.machine() == "arm64" and mlx_backend.available():
        return "mlx"
    if base is not None and mlx_quantization(base) and mlx_backend.available():
        return "mlx"
    return "peft"


def incremental_texts(current: list[str], previous: list[str], replay: float, seed: int) -> tuple[list[str], dict]:
    """The samples new since the parent adapter's dataset, plus a replay share of older ones.

    `replay` is the share of the training mix drawn (at random, fixed by seed) from samples the parent already
    saw: n_old = n_new * replay / (1 - replay), at most all of them.
    """
    import hashlib
    import random

    seen = {hashlib.sha256(t.encode()).digest() for t in previous}
    known = [hashlib.sha256(t.encode()).digest() in seen for t in current]
    new = [t for t, k in zip(current, known) if not k]
    old = [t for t, k in zip(current, known) if k]
    want = min(len(old), round(len(new) * replay / (1 - replay))) if new else 0
    replayed = random.Random(seed).sample(old, want)
    return new + replayed, {"new_samples": len(new), "replayed_samples": len(replayed), "older_samples": len(old)}


def train_adapter(base: Path, dataset: Path, out: Path, cfg: TrainingConfig, log=print, checkpoints: Path | None = None,
                  parent: Path | None = None, parent_dataset: Path | None = None) -> dict:
    """Train an adapter with the configured backend; the folder is that backend's standard format.

    With a `parent` adapter (training.init_from: previous) training continues it on the samples that are new since
    `parent_dataset` plus a replay share of older ones. With `checkpoints`, a killed run resumes there.
    """
    backend = choose_backend(cfg.backend, base)
    module = mlx_backend if backend == "mlx" else peft_backend
    template = template_of(base)  # the base model's own chat template (Forge's for forge-tiny)
    from forge_assets.fim_tokens import scheme_of_folder

    fim = scheme_of_folder(base)  # FIM samples are written with the base's own FIM tokens, or skipped when it has none
    records, fim_skipped = skip_fim(read_records(dataset, "train", template), fim, f"{dataset}/train.jsonl", log)
    texts = [r["text"] for r in records]
    if not texts:
        raise ValueError(f"{dataset}/train.jsonl holds no samples, so there is nothing to train on. Fix: add code for this language to the configured repositories, or drop the language.")
    selection: dict = {}
    if parent is not None:
        texts, selection = incremental_texts(texts, read_texts(parent_dataset, "train", template, fim) if parent_dataset else [], cfg.replay, cfg.seed)
        log(f"incremental: {selection['new_samples']} new samples + {selection['replayed_samples']} replayed of "
            f"{selection['older_samples']} older ones, continuing {parent}")
        if not texts:
            raise ValueError(f"no train sample is new since the parent adapter's dataset ({parent_dataset}). Fix: keep the "
                             "parent adapter (the `adapter` asset does), or set training.init_from: base to retrain from scratch.")
    result = module.train(base, texts, read_texts(dataset, "valid", template, fim, log), out, cfg, log=log, checkpoints=checkpoints, init_adapter=parent)
    result.update(selection)
    result.update({"fim_scheme": fim.name, "fim_samples_skipped": fim_skipped,
                   **({"fim_skipped": fim.skip_reason} if not fim.has_fim else {})})
    (out / "forge_adapter.json").write_text(json.dumps({"backend": backend, "rank": cfg.rank, "alpha": cfg.alpha, "method": cfg.method}, indent=2))
    return result


def adapter_backend(adapter: Path) -> str:
    """Which backend wrote an adapter folder (peft writes adapter_model.safetensors, mlx adapters.safetensors);
    adapter_files.AdapterFileError (a ValueError) naming the fix when it is neither."""
    from forge_assets.export.adapter_files import backend_of

    return backend_of(adapter)


def merge_adapter(base: Path, adapter: Path, out: Path) -> None:
    """A plain Hugging Face model folder with the adapter folded into the base weights."""
    backend = adapter_backend(adapter)
    (mlx_backend if backend == "mlx" else peft_backend).merge(base, adapter, out)
