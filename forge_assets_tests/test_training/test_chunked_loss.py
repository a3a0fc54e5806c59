"""Chunked cross-entropy (training/loss.py) gives the plain path's loss and gradients, in training and validation."""

from pathlib import Path

import pytest

from forge_assets.config import TrainingConfig
from forge_assets.training import loss as chunked
from forge_assets.training import peft_backend
from forge_assets.training.data import read_texts
from forge_assets.training.samples import IGNORE, Example, Row, collate


def _lora_model(tied: bool, seed: int = 0):
    """A small random Qwen2 with LoRA on its projections, lora_B made non-zero so every LoRA weight gets a gradient."""
    import torch
    from peft import get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied, use_sliding_window=False)
    model = get_peft_model(Qwen2ForCausalLM(config), peft_backend.lora_config(TrainingConfig(rank=4, alpha=8)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.train()


def _packed_batch():
    """Two packed rows (position ids restarting per example, first label of each -100, some context unlabeled), one padded."""
    import random

    rng = random.Random(1)

    def example(n, context):
        ids = [rng.randrange(300) for _ in range(n)]
        return Example(ids, [IGNORE] * context + ids[context:])

    rows = [Row(), Row()]
    for e in (example(20, 5), example(14, 0), example(9, 3)):
        rows[0].add(e)
    rows[1].add(example(30, 10))
    return collate(rows, pad_id=0)


def _lora_grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("tied,head", [(True, "frozen"), (False, "frozen"), (True, "trained"), (False, "trained")])
def test_chunked_loss_and_lora_gradients_equal_the_plain_forward(tied: bool, head: str):
    """A frozen head (LoRA's case) takes the fused path, a trained one the checkpointed path: both give the plain grads."""
    import torch

    model = _lora_model(tied)
    model.get_output_embeddings().weight.requires_grad_(head == "trained")
    ids, labels, pos = _packed_batch()
    n_items = int((labels[:, 1:] != IGNORE).sum())

    # The plain path exactly as Trainer.compute_loss runs it: the model's own loss, normalized by num_items_in_batch.
    plain = model(input_ids=ids, position_ids=pos, labels=labels, num_items_in_batch=torch.tensor(n_items), use_cache=False).loss
    plain.backward()
    want = _lora_grads(model)
    model.zero_grad()

    assert chunked.chunk_parts(model) is not None
    total, n = chunked.summed_loss(model, ids, labels, position_ids=pos, chunk_tokens=7)  # 7: several chunks, one ragged
    assert n == n_items
    assert (type(total.grad_fn).__name__ == "LinearCrossEntropyBackward") == (head == "frozen")  # the path taken
    (total / n).backward()
    got = _lora_grads(model)

    assert float(total / n) == pytest.approx(float(plain), abs=1e-5)
    assert want.keys() == got.keys() and len(want) > 0
    assert any("lora_" not in k for k in want) == (head == "trained")  # the head (or the embedding tied to it) too
    assert all(want[k].abs().sum() > 0 for k in want)  # the comparison is not between zeros
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head", ["frozen", "trained"])
def test_no_logits_are_kept_for_the_backward_pass(head: str):
    """With grads on, no chunk's logits (chunk x vocabulary) stay saved for the backward pass: the fused path keeps
    the gradient of the hidden states, the checkpointed one rebuilds the logits chunk by chunk."""
    import torch

    model = _lora_model(tied=True)
    model.get_output_embeddings().weight.requires_grad_(head == "trained")
    ids, labels, pos = _packed_batch()
    vocab = model.config.vocab_size
    saved: list[tuple] = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _ = chunked.summed_loss(model, ids, labels, position_ids=pos, chunk_tokens=8)
    assert not any(s and s[-1] == vocab for s in saved), saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), reduction="sum")
    assert any(s and s[-1] == vocab for s in saved)  # the plain path does keep them: the check above can fail


