"""Benchmark: peak memory and step time of PEFT training with the chunked loss against the Trainer's own loss.

    python bench/training_memory.py [--steps N] [--batch-size B] [--seq-len T]

Builds, offline, a random Qwen2 shaped like Qwen2.5-0.5B (24 layers, hidden 896, 14 heads, 2 KV heads, tied embeddings,
494 M parameters) with Qwen's 151,936-token vocabulary (the ids of forge-tiny's tokenizer, trained on Forge's own
source, are a subset of it: memory and compute follow the vocabulary of the LM head, not the tokenizer). Then it trains
a LoRA adapter twice, each in its own process so that each peak is its own, on Forge's source with `train_on: all`
(every position carries a loss: the case where chunking saves least compute), `batch_size` rows of `seq_len` tokens:

- chunked: `peft_backend.train` as Forge runs it (training/loss.py: no whole-batch logits);
- plain: the same with `chunked_loss=False`, transformers' Trainer computing the loss from the whole batch's logits.

Prints one JSON line: for each, the peak resident memory of the process, of loading the model and of the training
alone (Linux: VmHWM reset when training starts), wall and CPU seconds per optimizer step (the first step included; CPU
time is the fairer comparison on a shared machine) and the first loss (the same for both: the same computation); and
the ratios chunked / plain. With the defaults it takes about 9 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QWEN_VOCAB = 151_936
SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2)


def build_model(out: Path) -> int:
    """A random Qwen2.5-0.5B-shaped model with Qwen's vocabulary and forge-tiny's tokenizer, in bf16 on disk; its parameters."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from forge_assets.export.random_models import build_tokenizer

    build_tokenizer("forge-tiny", out)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    config = Qwen2Config(vocab_size=QWEN_VOCAB, max_position_embeddings=4096, tie_word_embeddings=True, use_sliding_window=False,
                         rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **SHAPE)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak resident set size to the current one
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def child(path: str, model: Path, texts: Path, steps: int, batch_size: int, seq_len: int) -> dict:
    """One training run in this process: its figures."""
    import transformers

    from forge_assets.config import TrainingConfig
    from forge_assets.training import peft_backend

    marks: dict = {}
    real_train = transformers.Trainer.train

    def train(self, *args, **kwargs):  # ForgeTrainer inherits this: the training peak, apart from loading the model
        marks["load_peak_rss_mb"] = _vm_hwm_mb()
        marks["reset"] = _reset_vm_hwm()
        cpu = _cpu_seconds()
        try:
            return real_train(self, *args, **kwargs)
        finally:
            marks["training_peak_rss_mb"] = _vm_hwm_mb() if marks["reset"] else None
            marks["cpu_seconds"] = _cpu_seconds() - cpu

    transformers.Trainer.train = train
    cfg = TrainingConfig(backend="peft", method="lora", rank=8, alpha=16, batch_size=batch_size, seq_len=seq_len, max_steps=steps,
                         train_on="all", checkpoint_every=None, val_batches=0, warmup_ratio=0.0)
    with tempfile.TemporaryDirectory(prefix="forge-bench-memory-") as tmp:
        result = peft_backend.train(model, json.loads(texts.read_text()), [], Path(tmp) / "adapter", cfg, log=lambda *_: None,
                                    chunked_loss=path == "chunked")
    # After the reset, getrusage's peak (the result's peak_rss_mb) is the training's too: the process's is the larger one.
    training = marks.get("training_peak_rss_mb") or result["peak_rss_mb"]
    return {"loss_path": result["loss"], "peak_rss_mb": round(max(training, marks.get("load_peak_rss_mb") or 0), 1),
            "load_peak_rss_mb": round(marks["load_peak_rss_mb"], 1) if marks.get("load_peak_rss_mb") else None,
            "training_peak_rss_mb": round(training, 1) if marks.get("reset") else None,
            "seconds_per_step": round(result["seconds"] / result["steps"], 2),
            "cpu_seconds_per_step": round(marks["cpu_seconds"] / result["steps"], 2), "first_loss": result["loss_curve"][0][1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps per run (default 1)")
    ap.add_argument("--batch-size", type=int, default=2, help="rows per batch (default 2)")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per row (default 1024)")
    ap.add_argument("--child", choices=["chunked", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        from _common import stdout_to_stderr

        with stdout_to_stderr():
            got = child(args.child, args.model, args.texts, args.steps, args.batch_size, args.seq_len)
        print(json.dumps(got))
        return 0

    started = time.perf_counter()
    out: dict = {"model": "random Qwen2, Qwen2.5-0.5B shape", "vocab": QWEN_VOCAB, "batch_size": args.batch_size,
                 "seq_len": args.seq_len, "steps": args.steps, "train_on": "all", "device": "cpu"}
    with tempfile.TemporaryDirectory(prefix="forge-bench-qwen-") as tmp:
        model, texts = Path(tmp) / "model", Path(tmp) / "texts.json"
        out["parameters"] = build_model(model)
        from forge_assets.export.random_models import source_texts

        texts.write_text(json.dumps(source_texts()))  # read once: both runs train on the very same samples
        for path in ("chunked", "plain"):
            run = subprocess.run([sys.executable, __file__, "--child", path, "--model", str(model), "--texts", str(texts),
                                  "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)],
                                 stdout=subprocess.PIPE, text=True)
            if run.returncode:
                raise SystemExit(f"the {path} training run failed (exit {run.returncode}; its log is above). Fix: free memory, "
                                 "or pass a smaller --batch-size / --seq-len.")
            out[path] = json.loads(run.stdout.strip().splitlines()[-1])
    import torch

    out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    c, p = out["chunked"], out["plain"]
    out["peak_rss_ratio"] = round(c["peak_rss_mb"] / p["peak_rss_mb"], 3)
    if c["training_peak_rss_mb"] and p["training_peak_rss_mb"]:
        out["training_peak_rss_ratio"] = round(c["training_peak_rss_mb"] / p["training_peak_rss_mb"], 3)
    out["step_time_ratio"] = round(c["seconds_per_step"] / p["seconds_per_step"], 3)
    out["step_cpu_time_ratio"] = round(c["cpu_seconds_per_step"] / p["cpu_seconds_per_step"], 3)  # less sensitive to other load
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
