"""Samples that fit seq_len, loss masks, and packing whose loss equals the samples' own (on forge-tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_assets.chat import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END
from forge_assets.mining.fim import header
from forge_assets.mining.instruct import chat_text
from forge_assets.chat import render_chat
from forge_assets.training.samples import IGNORE, Tok, collate, encode, fitting_summary, pack, packing_stats
from forge_assets_tests.conftest import PY_FILES

SRC = PY_FILES["app/handlers.py"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


def _trained_text(tokenizer, ex) -> str:
    return tokenizer.decode([i for i, l in zip(ex.ids, ex.labels) if l != IGNORE])


def test_fim_keeps_the_middle_and_its_end_inside_the_window(tokenizer):
    prefix, middle, suffix = SRC * 6, "    return store.get(key)\n", SRC * 6  # long context on both sides
    for text in (f"{header('r', 'app/h.py')}{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}{EOT}",
                 f"{header('r', 'app/h.py')}{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix[-200:]}{middle}{EOT}"):
        out = encode([text], tokenizer, seq_len=128)
        assert len(out.examples) == 1 and out.trimmed == 1
        ex = out.examples[0]
        assert len(ex.ids) <= 128
        tok = Tok(tokenizer)
        assert tok.special[FIM_MIDDLE] in ex.ids and ex.ids[-1] == tok.special[EOT]
        trained = _trained_text(tokenizer, ex)
        assert trained.endswith(middle + EOT) and FIM_PREFIX not in trained  # only the middle (SPM: prefix + middle)
    # A middle that cannot fit is dropped (counted), never cut.
    out = encode([f"{FIM_PREFIX}a{FIM_SUFFIX}b{FIM_MIDDLE}{SRC * 4}{EOT}"], tokenizer, seq_len=64)
    assert not out.examples and out.dropped["fim_middle_too_long"] == 1


def test_chat_trains_on_answers_and_their_end_token_only(tokenizer):
    text = chat_text("Write `load`.", "```python\ndef load(path):\n    return path\n```")
    ex = encode([text], tokenizer, seq_len=512).examples[0]
    assert tokenizer.decode(ex.ids) == text  # nothing lost or reordered
    assert _trained_text(tokenizer, ex) == "```python\ndef load(path):\n    return path\n```" + IM_END
    ex_all = encode([text], tokenizer, seq_len=512, train_on="all").examples[0]
    assert ex_all.labels == ex_all.ids


def test_long_chats_split_between_exchanges_never_mid_answer(tokenizer):
    messages = []
    for i in range(6):
        messages += [{"role": "user", "content": f"Question {i}: " + "why " * 20},
                     {"role": "assistant", "content": f"Answer {i}: " + "because " * 20}]
    text = render_chat(messages) + EOT
    one = len(Tok(tokenizer)(render_chat(messages[:2])))
    seq_len = int(2.5 * one)  # two exchanges fit, three do not
    out = encode([text], tokenizer, seq_len=seq_len)
    assert len(out.examples) == 3 and out.split == 1 and not out.dropped
    answers = [_trained_text(tokenizer, e) for e in out.examples]
    joined = "".join(answers)
    for i in range(6):  # every answer is trained whole, in exactly one example
        assert joined.count(f"Answer {i}: ") == 1 and f"Answer {i}: " + "because " * 20 + IM_END in joined
    assert all(len(e.ids) <= seq_len for e in out.examples)
    # One exchange longer than the window: with long_answers "drop" it is left out and counted.
    out = encode([chat_text("q", "word " * 400)], tokenizer, seq_len=seq_len, long_answers="drop")
    assert not out.examples and out.dropped["exchange_too_long"] == 1 and out.answers_truncated == 0


def test_long_code_is_cut_between_lines_with_its_head(tokenizer):
    text = header("r", "app/big.py") + SRC * 5 + EOT
    out = encode([text], tokenizer, seq_len=96)
    assert len(out.examples) > 2 and all(len(e.ids) <= 96 for e in out.examples)
    decoded = [tokenizer.decode(e.ids) for e in out.examples]
    assert all(d.startswith(header("r", "app/big.py")) for d in decoded)
    body = "".join(d[len(header("r", "app/big.py")):] for d in decoded)
    assert body == SRC * 5 + EOT  # every line, in order, once
    assert out.kept_tokens >= out.source_tokens  # the head is repeated, nothing dropped


def test_the_fitting_summary_counts_what_was_split_trimmed_and_left_out_and_why(tokenizer):
    long_code = header("r", "app/big.py") + SRC * 5 + EOT
    too_long = chat_text("q", "word " * 400)  # its answer alone is longer than the window: left out
    fim = f"{FIM_PREFIX}{SRC[:2000]}{FIM_SUFFIX}{SRC[2040:4000]}{FIM_MIDDLE}{SRC[2000:2040]}{EOT}"  # context trimmed
    out = encode([long_code, too_long, fim], tokenizer, seq_len=96, long_answers="drop")
    line = fitting_summary(out, 3, 96)
    assert line.startswith(f"fitted 3 train samples to seq_len 96: {len(out.examples)} examples; 1 split ")
    assert "1 FIM contexts trimmed" in line and "0 chat prompts trimmed" in line
    assert "1 pieces left out: 1 x a chat exchange whose answer alone is longer than seq_len (long_answers: drop, or " \
           "too little answer would stay) (exchange_too_long)" in line
    lost = out.source_trainable - out.kept_trainable
    assert lost > 0 and f"{out.lost_tokens:,} of {out.source_tokens:,} tokens in no example, {lost:,} of them loss-bearing" in line
    assert "0 pieces left out;" in fitting_summary(encode([long_code], tokenizer, seq_len=96), 1, 96)
    cut = encode([long_code, too_long, fim], tokenizer, seq_len=96)  # the default: the long answer's start is trained
    line = fitting_summary(cut, 3, 96)
    assert "1 answers longer than seq_len cut between lines (no end token)" in line and "0 pieces left out;" in line
    assert cut.kept_trainable > out.kept_trainable


def test_pack_fills_rows_and_positions_restart(tokenizer):
    texts = [f"{line}\n{EOT}" for t in PY_FILES.values() for line in t.split("\n\n") if line.strip()]
    out = encode(texts, tokenizer, seq_len=256)
    rows = pack(out.examples, 256)
    assert sum(len(r.ids) for r in rows) == sum(len(e.ids) for e in out.examples)
    assert all(len(r.ids) <= 256 for r in rows)
    assert len(rows) < len(out.examples)
    for r in rows:
        starts = [i for i, p in enumerate(r.positions) if p == 0]
        assert all(r.labels[i] == IGNORE for i in starts)
    stats = packing_stats(rows, batch_size=4)
    computed = sum(len(rows[i:i + 4]) * max(len(r.ids) for r in rows[i:i + 4]) for i in range(0, len(rows), 4))
    assert stats["packing_efficiency"] == round(stats["tokens"] / computed, 4)
    many = pack(encode(texts * 40, tokenizer, seq_len=256).examples, 256)
    assert packing_stats(many, batch_size=4)["packing_efficiency"] > 0.95  # short samples fill the rows


def test_packed_loss_equals_the_token_weighted_loss_of_the_samples_one_by_one(tiny_model: Path, tokenizer):
    """Tolerance: 1e-4 relative, float32 on CPU (the same sums in another order)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, local_files_only=True).eval()
    texts = [f"{t}{EOT}" for t in PY_FILES.values()] + [chat_text("Write `load`.", "def load(p):\n    return p")]
    out = encode(texts, tokenizer, seq_len=512)
    rows = pack(out.examples, 512)
    assert any(r.positions.count(0) > 1 for r in rows)  # several samples share a row
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, labels, pos = collate(rows, pad)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False).loss.item()
        total, count = 0.0, 0
        for ex in out.examples:
            x = torch.tensor([ex.ids])
            y = torch.tensor([[IGNORE] + ex.labels[1:]])
            n = int((y[:, 1:] != IGNORE).sum())
            total += model(input_ids=x, labels=y, use_cache=False).loss.item() * n
            count += n
    assert packed == pytest.approx(total / count, rel=1e-4)
    # And the mask matters: the same rows with one causal mask over the whole row give another loss.
    with torch.no_grad():
        crossed = model(input_ids=ids, labels=labels, use_cache=False).loss.item()
    assert abs(crossed - packed) > 1e-3


