"""Scores for a language's model: held-out perplexity and FIM exact match, base and adapter alike."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from forge_assets.chat import EOT, FIM_MIDDLE
from forge_assets.training.data import batches, read_texts


def perplexity(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 4) -> tuple[float, int]:
    """Token-weighted perplexity over texts (each truncated to seq_len tokens), and the tokens scored."""
    import torch

    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for ids, mask, labels in batches(tokenizer, texts, seq_len, batch_size):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            n = int((shift_labels != -100).sum())
            total_loss += float(loss)
            total_tokens += n
    if total_tokens == 0:
        return float("nan"), 0
    return math.exp(total_loss / total_tokens), total_tokens


def fim_cases(texts: list[str]) -> list[tuple[str, str]]:
    """(prompt up to <|fim_middle|>, expected middle) for each FIM sample."""
    cases = []
    for t in texts:
        if FIM_MIDDLE in t:
            prompt, _, rest = t.partition(FIM_MIDDLE)
            middle = rest.split(EOT, 1)[0]
            if middle.strip() and "<|fim_prefix|><|fim_suffix|>" not in prompt:  # PSM only: SPM puts prefix after the middle token
                cases.append((prompt + FIM_MIDDLE, middle))
    return cases


def fim_exact_match(model, tokenizer, cases: list[tuple[str, str]], max_new_tokens: int = 48) -> tuple[float | None, float | None]:
    """Share of FIM cases whose generated middle equals the expected one exactly, and on its first line."""
    import torch

    if not cases:
        return None, None
    exact = first = 0
    device = next(model.parameters()).device
    stop = [tokenizer.convert_tokens_to_ids(EOT)]
    for prompt, expected in cases:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -384:].to(device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
        got = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        exact += got.strip() == expected.strip()
        first += got.strip().splitlines()[:1] == expected.strip().splitlines()[:1]
    return exact / len(cases), first / len(cases)


def evaluate(base: Path, adapter: Path, dataset: Path, seq_len: int, max_fim: int = 8) -> dict:
    """Held-out (test split) scores of the base model and of base + adapter."""
    from forge_assets.training import peft_backend
    from forge_assets.training.adapter import adapter_backend, merge_adapter

    texts = read_texts(dataset, "test") or read_texts(dataset, "valid")
    if not texts:
        raise ValueError(f"{dataset}: the test and valid splits are empty, so there is nothing held out to score. Fix: add more code for this language.")
    cases = fim_cases(texts)[:max_fim]
    scores: dict = {"test_samples": len(texts), "fim_cases": len(cases)}
    tmp = None
    try:
        sides = {"base": (base, None)}
        if adapter_backend(adapter) == "peft":
            sides["adapter"] = (base, adapter)
        else:  # an mlx-lm adapter is scored through its fused weights
            tmp = Path(tempfile.mkdtemp(prefix="forge-eval-"))
            merge_adapter(base, adapter, tmp / "merged")
            sides["adapter"] = (tmp / "merged", None)
        for side, (model_dir, peft_dir) in sides.items():
            model, tokenizer = peft_backend.load_model(model_dir, peft_dir)
            ppl, tokens = perplexity(model, tokenizer, texts, seq_len)
            exact, first_line = fim_exact_match(model, tokenizer, cases)
            scores[f"{side}_perplexity"] = round(ppl, 4)
            scores[f"{side}_fim_exact_match"] = exact
            scores[f"{side}_fim_first_line_match"] = first_line
            scores["test_tokens"] = tokens
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    scores["perplexity_ratio"] = round(scores["adapter_perplexity"] / scores["base_perplexity"], 4)
    return scores
