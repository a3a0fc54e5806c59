"""LoRA training with mlx-lm (Apple silicon natively; Linux x86_64 through mlx[cpu]).

Every `TrainingConfig` key means what it means for the PEFT backend:

- samples are fitted to `seq_len` and loss-masked by `training/samples.py` (`train_on`); the loss is the
  token-weighted mean cross-entropy over labels != -100, across all micro-batches of an optimizer step;
- no packing: mlx-lm models take no position ids or attention mask, so several examples in one row would
  attend to each other. mlx batches whole fitted examples by length instead (sorted, so batch neighbours have
  similar lengths; the batches are shuffled, not the rows) and pads to each batch's longest example;
  `packing_efficiency` is non-pad tokens / tokens computed for those batches;
- one optimizer step is `gradient_accumulation` micro-batches of `batch_size` examples (the last step of an
  epoch takes the micro-batches left); AdamW (weight decay 0, as transformers' Trainer), linear warmup over
  `warmup_ratio` of the steps, then `lr_schedule`; gradients clipped to norm 1.0;
- methods: lora (scale alpha/rank), rslora (alpha/sqrt(rank)), dora (mlx-lm DoRA), qlora (the base's linear
  layers quantized to 4 bits in memory, group size 64, before the LoRA layers are added; the adapter then
  fuses into the full-precision base); pissa is PEFT-only. LoRA goes on q/k/v/o and gate/up/down of every block;
- precision: auto trains in the model's dtype, fp32 / bf16 cast the base; adapter weights stay float32
  (master weights, as PEFT keeps them under bf16 autocast);
- checkpoints (atomic, the newest two kept) hold adapter weights, optimizer state and the curves; a killed run
  resumes from the newest one written for the same steps, configuration and samples. Batch order is a pure
  function of seed and epoch, and dropout is seeded per step, so a resumed run repeats the uninterrupted one;
- divergence halt (training/divergence.py, as PEFT): every step's loss goes to the monitor; at the first non-finite
  loss, or `divergence_patience` steps in a row above `divergence_factor` x the running minimum, training stops before
  that step's validation or checkpoint, the run's checkpoints are removed, and TrainingDiverged is raised (no adapter).

A small loop with `nn.value_and_grad` is used instead of `mlx_lm.tuner.trainer.train`, because that counts
micro-batches as iterations, always evaluates before step 1, and can neither start at a step > 1 nor save
optimizer state, so it cannot resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

from forge_assets.config import TrainingConfig
from forge_assets.training.divergence import DivergenceMonitor, TrainingDiverged

QLORA_BITS, QLORA_GROUP_SIZE = 4, 64
CLIP_NORM = 1.0
KEEP_CHECKPOINTS = 2


def available() -> bool:
    """Whether mlx and mlx-lm import on this machine."""
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken native install raises more than ImportError
        return False
    return True


# ---------------------------------------------------------------------------------------------- batches

def _length_batches(examples: list, batch_size: int) -> list[list]:
    """Examples sorted by length (longest first, ties in input order), cut into batches of batch_size."""
    ordered = sorted(examples, key=lambda e: -len(e.ids))
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def _epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    """The batch order of one epoch: a pure function of seed and epoch (so a resumed run repeats it)."""
    order = list(range(n_batches))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _step_batches(step: int, n_batches: int, accumulation: int, seed: int) -> list[int]:
    """Indices of the micro-batches of optimizer step `step` (1-based)."""
    per_epoch = math.ceil(n_batches / accumulation)
    epoch, j = divmod(step - 1, per_epoch)
    return _epoch_order(n_batches, seed, epoch)[j * accumulation:(j + 1) * accumulation]


def _arrays(batch: list, pad_id: int):
    """(inputs, targets) for one batch: inputs ids[:-1], targets labels[1:], padded with pad / IGNORE."""
    import mlx.core as mx
    import numpy as np

    from forge_assets.training.samples import IGNORE

    width = max(len(e.ids) for e in batch) - 1
    inputs = np.full((len(batch), width), pad_id, dtype=np.int32)
    targets = np.full((len(batch), width), IGNORE, dtype=np.int32)
    for i, e in enumerate(batch):
        n = len(e.ids) - 1
        inputs[i, :n] = e.ids[:-1]
        targets[i, :n] = e.labels[1:]
    return mx.array(inputs), mx.array(targets)


def _loss(model, inputs, targets):
    """Summed cross-entropy over the targets that are not IGNORE, and their count."""
    import mlx.core as mx
    import mlx.nn as nn

    from forge_assets.training.samples import IGNORE

    mask = targets != IGNORE
    logits = model(inputs).astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, mx.where(mask, targets, 0)) * mask
    return ce.sum(), mask.sum()


def _evaluate(model, batches: list[list], pad_id: int, progress=None) -> float:
    """Token-weighted mean validation loss over the batches; `progress`, if given, gets (batches done, batches)."""
    import mlx.core as mx

    model.eval()
    total, tokens = mx.array(0.0), mx.array(0)
    for i, batch in enumerate(batches, 1):
        s, n = _loss(model, *_arrays(batch, pad_id))
        total, tokens = total + s, tokens + n
        mx.eval(total, tokens)
        if progress:
            progress(i, len(batches))
    model.train()
    return total.item() / max(1, tokens.item())


# ------------------------------------------------------------------------------------------------ model

def _model_config(base: Path) -> dict:
    """Config overrides so mlx-lm builds the model transformers builds: transformers 5 writes RoPE settings as
    `rope_parameters`, which mlx-lm's llama/qwen2 ignore (they would fall back to rope_theta 1e6, not the model's)."""
    try:
        config = json.loads((Path(base) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    rope = config.get("rope_parameters")
    extra: dict = {}
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
        extra["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
            extra["rope_scaling"] = rope
    if isinstance(rope, dict) and "partial_rotary_factor" in rope and "partial_rotary_factor" not in config:
        extra["partial_rotary_factor"] = rope["partial_rotary_factor"]  # Qwen3-Next: mlx-lm reads it at the top level
    if "num_local_experts" in config and "num_experts" not in config:  # transformers 5's name for qwen3_moe's count
        extra["num_experts"] = config["num_local_experts"]
    return extra


def _checkpoint_blocks(model) -> None:
    """Gradient checkpointing for every transformer block, per instance (mlx-lm's `grad_checkpoint` patches the
    class itself, which would leak into every later model in the process)."""
    import mlx.core as mx

    made: dict[type, type] = {}
    for layer in model.layers:
        base_cls = type(layer)
        if base_cls not in made:
            def call(self, *args, _fn=base_cls.__call__, **kwargs):
                def inner(params, *a, **k):
                    self.update(params)
                    return _fn(self, *a, **k)

                return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

            made[base_cls] = type(f"Checkpointed{base_cls.__name__}", (base_cls,), {"__call__": call})
        layer.__class__ = made[base_cls]


def _targets(model, experts: bool = False) -> tuple[str, ...]:
    """The registry's LoRA target names for this mlx-lm model's family (leaf names, or block-relative paths for
    experts: `switch_mlp.gate_proj`)."""
    from forge_assets.architectures import DEFAULT_LORA_MODULES, lookup

    fam = lookup(getattr(model, "model_type", None))
    if fam is None:
        return DEFAULT_LORA_MODULES
    return (fam.mlx_lora_modules or fam.lora_modules) + (fam.mlx_expert_modules if experts else ())


def _lora_keys(model, experts: bool = False) -> list[str]:
    """Block-relative names of the targeted linear layers (`self_attn.q_proj`, `mlp.down_proj`, and with `experts`
    an MoE family's SwitchLinear experts, `mlp.switch_mlp.gate_proj`)."""
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    targets = _targets(model, experts)
    kinds = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear)
    keys = set()
    for layer in model.layers:
        for name, module in layer.named_modules():
            if (name.rsplit(".", 1)[-1] in targets or any(name == t or name.endswith("." + t) for t in targets)) \
                    and isinstance(module, kinds):
                keys.add(name)
    return sorted(keys)


