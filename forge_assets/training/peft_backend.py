"""LoRA training with PEFT and transformers (CPU or NVIDIA GPU)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from forge_assets.config import TrainingConfig
from forge_assets.files import atomic_write_json
from forge_assets.progress import Progress as ProgressLines, pace, peak_memory  # Progress: the Trainer callback in train()
from forge_assets.training.divergence import DivergenceMonitor, TrainingDiverged
from forge_assets.training.loss import chunk_parts, summed_loss
from forge_assets.training.samples import (IGNORE, collate, coverage, encode, fitting_summary, pack, packing_stats,
                                           trained_coverage, validation_subset)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def refuse_mlx_quantized(base: Path) -> None:
    """A clear error for an MLX-quantized base (mlx-community 4/8-bit), which transformers cannot load."""
    from forge_assets.training.base_model import mlx_quantization, mlx_quantization_label

    if (q := mlx_quantization(base)) is not None:
        raise ValueError(f"{base}/config.json: an MLX-quantized model ({mlx_quantization_label(q)}: packed uint32 weights with "
                         "scales and biases), which transformers and PEFT cannot load or train. Fix: set training.backend: mlx "
                         "in forge.yaml (`auto` picks mlx for such a base wherever mlx imports; on Linux pip install 'mlx[cpu]' "
                         "mlx-lm), or point base_model at the unquantized Hugging Face release of the model.")


def load_model(base: Path, adapter: Path | None = None):
    """The base model (with an adapter applied, if given) in eval mode, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    refuse_mlx_quantized(base)
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


def resolve_precision(cfg: TrainingConfig) -> str:
    """`bf16` or `fp32`: auto is bf16 autocast on a CUDA GPU that supports it, fp32 on CPU."""
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def _load_for_training(base: Path, cfg: TrainingConfig, precision: str):
    """The base model as training needs it: 4-bit NF4 for qlora (CUDA only), bf16 or fp32 otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    refuse_mlx_quantized(base)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or "<|fim_pad|>"
    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise ValueError("training.method is `qlora` (a 4-bit NF4 base through bitsandbytes), which needs an NVIDIA GPU; "
                             "this machine has none. Fix: use method lora (or dora/rslora) here, backend mlx on Apple silicon, "
                             "or run on a CUDA machine.")
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ValueError("training.method `qlora` needs bitsandbytes. Fix: pip install -e '.[cuda]' (bitsandbytes) on the CUDA machine.") from None
        from peft import prepare_model_for_kbit_training

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, local_files_only=True, device_map={"": 0})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        return model, tokenizer
    # bf16: the frozen base in bf16 and autocast; PEFT keeps the adapter weights in fp32
    dtype = torch.bfloat16 if precision == "bf16" and device() == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True).to(device())
    return model, tokenizer


def lora_config(cfg: TrainingConfig, model_type: str | None = None):
    """PEFT's LoraConfig for a method and a base's family (the architecture registry's LoRA targets; for an MoE
    family with `training.expert_lora`, its fused expert tensors through `target_parameters`, the router frozen).
    No modules_to_save, so the adapter stays loadable by vLLM (DoRA is not)."""
    from peft import LoraConfig

    from forge_assets.architectures import lookup, lora_modules_of

    fam = lookup(model_type)
    parameters = fam.target_parameters(cfg.expert_lora) if fam else []
    if parameters and cfg.method in ("dora", "pissa"):
        raise ValueError(f"training.method `{cfg.method}` cannot adapt the experts of a {model_type} base (PEFT's LoRA on "
                         "expert tensors has no DoRA or PiSSA). Fix: set training.method lora or rslora, or "
                         "training.expert_lora: false (attention only).")
    if parameters and cfg.dropout:
        raise ValueError(f"training.dropout {cfg.dropout} cannot apply to the experts of a {model_type} base (PEFT's "
                         "LoRA on expert tensors takes no dropout). Fix: set training.dropout: 0, or "
                         "training.expert_lora: false.")
    extra = {"target_parameters": parameters} if parameters else {}
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(lora_modules_of(model_type)),
                      use_rslora=cfg.method == "rslora", use_dora=cfg.method == "dora",
                      init_lora_weights="pissa_niter_4" if cfg.method == "pissa" else True,
                      bias="none", task_type="CAUSAL_LM", **extra)


def batch_loss(model, rows, pad_id: int, chunked: bool = True) -> tuple[float, int]:
    """Summed loss and trained-token count of packed rows (for a token-weighted validation loss); chunked, the
    batch's logits are never held whole (training/loss.py)."""
    import torch

    ids, labels, pos = collate(rows, pad_id)
    dev = next(model.parameters()).device
    with torch.no_grad():
        loss, n = summed_loss(model, ids.to(dev), labels.to(dev), position_ids=pos.to(dev), chunked=chunked)
    return float(loss), n


