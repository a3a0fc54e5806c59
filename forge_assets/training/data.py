"""Reading a dataset folder's JSONL splits for training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path


def read_records(folder: Path, split: str, template: str | None = None, fim=None, log=None) -> list[dict]:
    """The records of <folder>/<split>.jsonl (text, kind, repo, path, ...), in file order; [] when the split is absent.

    With a base model's own chat `template` (see ``chat.template_of``), chat texts are rendered with it instead of
    Forge's (``chat.retemplate``): a Qwen3 base trains and is scored on Qwen3's rendering.

    With the base's FIM scheme `fim` (``fim_tokens.scheme_of_folder``), FIM samples stay in Forge's canonical markup
    (``training.samples.Tok`` writes them with the base's tokens) unless the base has no FIM tokens: then they are
    dropped, and `log` gets one warning naming the base, the reason and the count.
    """
    from forge_assets.chat import ChatTemplateError, retemplate

    path = folder / f"{split}.jsonl"
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a dataset record ({exc}). Fix: rebuild the dataset; each line must be a JSON object with a `text` key.") from None
            if template:
                try:
                    rec["text"] = retemplate(rec["text"], template)
                except (ChatTemplateError, ValueError) as exc:
                    raise ValueError(f"{path}:{n}: this chat sample cannot be rendered with the base model's chat template ({exc}). "
                                     "Fix: rebuild the dataset with this Forge version.") from None
            records.append(rec)
    if fim is not None:
        records, _ = skip_fim(records, fim, str(path), log)
    return records


def skip_fim(records: list[dict], fim, where: str, log=None) -> tuple[list[dict], int]:
    """(records, 0), or without their FIM samples when the base has no FIM tokens, with one warning to `log`."""
    from forge_assets.fim_tokens import drop_fim

    records, dropped = drop_fim(records, fim)
    if dropped and log is not None:
        log(f"WARNING: skipped {dropped} fill-in-the-middle samples of {where}: {fim.skip_reason}. Fix: nothing to do for "
            "chat and code completion; for FIM (editor autocomplete) train on a base with FIM tokens (Qwen2.5-Coder, "
            "StarCoder2, CodeLlama, DeepSeek-Coder).")
    return records, dropped


def read_texts(folder: Path, split: str, template: str | None = None, fim=None, log=None) -> list[str]:
    """The `text` of every record in <folder>/<split>.jsonl, in file order (chats rendered with `template`, if given;
    FIM samples dropped when the base's FIM scheme `fim` has no FIM tokens; see read_records)."""
    return [r["text"] for r in read_records(folder, split, template, fim, log)]


def batches(tokenizer, texts: list[str], seq_len: int, batch_size: int):
    """Padded (input_ids, attention_mask, labels) tensors; padding positions are ignored by the loss. Texts in Forge's
    canonical markup are tokenized as training tokenizes them (``samples.Tok``: the base's own FIM, repository and file
    tokens; the same ids as the tokenizer's for a Qwen base)."""
    import torch

    from forge_assets.training.samples import Tok

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out either way (a Llama 3 has no pad)
    tok = Tok(tokenizer)
    enc = [tok(t)[:seq_len] for t in texts]
    enc = [e for e in enc if len(e) > 1]
    for i in range(0, len(enc), batch_size):
        chunk = enc[i:i + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, e in enumerate(chunk):
            ids[j, : len(e)] = torch.tensor(e)
            mask[j, : len(e)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        yield ids, mask, labels