def _quantize_base(model) -> None:
    """mlx QLoRA: the transformer blocks' linear layers, MoE experts (SwitchLinear) included, to 4 bits (embeddings
    and head stay, as with NF4). The experts are most of an MoE's weights: a 30B-A3B left with bf16 experts would not
    fit a 48 GB Mac."""
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import SwitchLinear

    def wanted(path: str, module) -> bool:
        return (isinstance(module, (nn.Linear, SwitchLinear)) and ".layers." in f".{path}"
                and module.weight.shape[-1] % QLORA_GROUP_SIZE == 0)

    nn.quantize(model, group_size=QLORA_GROUP_SIZE, bits=QLORA_BITS, class_predicate=wanted)


def _adapter_settings(cfg: TrainingConfig, model, init_adapter: Path | None) -> tuple[str, dict]:
    """(fine_tune_type, lora_parameters): from cfg, or from the adapter being continued."""
    if init_adapter is not None:
        folder = Path(init_adapter)
        try:
            prev = json.loads((folder / "adapter_config.json").read_text())
        except (OSError, ValueError):
            prev = {}
        if not (folder / "adapters.safetensors").is_file() or "lora_parameters" not in prev:
            raise ValueError(f"{folder}: not an mlx-lm adapter folder (adapters.safetensors + adapter_config.json with "
                             "lora_parameters), so mlx cannot continue it. Fix: continue it with backend: peft (the backend "
                             "that wrote it), or set init_from: base.")
        params = dict(prev["lora_parameters"])
        params["dropout"] = cfg.dropout
        params.setdefault("keys", _lora_keys(model, cfg.expert_lora))
        return prev.get("fine_tune_type", "lora"), params
    scale = cfg.alpha / (math.sqrt(cfg.rank) if cfg.method == "rslora" else cfg.rank)
    return ("dora" if cfg.method == "dora" else "lora"), {"rank": cfg.rank, "scale": scale, "dropout": cfg.dropout,
                                                          "keys": _lora_keys(model, cfg.expert_lora)}


