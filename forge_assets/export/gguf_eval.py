"""Score the shipped file: the perplexity of a GGUF through llama.cpp, on the same token ids as its reference.

Both sides score identical token id windows (tokenized once, by the Hugging Face tokenizer), each window on its own,
predicting tokens 1..n-1 from their prefix; the perplexities are token-weighted over all windows. The difference
between the reference's figure (see export/pipeline.py) and the served GGUF's is the loss the export and quantization
cost, in percent.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_FIX = ("Fix: pass texts of at least 2 tokens to token_windows (check that the evaluation split is not empty) "
        "and score the windows it returns.")


def token_windows(tokenizer, texts: list[str], max_tokens: int, max_windows: int | None = None) -> list[list[int]]:
    """Token id lists, one per text (each cut to its first max_tokens tokens, texts under 2 tokens skipped),
    tokenized with the HF tokenizer (add_special_tokens=False). These exact ids are scored by both sides."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens}: a window needs at least 2 tokens to score one prediction. Fix: pass max_tokens >= 2.")
    windows: list[list[int]] = []
    for text in texts:
        if max_windows is not None and len(windows) >= max_windows:
            break
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_tokens]
        if len(ids) >= 2:
            windows.append([int(i) for i in ids])
    return windows


def _check_windows(windows: list[list[int]], who: str) -> None:
    if not windows:
        raise ValueError(f"{who}: no token windows to score, so there is no perplexity to report. {_FIX}")
    short = [i for i, w in enumerate(windows) if len(w) < 2]
    if short:
        raise ValueError(f"{who}: window(s) {short[:5]} hold fewer than 2 tokens and predict nothing. {_FIX}")


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(target) under row-wise softmax, in float64."""
    x = logits.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    log_z = (m[:, 0] + np.log(np.exp(x - m).sum(axis=-1)))
    return float((log_z - x[np.arange(len(targets)), targets]).sum())


def hf_perplexity(model_dir: Path, windows: list[list[int]], adapter: Path | None = None) -> tuple[float, int]:
    """Token-weighted perplexity of a transformers model folder (fp32, CPU), with a PEFT `adapter` applied when given,
    over the windows, each scored on its own, predicting tokens 1..n-1 from their prefix. Returns (perplexity, tokens scored)."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_windows(windows, "hf_perplexity")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for ids in windows:
                logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1]
                total += _nll(logits.float().cpu().numpy(), np.asarray(ids[1:]))
                count += len(ids) - 1
    finally:
        del model
    return math.exp(total / count), count


def gguf_perplexity(gguf: Path, windows: list[list[int]], n_ctx: int | None = None, n_threads: int | None = None,
                    lora: Path | None = None) -> tuple[float, int]:
    """The same figure computed by llama.cpp on a GGUF file (with a LoRA GGUF applied, as the server applies it):
    each window evaluated from an empty cache, the logits of positions 0..n-2 scored against ids[1:].
    Returns (perplexity, tokens scored)."""

    _check_windows(windows, "gguf_perplexity")
    longest = max(len(w) for w in windows)
    n_ctx = n_ctx or longest
    if longest > n_ctx:
        raise ValueError(f"gguf_perplexity: a window of {longest} tokens does not fit n_ctx={n_ctx}. "
                         "Fix: pass a larger n_ctx or cut the windows shorter (token_windows' max_tokens).")
    # n_batch = n_ctx: a window is decoded in one batch, and logits_all keeps every position's logits.
    from forge_assets.export.lora_gguf import open_llama

    llm = open_llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                     n_threads=n_threads, n_threads_batch=n_threads, lora_path=str(lora) if lora else None)
    try:
        n_vocab = llm.n_vocab()
        bad = sorted({i for w in windows for i in w if not 0 <= i < n_vocab})
        if bad:
            # llama.cpp aborts the process on an out-of-range id; refuse before decoding.
            raise ValueError(f"gguf_perplexity: token ids {bad[:5]} are outside {gguf.name}'s vocabulary of {n_vocab}. "
                             "Fix: tokenize with the tokenizer of the model this GGUF was exported from.")
        total, count = 0.0, 0
        for ids in windows:
            llm.reset()
            llm.eval(ids)
            logits = np.array(llm.scores[: len(ids) - 1], dtype=np.float64)
            total += _nll(logits, np.asarray(ids[1:]))
            count += len(ids) - 1
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            close()
        del llm
    return math.exp(total / count), count


def quantization_loss_pct(reference_ppl: float, quantized_ppl: float) -> float:
    """How much higher the quantized perplexity is than the reference, in percent: (quantized/reference - 1) * 100."""
    if not reference_ppl > 0:
        raise ValueError(f"reference perplexity {reference_ppl} is not a positive number. Fix: score the reference model on a non-empty set of windows.")
    return round((quantized_ppl / reference_ppl - 1.0) * 100.0, 3)
