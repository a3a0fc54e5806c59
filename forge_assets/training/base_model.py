"""Base models: forge-tiny, built offline from the corpus, or a real Hugging Face model.

forge-tiny is a byte-level BPE tokenizer with Qwen2's pre-tokenizer split and Qwen's special
tokens, and a small Qwen2-architecture model briefly pretrained on the corpus, saved in Hugging
Face format, so every later stage (PEFT, mlx-lm, GGUF, llama.cpp) runs on it as on a real Qwen.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Iterable

from forge_assets.chat import CHAT_TEMPLATE, EOT, FIM_PAD, IM_END, SPECIAL_TOKENS
from forge_assets.config import TinyModelConfig

TINY = "forge-tiny"

# The split Qwen2's tokenizer.json uses; llama.cpp's `qwen2` pre-tokenizer implements the same regex.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class BaseModelError(ValueError):
    """A configured base model cannot be loaded; the message names it and the fix."""


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (Qwen2 split, ChatML + FIM special tokens) trained on texts."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=FIM_PAD, bos_token=None, unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (IM_END, FIM_PAD)],
        model_max_length=32768, clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _token_stream(tokenizer, texts: list[str]) -> list[int]:
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(eot)
    return ids


def held_out_split(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(pretraining texts, held-out texts): a file is held out by the hash of its content, so the choice is
    stable and independent of order. Fewer than 10 files hold nothing out (too few to measure on)."""
    if fraction <= 0 or len(texts) < 10:
        return list(texts), []
    cut = int(fraction * 2**32)
    out: tuple[list[str], list[str]] = ([], [])
    for t in texts:
        out[int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:4], "big") < cut].append(t)
    return out if out[0] and out[1] else (list(texts), [])


def build_tiny_model(texts: list[str], out: Path, cfg: TinyModelConfig, log=print) -> dict:
    """Train forge-tiny's tokenizer and pretrain its Qwen2 model on texts; save it in HF format to out.

    `held_out_fraction` of the files take no part in the tokenizer or the pretraining; the model's perplexity
    and bits per byte on them are returned with the other figures (parameters, tokens, loss, seconds).
    Pretraining draws random `pretrain_seq_len` windows from the token stream, with AdamW, 5 % linear warmup
    and a cosine decay to a tenth of the peak learning rate.
    """
    import math
    import time

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if not texts:
        raise BaseModelError("forge-tiny needs a corpus to be built from, and the configured repositories hold no source files. Fix: add a repository with code under `repos:` in forge.yaml.")
    started = time.monotonic()
    texts, held = held_out_split(sorted(texts), cfg.held_out_fraction)
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(texts + [CHAT_TEMPLATE], cfg.vocab_size)
    eot, im_end, pad = (tokenizer.convert_tokens_to_ids(t) for t in (EOT, IM_END, FIM_PAD))
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        # The window it declares (and llama.cpp serves: its engine caps a slot at the GGUF's context_length) is at least
        # 32,768 tokens, what agent clients send; RoPE takes any position. It trains on context_length windows.
        max_position_embeddings=max(cfg.context_length or 2048, 32768), rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=im_end, pad_token_id=pad,
        use_sliding_window=False, torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    stream = torch.tensor(_token_stream(tokenizer, texts), dtype=torch.long)
    seq = min(cfg.pretrain_seq_len, cfg.context_length or cfg.pretrain_seq_len, max(2, len(stream) - 2))
    steps = cfg.pretrain_steps
    losses: list[float] = []
    if steps and len(stream) > seq + 1:
        rng = random.Random(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
        warm = max(1, steps // 20)

        def scale(s: int) -> float:
            return min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, scale)
        model.train()
        for step in range(steps):
            starts = [rng.randrange(0, len(stream) - seq - 1) for _ in range(cfg.pretrain_batch_size)]
            batch = torch.stack([stream[s:s + seq] for s in starts])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            losses.append(round(loss.item(), 4))
            if step % 50 == 0 or step == steps - 1:
                log(f"forge-tiny pretraining step {step + 1}/{steps}: loss {loss.item():.3f}")
    model.eval()
    figures = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "corpus_tokens": int(len(stream)),
        "corpus_texts": len(texts),
        "pretrain_steps": steps,
        "pretrain_tokens": steps * cfg.pretrain_batch_size * seq if losses else 0,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "held_out_files": len(held),
    }
    if held:
        from forge_assets.evaluation.scores import perplexity

        window = cfg.context_length or 2048
        ppl, tokens = perplexity(model, tokenizer, held, window)
        # perplexity() scores each file's first `window` tokens: count the bytes of exactly those
        n_bytes = sum(len(tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:window]).encode("utf-8")) for t in held)
        figures.update(held_out_tokens=tokens, held_out_perplexity=round(ppl, 2),
                       held_out_bits_per_byte=round(math.log(ppl) * tokens / n_bytes / math.log(2), 4))
        log(f"forge-tiny held-out perplexity {ppl:.1f} on {len(held)} files ({tokens} tokens)")
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=pad, do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    figures["build_seconds"] = round(time.monotonic() - started, 1)
    return figures