def _load_adapter_weights(model, folder: Path) -> None:
    """Load adapter weights into the LoRA layers, refusing names or shapes that do not match."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = mx.load(str(folder / "adapters.safetensors"))
    params = dict(tree_flatten(model.trainable_parameters()))
    bad = [n for n, w in weights.items() if n not in params or params[n].shape != w.shape]
    missing = [n for n in params if n not in weights]
    if bad or missing:
        raise ValueError(f"{folder}: its adapter weights do not fit this model's LoRA layers (unexpected or misshaped: "
                         f"{bad[:3]}, missing: {missing[:3]}). Fix: train a fresh adapter (init_from: base).")
    model.load_weights(list(weights.items()), strict=False)


# ------------------------------------------------------------------------------------------ checkpoints

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_dirs(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for p in folder.glob("step-*"):
        tail = p.name[len("step-"):]
        if p.is_dir() and tail.isdigit():
            found.append((int(tail), p))
    return sorted(found)


def _save_checkpoint(folder: Path, step: int, model, optimizer, meta: dict) -> None:
    """Write step-N atomically: into .tmp-<pid>-step-N, then one rename; keep the newest KEEP_CHECKPOINTS."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    tmp = folder / f".tmp-{os.getpid()}-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    (tmp / "state.json").write_text(json.dumps(meta))
    for name in ("adapters.safetensors", "optimizer.safetensors", "state.json"):
        _fsync(tmp / name)
    final = folder / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # a folder, not one file (so not files.atomic_write); the .tmp-<pid>- name lets a rerun clean it
    _fsync(folder)
    for _, old in _step_dirs(folder)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _discard_checkpoints(folder: Path) -> None:
    """Remove every checkpoint in folder (step-N and .tmp-* leftovers): after a divergence a rerun must start clean,
    not resume the diverging run."""
    for p in [*folder.glob("step-*"), *folder.glob(".tmp-*")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _find_checkpoint(folder: Path, total: int, fingerprint: str, log) -> tuple[Path, dict] | None:
    """The newest complete checkpoint of this very run (same total steps, configuration and samples); stale ones
    (another run's) are deleted, and so are .tmp-* leftovers of a killed write."""
    for tmp in folder.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for step, path in reversed(_step_dirs(folder)):
        try:
            meta = json.loads((path / "state.json").read_text())
            complete = all((path / f).is_file() for f in ("adapters.safetensors", "optimizer.safetensors"))
        except (OSError, ValueError):
            meta, complete = {}, False
        if complete and meta.get("step") == step and meta.get("total_steps") == total \
                and meta.get("fingerprint") == fingerprint and step <= total:
            return path, meta
        log(f"ignoring checkpoint {path.name}: written for another run (steps, configuration or samples differ)")
        shutil.rmtree(path, ignore_errors=True)
    return None


def _fingerprint(cfg: TrainingConfig, examples: list, init_adapter: Path | None, base: Path) -> str:
    """What a checkpoint must have been trained on to be resumed: configuration, samples, starting point."""
    h = hashlib.sha256()
    settings = cfg.model_dump(exclude={"checkpoint_every", "eval_every", "val_batches", "backend"})
    h.update(json.dumps([settings, str(Path(base).resolve()), str(init_adapter)], sort_keys=True, default=str).encode())
    for e in examples:
        h.update(json.dumps([e.ids, e.labels]).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ train

def _schedule(cfg: TrainingConfig, total: int):
    import mlx.core as mx
    import mlx.optimizers as optim

    warmup = round(cfg.warmup_ratio * total)
    rest = max(1, total - warmup)
    if cfg.lr_schedule == "cosine":
        main = optim.cosine_decay(cfg.learning_rate, rest, 0.0)
    elif cfg.lr_schedule == "linear":
        main = optim.linear_schedule(cfg.learning_rate, 0.0, rest)
    else:
        def main(_step, _lr=cfg.learning_rate):
            return mx.array(_lr, dtype=mx.float32)
    if warmup == 0:
        return main
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.learning_rate, warmup), main], [warmup])


