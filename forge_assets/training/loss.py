"""Next-token cross-entropy without the whole batch's logits: memory that does not grow with batch x vocabulary.

A causal LM's forward returns logits for every position of the batch, batch x length x vocabulary floats: 1.2 GB in
fp32 for 2 rows of 1,024 tokens with Qwen's 151,936-token vocabulary, and the loss keeps more of that size for the
backward pass (the log-softmax and the logits' gradient). `summed_loss` instead runs the decoder to its last hidden
states, keeps the positions whose next-token label is not -100, and applies the LM head and the cross-entropy to
about `CHUNK_BYTES` of fp32 logits at a time. When gradients are needed each chunk is checkpointed
(`torch.utils.checkpoint`), so the backward pass recomputes that chunk's logits instead of keeping them. The sums
are the plain path's (up to float rounding); positions without a label never reach the head, which also saves its
compute under `train_on: completions`.

Only architectures whose logits are exactly ``lm_head(last_hidden_state)`` take this path (`CHUNKED_TYPES`); others
(logit soft-capping or scaling: Gemma 2, Cohere, Granite) and models wrapped for several GPUs take the plain one.
PEFT models work unchanged: the LoRA layers sit inside the decoder's modules, the head is the base model's (tied to
the input embeddings or not).
"""

from __future__ import annotations

from forge_assets.training.samples import IGNORE

CHUNKED_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
CHUNK_BYTES = 64 << 20  # fp32 logits per chunk: 110 tokens of Qwen's vocabulary, 26,000 of forge-tiny's


def chunk_parts(model):
    """(decoder, lm_head, vocabulary size) of a causal LM (or a PEFT model around one) whose logits are exactly
    ``lm_head(decoder(...).last_hidden_state)``; None for any other model (it takes the plain path)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in CHUNKED_TYPES or getattr(config, "final_logit_softcapping", None):
        return None
    decoder = getattr(lm, "model", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if decoder is None or head is None:
        return None
    return decoder, head, int(config.vocab_size)


def _chunk_loss(head, hidden, targets):
    import torch

    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(hidden, head, targets, vocab_size: int, chunk_tokens: int | None = None):
    """Summed cross-entropy of ``head(hidden)`` (N x H hidden states) against N targets, `chunk_tokens` rows at a
    time (default: about CHUNK_BYTES of fp32 logits), each chunk recomputed in the backward pass when grads flow."""
    import torch
    from torch.utils.checkpoint import checkpoint

    n = hidden.shape[0]
    if n == 0:
        return hidden.sum() * 0.0  # keeps the graph (and the device) of the batch
    step = chunk_tokens or max(1, CHUNK_BYTES // (4 * vocab_size))
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    total = None
    for i in range(0, n, step):
        h, t = hidden[i:i + step], targets[i:i + step]
        part = checkpoint(_chunk_loss, head, h, t, use_reentrant=False) if recompute else _chunk_loss(head, h, t)
        total = part if total is None else total + part
    return total


def summed_loss(model, input_ids, labels, *, position_ids=None, attention_mask=None, chunked: bool = True,
                chunk_tokens: int | None = None):
    """(summed next-token cross-entropy as a 0-d tensor, number of scored tokens) of one batch.

    `labels` are aligned with `input_ids` as transformers takes them (position t is scored on labels[:, t + 1]; -100
    is not scored). `chunked=False`, or a model `chunk_parts` does not know, computes the whole batch's logits.
    """
    import torch

    targets = labels[:, 1:].to(input_ids.device)
    keep = targets != IGNORE
    count = int(keep.sum())
    inputs = {"input_ids": input_ids, "use_cache": False}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    parts = chunk_parts(model) if chunked else None
    if parts is None:
        logits = model(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum")
        return loss, count
    decoder, head, vocab = parts
    hidden = decoder(**inputs).last_hidden_state[:, :-1][keep]
    return chunked_cross_entropy(hidden, head, targets[keep], vocab, chunk_tokens), count
