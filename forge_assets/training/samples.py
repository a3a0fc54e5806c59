"""Dataset texts as training examples that fit `seq_len`, with loss masks, packed without cross-contamination.

Each dataset record's `text` is one of three shapes (written by `mining/`):

- FIM: ``[head]<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M<|endoftext|>`` (PSM), or
  ``[head]<|fim_prefix|><|fim_suffix|>S<|fim_middle|>PM<|endoftext|>`` (SPM);
- chat (instruction, commit, code change, synthetic, session): ChatML messages ending with ``<|endoftext|>``;
- code: ``[head]code<|endoftext|>``; head is ``<|repo_name|>repo\\n<|file_sep|>path\\n``.

These are Forge's canonical markers (Qwen2.5-Coder's tokens). `Tok` writes them as the base's own tokens
(``forge_assets.fim_tokens``: StarCoder's ``<fim_prefix>``, CodeLlama's ``▁<PRE>``, DeepSeek's ``<｜fim▁begin｜>``, the
base's repository/file tokens or no header), each as its single id; a marker the base has no token for becomes
nothing, never an unknown id. A FIM text for a base without FIM tokens is dropped (``no_fim_tokens``).

`encode` turns one text into examples of at most `seq_len` tokens, each with labels (-100 = no loss):

- FIM keeps the middle and its end token whole and trims the prefix from the left and the suffix from the
  right, within a *token* budget, so ``<|fim_middle|>`` and the middle are always inside the window;
- chat is cut between exchanges (an exchange starts at a user turn that follows an assistant turn); an exchange
  longer than `seq_len` loses the start of its prompt first; when its answer alone does not fit either, it is cut
  between lines with no ``<|im_end|>`` (the model never learns to stop there) after a prompt of at most half the
  window (``long_answers="truncate"``, TRL's and LLaMA-Factory's cut-off), or left out (``"drop"``);
- code is cut between lines, each piece keeping the head.

With ``train_on="completions"`` the loss covers assistant answers with their ``<|im_end|>``, the FIM middle
with its ``<|endoftext|>``, and code (not its head); with ``"all"`` every token but padding.

`pack` places examples into rows of at most `seq_len` tokens (first-fit decreasing). Position ids restart
at 0 for every example, and the first label of each is -100, so with ``attention_mask=None`` transformers
builds a block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``):
attention never crosses examples, and neither does the loss. This module imports no torch and no Dagster.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from forge_assets.chat import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END, IM_START, SPECIAL_TOKENS

IGNORE = -100
_HEAD = re.compile(r"^(<\|repo_name\|>[^\n]*\n)?(<\|file_sep\|>[^\n]*\n)?")


@dataclass
class Example:
    """One training sequence: token ids and labels (IGNORE where no loss is taken)."""

    ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE)  # the first label never counts in a packed row


@dataclass
class Encoded:
    """A whole split encoded: its examples and what fitting did."""

    examples: list[Example] = field(default_factory=list)
    source_tokens: int = 0  # tokens of the texts as written
    kept_tokens: int = 0  # tokens that made it into examples
    lost_tokens: int = 0  # source tokens in no example: trimmed FIM context, dropped pieces
    dropped: Counter = field(default_factory=Counter)  # pieces left out, by reason
    split: int = 0  # texts cut into more than one example
    trimmed: int = 0  # FIM samples whose context was trimmed
    prompt_trimmed: int = 0  # exchanges longer than seq_len whose prompt lost its start (the answer kept whole)
    answers_truncated: int = 0  # exchanges whose answer alone was longer than seq_len, cut between lines
    source_trainable: int = 0  # tokens that would carry a loss (under train_on) if nothing had to fit seq_len
    kept_trainable: int = 0  # tokens that carry a loss in the examples


class Tok:
    """Tokenizes text pieces in Forge's canonical markup for one base: every canonical marker becomes the base's own
    token (its FIM scheme, ``fim_tokens``) as its single id, or nothing when the base has no such token; no merges
    across them. `special` maps each canonical marker to the base's id, or None."""

    def __init__(self, tokenizer, scheme=None):
        from forge_assets.fim_tokens import scheme_of_tokenizer

        self.tokenizer = tokenizer
        self.scheme = scheme or scheme_of_tokenizer(tokenizer)
        self.ids = self.scheme.token_ids(tokenizer)  # the base's token strings -> ids
        self.special = {t: self.ids.get(self.scheme.marker(t)) for t in SPECIAL_TOKENS}
        self.fim_end = self.ids.get(self.scheme.middle_end)  # what a FIM middle ends with (CodeLlama: ▁<EOT>)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.ids, key=len, reverse=True)) + ")") if self.ids else None
        self.memo: dict[str, list[int]] = {}  # encode() tokenizes each text twice (unfitted, then fitted)

    def __call__(self, text: str) -> list[int]:
        if (hit := self.memo.get(text)) is not None:
            return hit
        out = self._encode(text)
        self.memo[text] = out
        return out

    def _encode(self, text: str) -> list[int]:
        out: list[int] = []
        text = self.scheme.to_base(text)
        for piece in self._split.split(text) if self._split else [text]:
            if not piece:
                continue
            if piece in self.ids:
                out.append(self.ids[piece])
            else:
                out.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return out