def test_an_exchange_with_a_long_prompt_keeps_its_answer_and_the_prompts_end(tokenizer):
    """Prompt longer than the window, answer short: the prompt loses its start, the answer stays whole and trained."""
    from forge_assets.training.samples import trained_coverage

    prompt = " ".join(f"w{i}" for i in range(300)) + " QUESTION_END"
    text = chat_text(prompt, "Short answer: use a dict.")
    out = encode([text], tokenizer, seq_len=140)
    assert len(out.examples) == 1 and out.prompt_trimmed == 1 and not out.dropped
    ex = out.examples[0]
    assert len(ex.ids) <= 140
    shown = tokenizer.decode(ex.ids)
    # the system turn stays whole, the user turn keeps its header and its end, its start is cut
    assert shown.startswith("<|im_start|>system\nYou are Qwen") and "<|im_start|>user\n" in shown
    assert "QUESTION_END" in shown and "w0 " not in shown
    assert _trained_text(tokenizer, ex) == "Short answer: use a dict." + IM_END
    assert trained_coverage(out, 1.0) == 1.0  # under `completions` the trimmed prompt was context anyway
    # an answer longer than the window, with long_answers "drop": the exchange is left out, and coverage says so
    long_answer = encode([chat_text("q", "word " * 400)], tokenizer, seq_len=80, long_answers="drop")
    assert not long_answer.examples and long_answer.dropped["exchange_too_long"] == 1
    assert trained_coverage(long_answer, 1.0) == 0.0


