"""LoRA training with PEFT and transformers (CPU or NVIDIA GPU)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from forge_assets.config import TrainingConfig
from forge_assets.training.data import read_texts

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(base: Path, adapter: Path | None = None):
    """The base model (with an adapter applied, if given) in eval mode, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tokenizer.pad_token_id is None:  # pad must not be EOS, or the model never learns to stop
        tokenizer.pad_token = tokenizer.unk_token or "<|fim_pad|>"
    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True).to(device())
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tokenizer


def train(base: Path, dataset: Path, out: Path, cfg: TrainingConfig, log=print) -> dict:
    """Train a LoRA adapter on dataset/train.jsonl; save a PEFT adapter folder to out.

    Samples are fitted to `seq_len`, loss-masked (`train_on`) and packed padding-free (`training/samples.py`):
    position ids restart at every sample and no attention mask is passed, so transformers attends within
    samples only. Returns the loss curve and figures for metadata.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from forge_assets.training.samples import collate, coverage, encode, pack, packing_stats

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(base)
    texts = read_texts(dataset, "train")
    if not texts:
        raise ValueError(f"{dataset}/train.jsonl holds no samples, so there is nothing to train on. Fix: add code for this language to the configured repositories, or drop the language.")
    enc = encode(texts, tokenizer, cfg.seq_len, cfg.train_on)
    if not enc.examples:
        raise ValueError(f"{dataset}/train.jsonl: none of its {len(texts)} samples fits training.seq_len={cfg.seq_len} "
                         f"({dict(enc.dropped)}). Fix: raise training.seq_len in forge.yaml.")
    rows = pack(enc.examples, cfg.seq_len)
    packing = packing_stats(rows, cfg.batch_size)
    batches = [rows[i:i + cfg.batch_size] for i in range(0, len(rows), cfg.batch_size)]
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=TARGET_MODULES,
                      use_rslora=cfg.method == "rslora", bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    steps_per_epoch = len(batches)
    total = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, 1 - s / total) + 0.0)
    rng = random.Random(cfg.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    curve: list[list[float]] = []
    step, trained_tokens, started = 0, 0, time.time()
    while step < total:
        order = batches[:]
        rng.shuffle(order)  # batches, not rows: rows of a batch have similar lengths
        for batch in order:
            ids, labels, pos = collate(batch, pad)
            loss = model(input_ids=ids.to(device()), position_ids=pos.to(device()), labels=labels.to(device()), use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            step += 1
            trained_tokens += int((labels[:, 1:] != -100).sum())
            curve.append([step, round(loss.item(), 4)])
            if step % 10 == 0 or step == 1:
                log(f"step {step}/{total}: loss {loss.item():.4f}")
            if step >= total:
                break
    seconds = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"backend": "peft", "device": device(), "steps": step, "train_samples": len(texts),
            "trainable_parameters": trainable, "loss_curve": curve, "seconds": round(seconds, 2),
            "train_on": cfg.train_on, "packed_rows": packing["rows"], "packing_efficiency": packing["packing_efficiency"],
            "epochs_run": round(step / steps_per_epoch, 3), "token_coverage": coverage(enc, step / steps_per_epoch),
            "trained_tokens": trained_tokens, "trained_tokens_per_second": round(trained_tokens / seconds, 1) if seconds else None,
            "samples_split": enc.split, "fim_trimmed": enc.trimmed, "samples_dropped": dict(enc.dropped)}


def merge(base: Path, adapter: Path, out: Path) -> None:
    """Fold a PEFT adapter into the base weights; save a plain Hugging Face model to out."""
    import torch

    model, tokenizer = load_model(base, adapter)
    merged = model.merge_and_unload()
    merged = merged.to(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