def resolve_base_model(name: str, base_dir: Path) -> Path:
    """A local folder for a configured base model: a path as given, or a Hugging Face id downloaded.

    Downloading happens only for a Hugging Face id that is not already in the local cache.
    """
    p = Path(name).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if p.exists():
        if not (p / "config.json").is_file():
            raise BaseModelError(f"base_model: {p} has no config.json, so it is not a saved Hugging Face model. Fix: point it at a folder written by save_pretrained (config.json, tokenizer files, *.safetensors).")
        return p.resolve()
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise BaseModelError(f"base_model: `{name}` is neither an existing folder nor a Hugging Face id (owner/name). Fix: use `forge-tiny`, a local model folder, or an id such as Qwen/Qwen2.5-Coder-0.5B.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as exc:  # noqa: BLE001 - the hub raises many kinds; all mean the same to the user
        raise BaseModelError(f"base_model: cannot fetch `{name}` from the Hugging Face hub ({type(exc).__name__}: {exc}). Fix: check the id and the network, or download it once and give its local path.") from None


def mlx_quantization(folder: Path) -> dict | None:
    """The `quantization` block of an MLX-quantized model folder's config.json, else None.

    mlx-lm's `convert -q` (and so every mlx-community 4-bit/8-bit model) stores each quantized linear or embedding as a
    packed uint32 `weight` with `scales` and `biases` per group of `group_size` inputs, and writes
    `"quantization": {"group_size": 64, "bits": 4, "mode": "affine", <module path>: {...} per-module overrides}`
    (also copied to `quantization_config`, without the `quant_method` a transformers quantizer needs). transformers and
    PEFT cannot load such weights; mlx-lm trains, scores and serves them as they are, and the GGUF converter dequantizes
    them while streaming."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    q = config.get("quantization") if isinstance(config, dict) else None
    return q if isinstance(q, dict) and "bits" in q and "group_size" in q else None


def mlx_quantization_label(q: dict) -> str:
    """`mlx affine 4-bit, group size 64` (per-module overrides counted) for messages and metadata."""
    overrides = sum(isinstance(v, dict) for v in q.values())
    return (f"mlx {q.get('mode', 'affine')} {q['bits']}-bit, group size {q['group_size']}"
            + (f", {overrides} modules with their own settings" if overrides else ""))


def check_base_model(folder: Path) -> dict:
    """Load a saved model's config and tokenizer; return what later stages need to know about it."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise BaseModelError(f"base_model: {folder} could not be loaded by transformers ({type(exc).__name__}: {exc}). Fix: re-save it with save_pretrained, or choose another model.") from None
    if not any(folder.glob("*.safetensors")):
        raise BaseModelError(f"base_model: {folder} has no *.safetensors weights. Fix: save the model with safe_serialization=True.")
    return {
        "architecture": (config.architectures or [config.model_type])[0],
        "model_type": config.model_type,
        "vocab_size": len(tokenizer),
        "hidden_size": getattr(config, "hidden_size", None),
        "layers": getattr(config, "num_hidden_layers", None),
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        # An MLX-quantized base (mlx-community 4/8-bit): trained, scored and served by mlx-lm, dequantized into the GGUF.
        **({"quantization": mlx_quantization_label(q), "quantization_bits": q["bits"]} if (q := mlx_quantization(folder)) else {}),
    }


def folder_fingerprint(folder: Path) -> str:
    """A cheap version of a model folder: names, sizes and the bytes of its small files."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)}:{p.stat().st_size}".encode())
            if p.stat().st_size < (1 << 22):
                h.update(p.read_bytes())
    return h.hexdigest()


def model_folder(artifact_path: Path) -> Path:
    """The Hugging Face model folder a base_model artifact stands for (itself, or the model it references)."""
    ref = artifact_path / "model.json"
    return Path(json.loads(ref.read_text())["path"]) if ref.is_file() else artifact_path