def test_bf16_autocast_gives_the_plain_loss_and_gradients_within_bf16_rounding():
    """As training runs on a CUDA GPU (bf16 autocast), here on CPU's autocast: the head's matmuls in bf16 on both paths."""
    import torch

    model = _lora_model(tied=True)
    ids, labels, pos = _packed_batch()
    n = int((labels[:, 1:] != IGNORE).sum())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids, position_ids=pos, labels=labels, num_items_in_batch=torch.tensor(n), use_cache=False).loss
    plain.backward()
    want = _lora_grads(model)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = chunked.summed_loss(model, ids, labels, position_ids=pos, chunk_tokens=7)
    (total / n).backward()
    got = _lora_grads(model)
    assert float(total / n) == pytest.approx(float(plain), rel=1e-3)
    for k in want:
        assert want[k].abs().sum() > 0 and got[k].dtype == want[k].dtype
        torch.testing.assert_close(got[k], want[k], atol=2e-3, rtol=3e-2)


def test_validation_batch_loss_chunked_equals_plain():
    model = _lora_model(tied=True).eval()
    ids, labels, pos = _packed_batch()
    a, n = chunked.summed_loss(model, ids, labels, position_ids=pos, chunk_tokens=5)
    b, m = chunked.summed_loss(model, ids, labels, position_ids=pos, chunked=False)
    assert n == m and float(a) == pytest.approx(float(b), rel=1e-5)


def test_an_unknown_architecture_takes_the_plain_path():
    class Wrapped:  # e.g. a model wrapped for several GPUs: no config, no decoder to reach
        pass

    assert chunked.chunk_parts(Wrapped()) is None


@pytest.mark.slow
def test_training_with_chunked_loss_follows_the_trainer_loss_with_accumulation(tiny_model: Path, tiny_dataset: Path, tmp_path: Path):
    """Same steps, same gradient accumulation: the chunked loss (Trainer.compute_loss overridden) and the Trainer's own
    loss give the same loss curve, so normalization over num_items_in_batch matches."""
    texts = read_texts(tiny_dataset, "train")
    cfg = TrainingConfig(backend="peft", rank=4, alpha=8, learning_rate=0.005, batch_size=2, seq_len=96, max_steps=3,
                         gradient_accumulation=2, checkpoint_every=None)
    a = peft_backend.train(tiny_model, texts, [], tmp_path / "a", cfg, log=lambda *_: None)
    b = peft_backend.train(tiny_model, texts, [], tmp_path / "b", cfg, log=lambda *_: None, chunked_loss=False)
    assert a["loss"] == "chunked" and b["loss"] == "plain"
    assert [s for s, _ in a["loss_curve"]] == [1, 2, 3]
    for (_, x), (_, y) in zip(a["loss_curve"], b["loss_curve"]):
        assert x == pytest.approx(y, abs=2e-4)
    assert a["peak_rss_mb"] > 50 and b["peak_rss_mb"] > 50


def test_eval_perplexity_loss_is_the_plain_one(tiny_model: Path, monkeypatch):
    """scores.summed_loss (padded batches with an attention mask) through the chunked path, several chunks a batch."""
    import torch

    from forge_assets.evaluation.scores import summed_loss
    from forge_assets.training.data import batches

    from ..conftest import PY_FILES

    model, tokenizer = peft_backend.load_model(tiny_model)
    assert chunked.chunk_parts(model) is not None
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * model.config.vocab_size * 7)  # 7 tokens a chunk
    texts = list(PY_FILES.values()) + ["def f(x):\n    return x\n"]
    got, n = summed_loss(model, tokenizer, texts, 64, batch_size=2)
    want, m = 0.0, 0
    with torch.no_grad():
        for ids, mask, labels in batches(tokenizer, sorted(texts, key=len), 64, 2):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            want += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                            ignore_index=IGNORE, reduction="sum"))
            m += int((labels[:, 1:] != IGNORE).sum())
    assert n == m > 64 and got == pytest.approx(want, rel=1e-5)
