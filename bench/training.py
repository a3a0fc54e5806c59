"""Benchmark: Forge's packed PEFT trainer against a plain padded `transformers.Trainer`, same model, data and budget.

    python bench/training.py [--samples N] [--config forge.yaml]

With no arguments it reads ./forge.yaml (the embedded default: forge-tiny and this repository's python dataset),
materializing `base_model` and the python `dataset` first if they are missing. It takes the first N train samples
(default 400, in file order) and trains one epoch over them twice, from the same base model, with the same LoRA
shape, batch size, learning rate and `seq_len`:

- forge: `forge_assets.training.peft_backend.train` (samples fitted to seq_len, packed padding-free, position ids
  restarting per sample), with `train_on: all` so both train on every token;
- baseline: `transformers.Trainer` on the same PEFT model, each sample tokenized and truncated to seq_len, batches
  padded to their longest sample (`DataCollatorForLanguageModeling(mlm=False)`), no packing.

Prints one JSON line: trained (non-pad, unmasked) tokens per second for each and their ratio, Forge's packing
efficiency, trained-token coverage for each (tokens trained in the epoch / tokens of the samples), and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _inputs(config: Path) -> tuple[Path, Path, object]:
    """The promoted base model folder and python dataset folder, materialized first if missing."""
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.training.base_model import model_folder

    cfg = load_config(config)
    store = ArtifactStore(cfg.artifact_path)
    if store.promoted("base_model", "all") is None or store.promoted("dataset", "python") is None:
        from dagster import AssetSelection, DagsterInstance, materialize

        from forge_assets.definitions import all_assets
        from forge_assets.resources import ForgeResource

        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("language", ["python"])
        forge = {"forge": ForgeResource(config_path=str(config))}
        assert materialize(all_assets, instance=instance, resources=forge, selection=AssetSelection.assets("base_model")).success
        assert materialize(all_assets, instance=instance, resources=forge, partition_key="python",
                           selection=AssetSelection.assets("repo_snapshot", "session_logs", "dataset")).success
    return model_folder(store.promoted("base_model", "all").path), store.promoted("dataset", "python").path, cfg


def _baseline(base: Path, texts: list[str], cfg, out: Path) -> dict:
    """One epoch of transformers.Trainer over padded, truncated samples."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments

    from forge_assets.architectures import DEFAULT_LORA_MODULES
    from forge_assets.training.peft_backend import load_model

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(base)
    model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                             target_modules=list(DEFAULT_LORA_MODULES), bias="none", task_type="CAUSAL_LM"))
    model.train()
    full = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    data = [{"input_ids": ids[: cfg.seq_len]} for ids in full]
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=cfg.batch_size, num_train_epochs=1,
                             learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=max(1, -(-len(data) // cfg.batch_size) // 10),
                             logging_steps=10, save_strategy="no", report_to=[], seed=cfg.seed,
                             dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.remove_callback(PrinterCallback)  # stdout carries the one JSON line only
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trained = sum(max(0, len(d["input_ids"]) - 1) for d in data)  # every non-pad token after the first is a target
    return {"seconds": seconds, "trained_tokens": trained, "coverage": sum(len(d["input_ids"]) for d in data) / sum(len(f) for f in full)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=400, help="train samples to use (the first N of train.jsonl)")
    ap.add_argument("--config", default="forge.yaml", help="forge.yaml naming the base model (default: ./forge.yaml)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from forge_assets.training import peft_backend
    from forge_assets.training.data import read_texts

    base, dataset, cfg = _inputs(Path(args.config).resolve())
    texts = read_texts(dataset, "train")[: args.samples]
    training = cfg.training.model_copy(update={"epochs": 1.0, "max_steps": None, "train_on": "all", "backend": "peft"})
    with tempfile.TemporaryDirectory(prefix="forge-bench-training-") as tmp:
        forge = peft_backend.train(base, texts, [], Path(tmp) / "forge", training, log=lambda *_: None)
        plain = _baseline(base, texts, training, Path(tmp) / "baseline")
    forge_tps = forge["trained_tokens"] / forge["seconds"]
    plain_tps = plain["trained_tokens"] / plain["seconds"]
    print(json.dumps({
        "base_model": str(base), "dataset": str(dataset), "samples": len(texts), "seq_len": training.seq_len,
        "batch_size": training.batch_size, "device": forge["device"],
        "forge_trained_tokens_per_second": round(forge_tps, 1), "baseline_trained_tokens_per_second": round(plain_tps, 1),
        "ratio": round(forge_tps / plain_tps, 2), "packing_efficiency": forge["packing_efficiency"],
        "forge_token_coverage": forge["token_coverage"], "forge_trained_token_coverage": forge["trained_token_coverage"], "baseline_token_coverage": round(plain["coverage"], 4),
        "forge_seconds": round(forge["seconds"], 1), "baseline_seconds": round(plain["seconds"], 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
