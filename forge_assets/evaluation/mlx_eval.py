"""Scoring through mlx-lm, for a base model only mlx-lm loads: an MLX-quantized one (mlx-lm `convert -q`, the
mlx-community 4-bit and 8-bit models). The base and base + its mlx adapter are scored on their quantized weights, as
they were trained and as `mlx_lm server` serves them; `scores.evaluate` switches to this when the base is one.

Why not a dequantized copy scored by transformers: in bf16 the copy is about 2× (8-bit) to 3.6× (4-bit) the quantized
model on disk, and transformers on a Mac's CPU loads it in fp32 (a 32 B base: 35 GB as mlx holds it in 8 bits, 65 GB
dequantized on disk, 128 GB in memory), which the Mac that trains on a quantized base does not have; and mlx-lm
scores exactly what was trained and what `mlx_lm server` serves.

The figures are the ones transformers' path computes, on the same token ids (the base's Hugging Face tokenizer):

- perplexity: the same right-padded batches (`training.data.batches`) and summed next-token cross-entropy; with
  causal attention, padding after a text changes none of its logits, so no mask is needed;
- generation: greedy, prompts sorted by length and batched with left padding into mlx-lm's `BatchKVCache` (each
  row's positions start at its own first token and its padding is masked, as transformers' generate does with an
  attention mask), stopping at the same tokens (`generate.stop_ids`, and a newline when asked) and cut the same way.

A test holds this path to transformers' on an unquantized float32 model: the same summed loss (relative 1e-5) and
the same greedy texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


class MlxModel:
    """An mlx-lm model (weights as saved, quantized or not; an mlx adapter applied when given) behind the two calls
    scoring makes: `summed_loss` (scores.summed_loss) and `greedy` (generate.greedy) hand over to it."""

    def __init__(self, model, config: dict):
        self.model = model
        self.config = config

    @property
    def context(self) -> int:
        return int(self.config.get("max_position_embeddings") or 2048)

    def summed_loss(self, tokenizer, texts: list[str], seq_len: int, batch_size: int = 4,
                    progress: Callable[[int, int], None] | None = None, per_batch: list | None = None) -> tuple[float, int]:
        """Summed next-token cross-entropy (nats) over texts, each truncated to seq_len tokens, and the tokens scored;
        `progress` gets (batches done, batches), `per_batch` each batch's (summed loss, tokens)."""
        import mlx.core as mx
        import mlx.nn as nn

        from forge_assets.training.data import batches

        total, tokens = 0.0, 0
        padded = list(batches(tokenizer, sorted(texts, key=len), seq_len, batch_size))
        for i, (ids, _mask, labels) in enumerate(padded, 1):
            logits = self.model(mx.array(ids.numpy().astype("int32")))[:, :-1].astype(mx.float32)
            target = mx.array(labels.numpy()[:, 1:].astype("int32"))
            valid = target != -100
            loss = (nn.losses.cross_entropy(logits, mx.where(valid, target, 0)) * valid).sum()
            count = valid.sum()
            mx.eval(loss, count)
            total, tokens = total + loss.item(), tokens + count.item()
            if per_batch is not None:
                per_batch.append((float(loss.item()), int(count.item())))
            if progress:
                progress(i, len(padded))
        return total, tokens

    def greedy(self, tokenizer, prompts: list[str], max_new_tokens: int, *, batch_size: int = 8, stop_at_newline: bool = False,
               progress: Callable[[int, int], None] | None = None) -> list[str]:
        """generate.greedy's contract: the greedy completion of each prompt, cut at the first stop token (or padding)."""
        import mlx.core as mx
        import numpy as np
        from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

        from forge_assets.evaluation.generate import newline_ids, stop_ids

        if not prompts:
            return []
        if not all(type(c) is KVCache for c in make_prompt_cache(self.model)):
            batch_size = 1  # a sliding-window (rotating) cache: one prompt at a time, so no padding
        limit = self.context - max_new_tokens
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"][-max(1, limit):] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        stops = set(stop_ids(tokenizer))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
        newline = newline_ids(tokenizer) if stop_at_newline else frozenset()
        ends = stops | {pad}
        out: list[str] = [""] * len(prompts)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = np.full((len(rows), width), pad, dtype=np.int32)
            for j, i in enumerate(rows):
                ids[j, width - len(encoded[i]):] = encoded[i]
            if batch_size == 1:
                cache = make_prompt_cache(self.model)
            else:
                cache = [BatchKVCache([width - len(encoded[i]) for i in rows]) for _ in self.model.layers]
            logits = self.model(mx.array(ids), cache=cache)[:, -1]
            new: list[list[int]] = [[] for _ in rows]
            done = [False] * len(rows)
            for step in range(max_new_tokens):
                nxt = mx.argmax(logits, axis=-1)
                for j, t in enumerate(nxt.tolist()):
                    if not done[j]:
                        new[j].append(t)
                        done[j] = t in stops or t in newline
                if all(done) or step == max_new_tokens - 1:
                    break
                logits = self.model(nxt[:, None].astype(mx.int32), cache=cache)[:, -1]
            for j, i in enumerate(rows):
                cut = next((k for k, t in enumerate(new[j]) if t in ends), len(new[j]))
                out[i] = tokenizer.decode(new[j][:cut], skip_special_tokens=False)
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
        return out


def load_model(base: Path, adapter: Path | None = None):
    """(MlxModel, the base's Hugging Face tokenizer): mlx-lm's model of base as saved (an MLX-quantized base stays
    quantized), with the mlx-lm adapter folder `adapter` applied when given."""
    from mlx_lm.utils import load_adapters
    from mlx_lm.utils import load_model as mlx_load_model
    from transformers import AutoTokenizer

    from forge_assets.training.mlx_backend import _model_config

    base = Path(base)
    if adapter is not None and not (Path(adapter) / "adapters.safetensors").is_file():
        raise ValueError(f"{adapter}: not an mlx-lm adapter folder (adapters.safetensors), and {base} is scored through "
                         "mlx-lm. Fix: train the adapter with training.backend: mlx (or auto).")
    model, config = mlx_load_model(base, model_config=_model_config(base))
    if adapter is not None:
        model = load_adapters(model, str(adapter))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tokenizer.pad_token_id is None:  # as peft_backend.load_model: the same padding, so the same batches
        tokenizer.pad_token = tokenizer.unk_token or "<|fim_pad|>"
    return MlxModel(model, config), tokenizer
