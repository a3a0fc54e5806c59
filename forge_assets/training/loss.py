"""Next-token cross-entropy without the whole batch's logits: memory that does not grow with batch x vocabulary.

A causal LM's forward returns logits for every position of the batch, batch x length x vocabulary floats: 1.2 GB in
fp32 for 2 rows of 1,024 tokens with Qwen's 151,936-token vocabulary, and the loss keeps more of that size for the
backward pass (the log-softmax and the logits' gradient). `summed_loss` instead runs the decoder to its last hidden
states, keeps the positions whose next-token label is not -100, and applies the LM head and the cross-entropy to
about `CHUNK_BYTES` of fp32 logits at a time. When gradients are needed and the head is a frozen linear layer (LoRA
leaves it alone), each chunk's gradient with respect to its hidden states (softmax minus one-hot, times the head's
weight) is computed in the same pass and kept instead of its logits: no more compute than the plain path's backward.
A trainable or wrapped head takes `torch.utils.checkpoint` per chunk instead (the backward recomputes the chunk's
logits). The sums are the plain path's (up to float rounding); positions without a label never reach the head, which
also saves its compute under `train_on: completions`.

Only architectures whose logits are exactly ``lm_head(last_hidden_state)`` take this path (the registry's
`plain_head`, forge_assets/architectures); others
(logit soft-capping or scaling: Gemma 2, Cohere, Granite) and models wrapped for several GPUs take the plain one.
PEFT models work unchanged: the LoRA layers sit inside the decoder's modules, the head is the base model's (tied to
the input embeddings or not).
"""

from __future__ import annotations

import functools

from forge_assets.training.samples import IGNORE

CHUNK_BYTES = 64 << 20  # fp32 logits per chunk: 110 tokens of Qwen's vocabulary, 26,000 of forge-tiny's


def chunk_parts(model):
    """(decoder, lm_head, vocabulary size) of a causal LM (or a PEFT model around one) whose logits are exactly
    ``lm_head(decoder(...).last_hidden_state)``; None for any other model (it takes the plain path)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(lm, "config", None)
    from forge_assets.architectures import lookup

    fam = lookup(getattr(config, "model_type", None))
    if fam is None or not fam.plain_head or getattr(config, "final_logit_softcapping", None):
        return None
    decoder = getattr(lm, "model", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if decoder is None or head is None:
        return None
    return decoder, head, int(config.vocab_size)


def _chunk_loss(head, hidden, targets):
    import torch

    return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


def _frozen_linear(head) -> bool:
    import torch

    return (type(head) is torch.nn.Linear and not head.weight.requires_grad
            and (head.bias is None or not head.bias.requires_grad))


@functools.cache
def _linear_cross_entropy():
    """The autograd Function behind the fused path (built on first use: this module imports no torch at import)."""
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of hidden @ weight.T + bias against targets, a chunk of rows at a time; forward keeps
        d(sum)/d(hidden) (N x H), never logits. The weight and bias get no gradient (a frozen head)."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, step):
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden)
            for i in range(0, hidden.shape[0], step):
                logits = torch.nn.functional.linear(hidden[i:i + step], weight, bias)  # autocast applies as in the plain path
                t = targets[i:i + step]
                lf = logits.float()
                lse = torch.logsumexp(lf, dim=-1)
                total += (lse - lf.gather(1, t[:, None]).squeeze(1)).sum()
                d = torch.exp(lf - lse[:, None])  # softmax; minus one-hot: d(cross-entropy)/d(logits)
                d[torch.arange(t.shape[0], device=t.device), t] -= 1
                del lf, lse  # (logits is lf for an fp32 head)
                grad[i:i + step] = (d.to(logits.dtype) @ weight.to(logits.dtype)).to(hidden.dtype)
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, g):
            (grad,) = ctx.saved_tensors
            return grad * g.to(grad.dtype), None, None, None, None

    return LinearCrossEntropy


def chunked_cross_entropy(hidden, head, targets, vocab_size: int, chunk_tokens: int | None = None):
    """Summed cross-entropy of ``head(hidden)`` (N x H hidden states) against N targets, `chunk_tokens` rows at a
    time (default: about CHUNK_BYTES of fp32 logits). With gradients: fused (gradient taken in the forward pass) for
    a frozen linear head, else each chunk checkpointed (recomputed in the backward pass)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    n = hidden.shape[0]
    if n == 0:
        return hidden.sum() * 0.0  # keeps the graph (and the device) of the batch
    step = chunk_tokens or max(1, CHUNK_BYTES // (4 * vocab_size))
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    if recompute and _frozen_linear(head):
        return _linear_cross_entropy().apply(hidden, head.weight, head.bias, targets, step)
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