def _ex(parts: list[tuple[list[int], bool]], train_on: str) -> Example:
    ids, labels = [], []
    for toks, train in parts:
        ids += toks
        labels += toks if (train or train_on == "all") else [IGNORE] * len(toks)
    return Example(ids, labels)


def _split_head(text: str) -> tuple[str, str]:
    m = _HEAD.match(text)
    return text[: m.end()], text[m.end():]


def encode_fim(text: str, tok: Tok, seq_len: int, train_on: str, out: Encoded) -> None:
    head, body = _split_head(text)
    if body.endswith(EOT):
        body = body[: -len(EOT)]
    before, _, after = body.partition(FIM_MIDDLE)  # after: the middle (PSM) or prefix + middle (SPM)
    prefix, _, suffix = before[len(FIM_PREFIX):].partition(FIM_SUFFIX)
    sp = tok.special
    if None in (sp[FIM_PREFIX], sp[FIM_SUFFIX], sp[FIM_MIDDLE]):  # the base has no FIM tokens (read_records drops these first)
        out.dropped["no_fim_tokens"] += 1
        out.lost_tokens += len(tok(text))
        return
    h, p, s, m = tok(head), tok(prefix), tok(suffix), tok(after)
    end = [tok.fim_end] if tok.fim_end is not None else []
    fixed = len(h) + 3 + len(m) + len(end)  # head, the three FIM tokens, the middle and its end token
    if fixed > seq_len:
        out.dropped["fim_middle_too_long"] += 1
        out.lost_tokens += fixed + len(p) + len(s)
        return
    room = seq_len - fixed
    if len(p) + len(s) > room:  # share the room; a short side leaves the rest to the other
        keep_s = min(len(s), max(room // 2, room - len(p)))
        keep_p = min(len(p), room - keep_s)
        out.lost_tokens += len(p) - keep_p + len(s) - keep_s
        p, s = p[len(p) - keep_p:], s[:keep_s]
        out.trimmed += 1
    out.examples.append(_ex([(h + [sp[FIM_PREFIX]] + p + [sp[FIM_SUFFIX]] + s + [sp[FIM_MIDDLE]], False),
                             (m + end, True)], train_on))


def _messages(body: str) -> list[tuple[str, str]]:
    """(role, the message's whole rendered text) in order; the text includes its trailing newline."""
    msgs = []
    for chunk in body.split(IM_START)[1:]:
        role = chunk.split("\n", 1)[0]
        msgs.append((role, IM_START + chunk))
    return msgs


def encode_chat(text: str, tok: Tok, seq_len: int, train_on: str, out: Encoded, long_answers: str = "truncate") -> None:
    head, body = _split_head(text)
    tail_eot = body.endswith(EOT)
    if tail_eot:
        body = body[: -len(EOT)]
    exchanges: list[list[tuple[list[int], bool]]] = []
    prev_role = None
    for role, msg in _messages(body):
        if role == "assistant":
            opener = f"{IM_START}assistant\n"
            content, _, rest = msg[len(opener):].partition(IM_END)
            parts = [(tok(opener), False), (tok(content + IM_END), True), (tok(rest), False)]
        else:
            parts = [(tok(msg), False)]
        if not exchanges or (role != "assistant" and prev_role == "assistant"):
            exchanges.append([])
        exchanges[-1] += parts
        prev_role = role
    h = tok(head)
    end = [tok.special[EOT]] if tail_eot and tok.special[EOT] is not None else []
    chunks: list[list[tuple[list[int], bool]]] = []
    unfinished: set[int] = set()  # chunks ending in a cut answer: no end token after it
    size = 0
    for whole in exchanges:
        n = sum(len(t) for t, _ in whole)
        ex = whole
        if len(h) + n + len(end) > seq_len:
            ex = _trim_prompt(whole, len(h) + n + len(end) - seq_len, tok)
            if ex is None and long_answers == "truncate":
                ex = _truncate_answer(whole, seq_len - len(h), tok)
                if ex is not None:
                    out.answers_truncated += 1
                    out.lost_tokens += n - sum(len(t) for t, _ in ex)
                    chunks.append([(h, False)] + ex)  # it fills its window: a chunk of its own
                    unfinished.add(len(chunks) - 1)
                    size = seq_len
                    continue
            if ex is None:
                out.dropped["exchange_too_long"] += 1
                out.lost_tokens += n
                continue
            out.prompt_trimmed += 1
            out.lost_tokens += n - sum(len(t) for t, _ in ex)
            n = sum(len(t) for t, _ in ex)
        if chunks and len(chunks) - 1 not in unfinished and size + n + len(end) <= seq_len:
            chunks[-1] += ex
            size += n
        else:
            chunks.append([(h, False)] + ex)
            size = len(h) + n
    if len(chunks) > 1:
        out.split += 1
    for i, parts in enumerate(chunks):
        out.examples.append(_ex(parts + ([(end, False)] if end and i not in unfinished else []), train_on))


_MIN_ANSWER = 16  # answer tokens a cut exchange must keep to be worth a window


def _truncate_answer(ex: list[tuple[list[int], bool]], room: int, tok: Tok) -> list[tuple[list[int], bool]] | None:
    """An exchange whose answer alone does not fit `room` tokens: its prompt trimmed to at most half of room (its start
    goes, as in _trim_prompt), then its pieces in order up to the first that does not fit; an answer piece there is
    cut after its last whole line that fits (within a token budget; a single longer line is cut between tokens), with
    no ``<|im_end|>``. None when fewer than _MIN_ANSWER answer tokens would stay or the prompt cannot be trimmed."""
    first_answer = next((i for i, (_, tr) in enumerate(ex) if tr), len(ex))
    prompt = ex[:first_answer]
    p = sum(len(t) for t, _ in prompt)
    if p > room // 2:
        prompt = _trim_prompt(prompt, p - room // 2, tok)
        if prompt is None:
            return None
        p = sum(len(t) for t, _ in prompt)
    kept, budget, answer = list(prompt), room - p, 0
    for toks, trained in ex[first_answer:]:
        if len(toks) <= budget:
            kept.append((toks, trained))
            budget -= len(toks)
            answer += len(toks) if trained else 0
            continue
        if trained and budget > 0:
            cut = _cut_between_lines(toks, budget, tok)
            kept.append((cut, True))
            answer += len(cut)
        break
    return kept if answer >= _MIN_ANSWER else None


def _cut_between_lines(toks: list[int], budget: int, tok: Tok) -> list[int]:
    """The longest prefix of toks within budget that ends a line, re-tokenized as the text it decodes to; the first
    budget tokens when no line ends inside them."""
    text = tok.tokenizer.decode(toks[:budget])
    end = text.rfind("\n")
    while end >= 0:
        cut = tok(text[: end + 1])
        if len(cut) <= budget:
            return cut
        end = text.rfind("\n", 0, end)
    return toks[:budget]


def _trim_prompt(ex: list[tuple[list[int], bool]], overflow: int, tok: Tok) -> list[tuple[list[int], bool]] | None:
    """An exchange shortened by `overflow` tokens, answers untouched; None when its prompt cannot give that much.

    Only message bodies are cut, from their start: each message keeps its ``<|im_start|>role`` line and its
    ``<|im_end|>``. User and tool turns are cut first (their ends, nearest the answer, stay), the system turn last,
    so the model still sees the system prompt it is served with.
    """
    first_answer = next((i for i, (_, tr) in enumerate(ex) if tr), len(ex))
    if first_answer == 0:
        return None
    parts = [list(p) for p in ex]
    pieces = {i: _message_pieces(parts[i][0], tok) for i in range(first_answer)}
    order = sorted(pieces, key=lambda i: (tok.tokenizer.decode(parts[i][0][1:2]) == "system", i))
    cut = overflow
    for i in order:
        head, body, tail = pieces[i]
        drop = min(cut, len(body))
        if drop:
            parts[i][0] = head + body[drop:] + tail
            cut -= drop
        if not cut:
            return [(t, tr) for t, tr in parts if t]
    return None


def _message_pieces(toks: list[int], tok: Tok) -> tuple[list[int], list[int], list[int]]:
    """A rendered message's tokens as (``<|im_start|>role\\n`` line, body, ``<|im_end|>\\n`` tail); no header or tail
    when the piece has none (an assistant opener, a continuation)."""
    header = 0
    if toks[:1] == [tok.special[IM_START]]:
        header = 1
        while header < min(len(toks), 8) and "\n" not in tok.tokenizer.decode(toks[header:header + 1]):
            header += 1
        header += 1
    end = len(toks)
    if tok.special[IM_END] in toks[header:]:
        end = len(toks) - 1 - toks[::-1].index(tok.special[IM_END])
    return toks[:header], toks[header:end], toks[end:]


def encode_code(text: str, tok: Tok, seq_len: int, train_on: str, out: Encoded) -> None:
    head, body = _split_head(text)
    tail_eot = body.endswith(EOT)
    if tail_eot:
        body = body[: -len(EOT)]
    h = tok(head)
    room = seq_len - len(h) - 1
    if room < 8:
        out.dropped["head_too_long"] += 1
        out.lost_tokens += len(tok(text))
        return
    pieces: list[list[int]] = [[]]
    for line in body.splitlines(keepends=True):
        t = tok(line)
        while len(t) > room:  # a single line longer than the window: cut it (rare: minified code is filtered)
            if pieces[-1]:
                pieces.append([])
            pieces[-1] = t[:room]
            pieces.append([])
            t = t[room:]
        if len(pieces[-1]) + len(t) > room:
            pieces.append([])
        pieces[-1] += t
    pieces = [p for p in pieces if p]
    if len(pieces) > 1:
        out.split += 1
    for i, p in enumerate(pieces):
        end = [tok.special[EOT]] if (tail_eot and i == len(pieces) - 1 and tok.special[EOT] is not None) else []
        out.examples.append(_ex([(h, False), (p + end, True)], train_on))


def encode(texts: list[str], tokenizer, seq_len: int, train_on: str = "completions", long_answers: str = "truncate") -> Encoded:
    """Every text as examples of at most seq_len tokens (see the module docstring)."""
    if train_on not in ("completions", "all"):
        raise ValueError(f"training.train_on is {train_on!r}. Fix: use `completions` or `all`.")
    if long_answers not in ("truncate", "drop"):
        raise ValueError(f"training.long_answers is {long_answers!r}. Fix: use `truncate` or `drop`.")
    tok = Tok(tokenizer)
    out = Encoded()
    for text in texts:
        before = len(out.examples)
        out.source_tokens += len(tok(text))
        whole = Encoded()  # the same text with no length limit: which tokens would carry a loss
        _encode_one(text, tok, 1 << 30, train_on, whole, long_answers)
        out.source_trainable += sum(e.trained for e in whole.examples)
        _encode_one(text, tok, seq_len, train_on, out, long_answers)
        out.kept_tokens += sum(len(e.ids) for e in out.examples[before:])
    out.examples = [e for e in out.examples if len(e.ids) > 1 and e.trained > 0]
    out.kept_trainable = sum(e.trained for e in out.examples)
    return out


def _encode_one(text: str, tok: Tok, seq_len: int, train_on: str, out: Encoded, long_answers: str = "truncate") -> None:
    if FIM_MIDDLE in text:
        encode_fim(text, tok, seq_len, train_on, out)
    elif IM_START in text:
        encode_chat(text, tok, seq_len, train_on, out, long_answers)
    else:
        encode_code(text, tok, seq_len, train_on, out)


DROP_REASONS = {  # why `encode` left a piece out, as the training log says it
    "exchange_too_long": "a chat exchange whose answer alone is longer than seq_len (long_answers: drop, or too little "
                         "answer would stay)",
    "fim_middle_too_long": "a FIM middle longer than seq_len",
    "head_too_long": "a code sample whose repo/path head leaves no room in seq_len",
    "no_fim_tokens": "a FIM sample for a base without FIM tokens",
}


def fitting_summary(enc: Encoded, texts: int, seq_len: int) -> str:
    """One log line: what fitting `texts` samples to seq_len did (split, trimmed, left out and why, tokens lost and the
    loss-bearing coverage), so no sample is left out silently."""
    parts = [f"{enc.split} split (code between lines, chats between exchanges)", f"{enc.trimmed} FIM contexts trimmed",
             f"{enc.prompt_trimmed} chat prompts trimmed (answers whole)",
             f"{enc.answers_truncated} answers longer than seq_len cut between lines (no end token)"]
    gone = sum(enc.dropped.values())
    parts.append(f"{gone} pieces left out" + (": " + "; ".join(f"{n} x {DROP_REASONS.get(k, k)} ({k})"
                                                               for k, n in sorted(enc.dropped.items())) if gone else ""))
    lost_trainable = enc.source_trainable - enc.kept_trainable
    return (f"fitted {texts} train samples to seq_len {seq_len}: {len(enc.examples)} examples; " + ", ".join(parts) +
            f"; {enc.lost_tokens:,} of {enc.source_tokens:,} tokens in no example, {max(0, lost_trainable):,} of them "
            f"loss-bearing (trained-token coverage {trained_coverage(enc, 1.0)})")


def trained_coverage(enc: Encoded, epochs_done: float) -> float:
    """Loss-bearing coverage: tokens trained per epoch / tokens the train_on rule puts a loss on, times epochs (at most 1).

    Under `completions` a trimmed prompt costs nothing here (it is context either way); a dropped answer, or the part of
    a cut answer past seq_len, does.
    """
    if not enc.source_trainable:
        return 0.0
    return round(min(1.0, epochs_done) * min(1.0, enc.kept_trainable / enc.source_trainable), 4)


def coverage(enc: Encoded, epochs_done: float) -> float:
    """Trained-token coverage: the share of the split's tokens that one epoch trains on, times the epochs run (at most 1)."""
    if not enc.source_tokens:
        return 0.0
    return round(min(1.0, epochs_done) * (enc.source_tokens - enc.lost_tokens) / enc.source_tokens, 4)


@dataclass
class Row:
    """One packed sequence: ids, labels and position ids restarting at every example."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, ex: Example) -> None:
        self.ids += ex.ids
        self.labels += [IGNORE] + ex.labels[1:]  # no example is predicted from the one before it
        self.positions += list(range(len(ex.ids)))


def pack(examples: list[Example], seq_len: int) -> list[Row]:
    """First-fit decreasing: rows of at most seq_len tokens, longest first (batch neighbours; shuffle batches, not rows)."""
    rows: list[Row] = []
    free: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e.ids)):
        for i, room in enumerate(free):
            if len(ex.ids) <= room:
                rows[i].add(ex)
                free[i] -= len(ex.ids)
                break
        else:
            rows.append(Row())
            rows[-1].add(ex)
            free.append(seq_len - len(ex.ids))
    rows.sort(key=lambda r: -len(r.ids))  # neighbours have similar lengths: batches of rows pad little
    return rows


def collate(rows: list[Row], pad_id: int):
    """Tensors for one batch: input_ids, labels and position_ids, padded to the longest row.

    Padding gets its own restarting position ids (a separate block in the mask) and IGNORE labels.
    Pass these with ``attention_mask=None``.
    """
    import torch

    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.ids)
        ids[i, :n] = torch.tensor(r.ids)
        labels[i, :n] = torch.tensor(r.labels)
        pos[i, :n] = torch.tensor(r.positions)
        pos[i, n:] = torch.arange(width - n)
    return ids, labels, pos


def validation_subset(n_batches: int, val_batches: int | None, seed: int) -> list[int]:
    """Indices of the validation batches to score (`training.val_batches`), in order: all of them for None or -1,
    none for 0, else one seeded pick from each of `val_batches` equal strata of the batch list. The batches are sorted
    longest first, so the strata span every length (the first batches alone would be the longest rows), and the
    same seed picks the same batches at every validation."""
    import random

    if val_batches is None or val_batches < 0 or val_batches >= n_batches:
        return list(range(n_batches))
    rng = random.Random(seed)
    return [rng.randrange(i * n_batches // val_batches, (i + 1) * n_batches // val_batches) for i in range(val_batches)]


def packing_stats(rows: list[Row], batch_size: int) -> dict:
    """Packing efficiency: non-pad tokens / tokens computed (rows padded to their batch's longest)."""
    real = sum(len(r.ids) for r in rows)
    computed = 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        computed += len(batch) * max(len(r.ids) for r in batch)
    return {"rows": len(rows), "tokens": real, "packing_efficiency": round(real / computed, 4) if computed else 0.0}
