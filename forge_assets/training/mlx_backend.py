"""LoRA training with mlx-lm (Apple silicon natively; Linux x86_64 through mlx[cpu])."""

from __future__ import annotations

import math
import time
import types
from pathlib import Path

from forge_assets.config import TrainingConfig
from forge_assets.training.data import read_texts


def available() -> bool:
    """Whether mlx and mlx-lm import on this machine."""
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken native install raises more than ImportError
        return False
    return True


def train(base: Path, dataset: Path, out: Path, cfg: TrainingConfig, log=print) -> dict:
    """Train an mlx-lm LoRA adapter (adapters.safetensors + adapter_config.json) on dataset/; save to out."""
    from mlx_lm import lora as mlx_lora
    from mlx_lm.tuner.trainer import TrainingCallback
    from mlx_lm.utils import load

    texts = read_texts(dataset, "train")
    if not texts:
        raise ValueError(f"{dataset}/train.jsonl holds no samples, so there is nothing to train on. Fix: add code for this language to the configured repositories, or drop the language.")
    iters = cfg.max_steps or max(1, round(cfg.epochs * math.ceil(len(texts) / cfg.batch_size)))
    scale = cfg.alpha / (math.sqrt(cfg.rank) if cfg.method == "rslora" else cfg.rank)
    args = types.SimpleNamespace(**{
        **mlx_lora.CONFIG_DEFAULTS,
        "model": str(base), "train": True, "data": str(dataset), "fine_tune_type": "lora",
        "num_layers": -1, "batch_size": min(cfg.batch_size, len(texts)), "iters": iters,
        "val_batches": -1, "learning_rate": cfg.learning_rate, "steps_per_report": 1,
        "steps_per_eval": iters, "save_every": iters, "adapter_path": str(out),
        "max_seq_length": cfg.seq_len, "seed": cfg.seed,
        "lora_parameters": {"rank": cfg.rank, "dropout": cfg.dropout, "scale": scale},
    })
    curve: list[list[float]] = []

    class _Curve(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            curve.append([int(info["iteration"]), round(float(info["train_loss"]), 4)])
            if info["iteration"] % 10 == 0 or info["iteration"] == 1:
                log(f"step {info['iteration']}/{iters}: loss {info['train_loss']:.4f}")

    started = time.time()
    model, tokenizer = load(str(base))
    train_set, valid_set, _ = mlx_lora.load_dataset(args, tokenizer)
    if len(valid_set) < args.batch_size:
        valid_set = train_set  # mlx-lm evaluates at the end and needs a full batch of validation data
    mlx_lora.train_model(args, model, train_set, valid_set, _Curve())
    return {"backend": "mlx", "device": "mlx", "steps": iters, "train_samples": len(texts),
            "loss_curve": curve, "seconds": round(time.time() - started, 2)}


def merge(base: Path, adapter: Path, out: Path) -> None:
    """Fuse an mlx-lm adapter into the base weights and save a Hugging Face-format model to out."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, load, save

    model, tokenizer, config = load(str(base), adapter_path=str(adapter), return_config=True)
    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    model = dequantize_model(model)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    save(out, str(base), model, tokenizer, config, donate_model=False)