def test_an_answer_longer_than_the_window_is_cut_between_lines_with_no_end_token(tokenizer):
    """long_answers "truncate" (the default, as TRL and LLaMA-Factory cut off): the prompt keeps its end within half the
    window, the answer's first whole lines are trained, nothing says it ended; the next exchange starts a window."""
    from forge_assets.training.samples import trained_coverage

    answer = "".join(f"line {i} of the long answer\n" for i in range(120))
    messages = [{"role": "user", "content": " ".join(f"w{i}" for i in range(300)) + " QUESTION_END"},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Done."}]
    out = encode([render_chat(messages) + EOT], tokenizer, seq_len=160)
    assert out.answers_truncated == 1 and not out.dropped and len(out.examples) == 2
    first, second = out.examples
    tok = Tok(tokenizer)
    assert len(first.ids) <= 160 and tok.special[IM_END] not in first.ids[-3:] and tok.special[EOT] not in first.ids
    shown = tokenizer.decode(first.ids)
    assert "QUESTION_END" in shown and "w0 " not in shown  # the prompt lost its start, kept its end
    prompt_tokens = first.labels.index(next(x for x in first.labels if x != IGNORE))
    assert prompt_tokens <= 80 + 3  # at most half the window (the assistant opener follows it)
    trained = _trained_text(tokenizer, first)
    assert trained.startswith("line 0 of the long answer\n") and trained.endswith("of the long answer\n")
    assert answer.startswith(trained) and len(trained) < len(answer)  # whole lines, in order, cut before the end
    assert _trained_text(tokenizer, second) == "Done." + IM_END and second.ids[-1] == tok.special[EOT]
    assert 0 < trained_coverage(out, 1.0) < 1.0
    dropped = encode([render_chat(messages) + EOT], tokenizer, seq_len=160, long_answers="drop")
    assert dropped.dropped["exchange_too_long"] == 1 and trained_coverage(dropped, 1.0) < trained_coverage(out, 1.0)
    with pytest.raises(ValueError, match="long_answers"):
        encode([answer], tokenizer, seq_len=160, long_answers="cut")