def train(base: Path, texts: list[str], valid: list[str], out: Path, cfg: TrainingConfig, log=print,
          checkpoints: Path | None = None, init_adapter: Path | None = None) -> dict:
    """Train an mlx-lm LoRA adapter on texts (validated on valid); save adapters.safetensors + adapter_config.json to out."""
    if cfg.method == "pissa":
        raise ValueError("training.method pissa is PEFT-only: mlx-lm has no PiSSA initialisation. "
                         "Fix: use backend: peft, or method lora, rslora, dora or qlora with mlx.")
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten, tree_map, tree_unflatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    from forge_assets.progress import Progress, pace, peak_memory
    from forge_assets.training import samples
    from forge_assets.training.samples import Row, coverage, encode, fitting_summary, packing_stats, validation_subset

    setup_started = time.time()
    mx.random.seed(cfg.seed)
    model, tokenizer = load(str(base), model_config=_model_config(base))
    hf = tokenizer._tokenizer
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0

    enc = encode(texts, hf, cfg.seq_len, cfg.train_on, cfg.long_answers)
    if not enc.examples:
        raise ValueError(f"none of the {len(texts)} training samples fits training.seq_len={cfg.seq_len} "
                         f"({dict(enc.dropped)}). Fix: raise training.seq_len in forge.yaml.")
    log(fitting_summary(enc, len(texts), cfg.seq_len))
    batches = _length_batches(enc.examples, cfg.batch_size)
    rows = []
    for batch in batches:
        for e in batch:
            rows.append(Row())
            rows[-1].add(e)
    packing = packing_stats(rows, cfg.batch_size)
    valid_batches = (_length_batches(encode(valid, hf, cfg.seq_len, cfg.train_on, cfg.long_answers).examples, cfg.batch_size)
                     if valid and cfg.val_batches != 0 else [])
    all_valid_batches = len(valid_batches)
    valid_batches = [valid_batches[i] for i in validation_subset(len(valid_batches), cfg.val_batches, cfg.seed)]
    if not valid_batches:
        log("training.val_batches is 0: no validation loss" if cfg.val_batches == 0 else "no validation samples: no validation loss")
    elif len(valid_batches) < all_valid_batches:
        log(f"validation loss on {len(valid_batches)} of the valid split's {all_valid_batches} batches (training.val_batches), "
            "the same seeded subset every time")

    accumulation = cfg.gradient_accumulation
    steps_per_epoch = math.ceil(len(batches) / accumulation)
    total = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))

    if cfg.precision != "auto":
        model.set_dtype(mx.float32 if cfg.precision == "fp32" else mx.bfloat16)
    dtype = next((str(v.dtype) for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)),
                 "float32").replace("mlx.core.", "")
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)  # what auto resolved to
    from forge_assets.training.base_model import mlx_quantization, mlx_quantization_label

    quantization = mlx_quantization(base)
    if quantization is not None:  # an MLX-quantized base (mlx-community 4/8-bit): LoRA over its QuantizedLinear layers as loaded
        log(f"{base} is {mlx_quantization_label(quantization)}: training on its quantized weights as they are (not requantized)")
        quantization = {k: v for k, v in quantization.items() if not isinstance(v, dict)}  # per-module overrides left out
    elif cfg.method == "qlora":
        _quantize_base(model)
        quantization = {"group_size": QLORA_GROUP_SIZE, "bits": QLORA_BITS, "mode": "affine"}
    model.freeze()
    fine_tune_type, lora_parameters = _adapter_settings(cfg, model, init_adapter)
    if not lora_parameters["keys"]:
        raise ValueError(f"{base}: no {', '.join(_targets(model))} linear layers in its transformer blocks, so LoRA has "
                         "nothing to adapt. Fix: use a Llama/Qwen-style base model.")
    linear_to_lora_layers(model, len(model.layers), lora_parameters, use_dora=fine_tune_type == "dora")
    if init_adapter is not None:
        _load_adapter_weights(model, Path(init_adapter))
        log(f"continuing adapter {init_adapter} ({fine_tune_type}, rank {lora_parameters['rank']})")
    if cfg.gradient_checkpointing:
        _checkpoint_blocks(model)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    optimizer = optim.AdamW(learning_rate=_schedule(cfg, total), weight_decay=0.0, bias_correction=True)

    curve: list[list[float]] = []
    valid_curve: list[list[float]] = []
    lr_curve: list[list[float]] = []
    trained_tokens, start, resumed_from = 0, 0, None
    monitor = DivergenceMonitor.of(cfg, len(getattr(tokenizer, "_tokenizer", tokenizer)))
    fingerprint = _fingerprint(cfg, enc.examples, init_adapter, base)
    if checkpoints is not None:
        checkpoints = Path(checkpoints)
        checkpoints.mkdir(parents=True, exist_ok=True)
        found = _find_checkpoint(checkpoints, total, fingerprint, log)
        if found is not None:
            path, meta = found
            _load_adapter_weights(model, path)
            optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
            start = resumed_from = meta["step"]
            curve, valid_curve, lr_curve = meta["loss_curve"], meta["valid_curve"], meta["lr_curve"]
            trained_tokens = meta["trained_tokens"]
            log(f"resuming from checkpoint step {start}")
            monitor.replay(curve)  # the resumed run judges its loss as the uninterrupted one would

    value_and_grad = nn.value_and_grad(model, _loss)
    model.train()
    log(f"training {total} steps ({fine_tune_type}, {cfg.method}, {dtype}): {len(enc.examples)} examples in "
        f"{len(batches)} batches of up to {cfg.batch_size}, {accumulation} per step; "
        f"padding efficiency {packing['packing_efficiency']}")
    started = time.time()
    setup_seconds = started - setup_started
    new_tokens, validation_seconds = 0, 0.0
    first = start + 1 if monitor.stopped is None else total + 1  # a restored curve that diverged already: no step
    for step in range(first, total + 1):
        mx.random.seed(cfg.seed * 1_000_003 + step)  # dropout: a pure function of seed and step
        grads, loss_sum, tokens = None, mx.array(0.0), mx.array(0)
        for i in _step_batches(step, len(batches), accumulation, cfg.seed):
            (s, n), g = value_and_grad(model, *_arrays(batches[i], pad_id))
            grads = g if grads is None else tree_map(lambda a, b: a + b, grads, g)
            loss_sum, tokens = loss_sum + s, tokens + n
            mx.eval(grads, loss_sum, tokens)
        grads = tree_map(lambda g: g / tokens.astype(g.dtype), grads)  # token-weighted mean over the whole step
        grads, _ = optim.clip_grad_norm(grads, CLIP_NORM)
        optimizer.update(model, grads)
        mx.eval(model.trainable_parameters(), optimizer.state)
        loss = loss_sum.item() / tokens.item()
        trained_tokens += tokens.item()
        new_tokens += tokens.item()
        curve.append([step, round(loss, 4)])
        lr_curve.append([step, optimizer.learning_rate.item()])  # the rate this step used
        if (diverged := monitor.update(step, loss)) is not None:
            log(f"{diverged.describe()}: stopping")
            break  # before this step's validation and checkpoint
        if step == 1 or step % 10 == 0 or step == total:
            spent = time.time() - started - validation_seconds  # training steps only
            log(f"step {step}/{total}: loss {loss:.4f} ({pace(step - start, total - step, spent, 'steps')})")
        if valid_batches and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
            t = time.time()
            val = _evaluate(model, valid_batches, pad_id, Progress(log, f"step {step}/{total}: validation", "batches"))
            validation_seconds += time.time() - t
            valid_curve.append([step, round(val, 4)])
            log(f"step {step}/{total}: valid loss {val:.4f}")
        if checkpoints is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            _save_checkpoint(checkpoints, step, model, optimizer, {
                "step": step, "total_steps": total, "fingerprint": fingerprint, "seed": cfg.seed,
                "loss_curve": curve, "valid_curve": valid_curve, "lr_curve": lr_curve,
                "trained_tokens": trained_tokens})
    if monitor.stopped is not None:  # diverged: fail, with no adapter and no checkpoint to resume the diverged run from
        if checkpoints is not None:
            _discard_checkpoints(checkpoints)
        raise TrainingDiverged(monitor.stopped, cfg.learning_rate, cfg.divergence_patience)
    seconds = time.time() - started

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (out / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": fine_tune_type, "num_layers": len(model.layers), "lora_parameters": lora_parameters,
        "model": str(base), "method": cfg.method, "base_quantization": quantization, "precision": precision,
        "iters": total, "batch_size": cfg.batch_size, "grad_accumulation_steps": accumulation,
        "learning_rate": cfg.learning_rate, "lr_schedule": cfg.lr_schedule, "max_seq_length": cfg.seq_len,
        "train_on": cfg.train_on, "seed": cfg.seed,
    }, indent=2))
    epochs_run = total / steps_per_epoch
    return {"backend": "mlx", "device": "mlx", "method": cfg.method, "steps": total, "train_samples": len(texts),
            "trainable_parameters": trainable, "loss_curve": curve, "valid_curve": valid_curve,
            "lr_curve": lr_curve, "seconds": round(seconds, 2), "train_on": cfg.train_on, "packed_rows": packing["rows"],
            "packing_efficiency": packing["packing_efficiency"], "epochs_run": round(epochs_run, 3),
            "token_coverage": coverage(enc, epochs_run), "trained_tokens": trained_tokens,
            **({"trained_token_coverage": samples.trained_coverage(enc, epochs_run)} if hasattr(samples, "trained_coverage") else {}),
            "prompt_trimmed": getattr(enc, "prompt_trimmed", 0), "answers_truncated": enc.answers_truncated,
            "trained_tokens_per_second": round(new_tokens / seconds, 1) if seconds else None,
            "samples_split": enc.split, "fim_trimmed": enc.trimmed, "samples_dropped": dict(enc.dropped),
            "resumed_from": resumed_from, "gradient_accumulation": accumulation, "precision": precision,
            "setup_seconds": round(setup_seconds, 2), "validation_seconds": round(validation_seconds, 2),
            "validation_batches": len(valid_batches), "valid_split_batches": all_valid_batches, **peak_memory(),
            "mlx_peak_memory_mb": round(mx.get_peak_memory() / (1 << 20), 1)}


def merge(base: Path, adapter: Path, out: Path) -> None:
    """Fuse an mlx-lm adapter into the base weights and save a Hugging Face-format model to out.

    The base is loaded as saved, so a qlora adapter (trained on a 4-bit copy) fuses into the full-precision
    weights; an MLX-quantized base (mlx-community 4/8-bit) is dequantized (in its scales' dtype) with the adapter
    fused in, and anything else quantized is dequantized before saving.
    """
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