def validation_loss(model, batches, pad_id: int, progress=None, chunked: bool = True) -> float | None:
    """Token-weighted mean loss over the validation batches (same fitting and masking as training); `progress`, if
    given, is called with (batches done, batches) after each batch."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i, rows in enumerate(batches, 1):
        s, k = batch_loss(model, rows, pad_id, chunked)
        total, n = total + s, n + k
        if progress:
            progress(i, len(batches))
    if was_training:
        model.train()
    return round(total / n, 4) if n else None


CKPT_PREFIX = "checkpoint-"
CKPT_DONE = "forge-complete.json"  # written last, atomically: a checkpoint without it is partial and is deleted


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in folder, oldest first; partial ones (killed mid-save) are removed."""
    import shutil

    found = []
    if not folder.is_dir():
        return found
    for p in folder.iterdir():
        if p.name.startswith(CKPT_PREFIX) and p.is_dir():
            if (p / CKPT_DONE).is_file():
                found.append(p)
            else:
                shutil.rmtree(p, ignore_errors=True)
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def discard_checkpoints(folder: Path) -> None:
    """Remove every checkpoint in folder, complete or partial (after a divergence: a rerun must start clean, not
    resume the diverging run)."""
    import shutil

    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(CKPT_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def train(base: Path, texts: list[str], valid: list[str], out: Path, cfg: TrainingConfig, log=print,
          checkpoints: Path | None = None, init_adapter: Path | None = None, chunked_loss: bool = True) -> dict:
    """Train a LoRA-family adapter with transformers' Trainer; save a PEFT adapter folder to out.

    Samples are fitted to `seq_len`, loss-masked (`train_on`) and packed padding-free (`training/samples.py`):
    position ids restart at every sample and no attention mask is passed, so transformers attends within
    samples only. Each Trainer item is one pre-built batch of rows of similar length, so the batches are
    shuffled but keep their low padding. The Trainer gives gradient accumulation, gradient checkpointing,
    warmup plus the schedule, bf16 autocast and resumable checkpoints (made atomic by a completion marker).
    The loss is computed in chunks of tokens (training/loss.py), never over the whole batch's logits, normalized
    as the Trainer normalizes its own; `chunked_loss=False` keeps the Trainer's own loss (benchmarks compare them).
    Validation scores `val_batches` of the valid split's batches, the same seeded subset every time.
    The loss is logged at every optimizer step (logging_steps=1, NaN/inf not filtered out) and fed to the divergence
    monitor (training/divergence.py): a diverging run stops there, keeps no adapter and no checkpoint, and raises
    TrainingDiverged.
    """
    import shutil

    import torch
    from peft import PeftModel, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    setup_started = time.time()
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg)
    if precision == "bf16" and device() == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("training.precision is bf16 but this GPU has no bf16 support. Fix: set precision: fp32 (or auto).")
    model, tokenizer = _load_for_training(base, cfg, precision)
    from forge_assets.architectures import lookup

    fam = lookup(getattr(model.config, "model_type", None))
    if cfg.method == "qlora" and fam is not None and fam.is_moe:
        log(f"note: bitsandbytes 4-bit quantizes nn.Linear layers only; {fam.label}'s fused expert tensors stay "
            f"{next(model.parameters()).dtype} (most of the model's weights). On a 48 GB Mac use backend: mlx, whose "
            "QLoRA quantizes the experts too (docs/architectures.md)")
    enc = encode(texts, tokenizer, cfg.seq_len, cfg.train_on, cfg.long_answers)
    if not enc.examples:
        raise ValueError(f"none of the {len(texts)} train samples fits training.seq_len={cfg.seq_len} "
                         f"({dict(enc.dropped)}). Fix: raise training.seq_len in forge.yaml.")
    log(fitting_summary(enc, len(texts), cfg.seq_len))
    rows = pack(enc.examples, cfg.seq_len)
    packing = packing_stats(rows, cfg.batch_size)
    batches = [rows[i:i + cfg.batch_size] for i in range(0, len(rows), cfg.batch_size)]
    venc = encode(valid, tokenizer, cfg.seq_len, cfg.train_on, cfg.long_answers) if valid and cfg.val_batches != 0 else None
    vrows = pack(venc.examples, cfg.seq_len) if venc else []
    vbatches = [vrows[i:i + cfg.batch_size] for i in range(0, len(vrows), cfg.batch_size)]
    all_vbatches = len(vbatches)
    vbatches = [vbatches[i] for i in validation_subset(len(vbatches), cfg.val_batches, cfg.seed)]
    if not vbatches:
        log("training.val_batches is 0: no validation loss" if cfg.val_batches == 0 else
            "no validation samples fit: validation loss is not reported")
    elif len(vbatches) < all_vbatches:
        log(f"validation loss on {len(vbatches)} of the valid split's {all_vbatches} batches (training.val_batches), "
            "the same seeded subset every time")

    work = checkpoints if checkpoints is not None else out.parent / f".tmp-{os.getpid()}-trainer"
    work.mkdir(parents=True, exist_ok=True)
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
        log(f"continuing adapter {init_adapter}")
    else:
        model = get_peft_model(model, lora_config(cfg, getattr(model.config, "model_type", None)))
    pissa_init = work / "pissa-init"
    if cfg.method == "pissa" and init_adapter is None and not (pissa_init / "adapter_model.safetensors").is_file():
        # PiSSA changes the base's residual weights; saving with this initial adapter converts the result to a plain
        # LoRA that applies to the unchanged base (rank 2r), so merge, export and vLLM see an ordinary adapter.
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(pissa_init)
        model.peft_config["default"].init_lora_weights = "pissa_niter_4"
    if cfg.method == "dora":
        log("method dora: the merged model exports and serves everywhere, but vLLM cannot load DoRA adapters unmerged")

    steps_per_epoch = math.ceil(len(batches) / cfg.gradient_accumulation)
    total = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    curve: list[list[float]] = []
    vcurve: list[list[float]] = []
    lrs: list[list[float]] = []
    counted = {"tokens": 0, "micro": 0}
    validation_seconds = [0.0]
    monitor = DivergenceMonitor.of(cfg, len(tokenizer))

    def validate(step: int) -> None:
        started = time.time()
        loss = validation_loss(model, vbatches, pad, ProgressLines(log, f"step {step}/{total}: validation", "batches"), chunked_loss)
        validation_seconds[0] += time.time() - started
        vcurve.append([step, loss])
        log(f"step {step}/{total}: valid loss {loss:.4f}")

    class Batches(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    def collator(items):
        ids, labels, pos = collate(items[0], pad)
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "use_cache": False}

    class ForgeTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                counted["tokens"] += int((inputs["labels"][:, 1:] != IGNORE).sum())
            if return_outputs or not chunked_loss or chunk_parts(model) is None:
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            loss, n = summed_loss(model, inputs["input_ids"], inputs["labels"], position_ids=inputs.get("position_ids"))
            # As transformers' ForCausalLMLoss under Trainer.compute_loss: summed over the tokens of the whole
            # accumulated step when the model takes loss kwargs (training_step then does not divide by the
            # accumulation steps), else a per-batch mean (which training_step divides). average_tokens_across_devices is off.
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                return loss / num_items_in_batch
            return loss / max(n, 1)

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.began, self.first, self.validated = time.time(), state.global_step, validation_seconds[0]

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and state.global_step > (curve[-1][0] if curve else 0):
                curve.append([state.global_step, round(float(logs["loss"]), 4)])
                lrs.append([state.global_step, float(logs.get("learning_rate", 0.0))])
                if (diverged := monitor.update(state.global_step, float(logs["loss"]))) is not None:
                    log(f"{diverged.describe()}: stopping")
                    control.should_training_stop = True
                    control.should_save = False  # no checkpoint of the diverged state (the save comes after on_log)
                    return control
                if state.global_step % 10 == 0 or state.global_step in (1, total):
                    spent = time.time() - self.began - (validation_seconds[0] - self.validated)  # training steps only
                    log(f"step {state.global_step}/{total}: loss {logs['loss']:.4f} "
                        f"({pace(state.global_step - self.first, total - state.global_step, spent, 'steps')})")

        def on_step_end(self, args, state, control, model=None, **kw):
            step = state.global_step
            if vbatches and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                validate(step)

        def on_save(self, args, state, control, **kw):
            ck = work / f"{CKPT_PREFIX}{state.global_step}"
            atomic_write_json(ck / CKPT_DONE, {"step": state.global_step, "total": total, "curve": curve, "valid_curve": vcurve,
                                               "lr_curve": lrs, "trained_tokens": counted["tokens"] + counted.get("before", 0)},
                              indent=None)

    resume = None
    done = complete_checkpoints(work)
    if done:
        state = json.loads((done[-1] / CKPT_DONE).read_text())
        if state.get("total") == total:
            resume = done[-1]
            curve[:] = state["curve"]
            vcurve[:] = state["valid_curve"]
            lrs[:] = state["lr_curve"]
            counted["before"] = state["trained_tokens"]
            log(f"resuming from checkpoint step {state['step']} of {total} ({resume})")
            monitor.replay(curve)  # the resumed run judges its loss as the uninterrupted one would
        else:
            for p in done:
                shutil.rmtree(p, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=1, gradient_accumulation_steps=cfg.gradient_accumulation,
        max_steps=total, learning_rate=cfg.learning_rate, lr_scheduler_type=SCHEDULES[cfg.lr_schedule],
        warmup_steps=round(cfg.warmup_ratio * total), max_grad_norm=1.0, weight_decay=0.0, seed=cfg.seed, data_seed=cfg.seed,
        bf16=precision == "bf16", use_cpu=device() == "cpu",
        **_checkpointing(cfg.gradient_checkpointing and cfg.method != "qlora"),  # qlora: prepare_model_for_kbit_training did it
        # the loss of every optimizer step, NaN/inf included (the default filter would log a NaN step as the mean
        # of the steps before it, hiding the divergence from the monitor)
        logging_steps=1, logging_first_step=True, logging_nan_inf_filter=False, report_to="none", disable_tqdm=True,
        save_strategy="steps" if cfg.checkpoint_every and checkpoints is not None else "no",
        save_steps=cfg.checkpoint_every or total, save_total_limit=2,
        eval_strategy="no", remove_unused_columns=False, dataloader_num_workers=0, average_tokens_across_devices=False,
    )
    trainer = ForgeTrainer(model=model, args=args, train_dataset=Batches(batches), data_collator=collator, callbacks=[Progress()])
    trainer.remove_callback(PrinterCallback)  # Progress logs through `log`; the printer would write raw dicts to stdout
    started = time.time()
    setup_seconds = started - setup_started
    if monitor.stopped is None:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if monitor.stopped is not None:  # diverged: fail, with no adapter and no checkpoint to resume the diverged run from
        if checkpoints is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            discard_checkpoints(work)
        raise TrainingDiverged(monitor.stopped, cfg.learning_rate, cfg.divergence_patience)
    seconds = time.time() - started
    if vbatches:
        validate(total)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.method == "pissa" and init_adapter is None:
        model.save_pretrained(out, safe_serialization=True, path_initial_model_for_weight_conversion=str(pissa_init))
    else:
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if checkpoints is None:
        shutil.rmtree(work, ignore_errors=True)
    trained_tokens = counted["tokens"] + counted.get("before", 0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    epochs_run = total / steps_per_epoch
    return {"backend": "peft", "device": device(), "method": cfg.method, "precision": precision, "steps": total,
            "train_samples": len(texts), "trainable_parameters": trainable, "loss_curve": curve, "valid_curve": vcurve, "lr_curve": lrs,
            "seconds": round(seconds, 2), "train_on": cfg.train_on, "packed_rows": packing["rows"],
            "packing_efficiency": packing["packing_efficiency"], "epochs_run": round(epochs_run, 3),
            "token_coverage": coverage(enc, epochs_run), "trained_token_coverage": trained_coverage(enc, epochs_run),
            "prompt_trimmed": enc.prompt_trimmed, "answers_truncated": enc.answers_truncated, "trained_tokens": trained_tokens,
            "trained_tokens_per_second": round(counted["tokens"] / seconds, 1) if seconds else None,
            "gradient_accumulation": cfg.gradient_accumulation, "resumed_from": int(resume.name[len(CKPT_PREFIX):]) if resume else None,
            "samples_split": enc.split, "fim_trimmed": enc.trimmed, "samples_dropped": dict(enc.dropped),
            "setup_seconds": round(setup_seconds, 2), "validation_seconds": round(validation_seconds[0], 2),
            "validation_batches": len(vbatches), "valid_split_batches": all_vbatches,
            "loss": "chunked" if chunked_loss and chunk_parts(model) is not None else "plain", **peak_memory()}


def _checkpointing(on: bool) -> dict:
    """TrainingArguments' activation (gradient) checkpointing keys, named as this transformers version names them."""
    if not on:
        return {}
    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def merge(base: Path, adapter: Path, out: Path) -> None:
    """Fold a PEFT adapter into the base weights; save a plain Hugging Face model to out."""
    import torch

    model, tokenizer = load_model(base, adapter)
    merged = model.merge_and_unload()
    # Saved in the base checkpoint's own dtype (a bf16 base stays bf16 on disk: half the fp32 copy's size).
    config = json.loads((Path(base) / "config.json").read_text())
    saved = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(config.get("dtype") or config.get("torch_dtype"), torch.float32)
    merged = merged.to(saved)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
