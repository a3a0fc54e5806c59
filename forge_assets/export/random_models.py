"""Small random-initialised Hugging Face causal LMs on disk, with real tokenizer files, built offline.

They stand in for real checkpoints (Qwen2/2.5, Qwen3, Llama, Mistral) in GGUF export parity tests and benchmarks:
the architecture comes from transformers' own config classes, the weights from a seeded random init (with non-zero
biases and norm weights away from 1, so a converter that drops or mis-maps one is caught), and the tokenizer is one of

- ``forge-tiny``: forge-tiny's byte-level BPE (Qwen2 split, ChatML), copied from a forge-tiny model folder;
- ``llama3``: a byte-level BPE shaped exactly like Meta-Llama-3's tokenizer.json (its split regex, ``ignore_merges``,
  special tokens after the vocabulary, ``<|begin_of_text|>`` prepended by the post-processor);
- ``spm``: a SentencePiece-style BPE as Mistral-7B / Llama-2 ship it in tokenizer.json (Metaspace ``▁``, byte
  fallback to ``<0x00>``..``<0xFF>``, ``<unk>``/``<s>``/``</s>`` = 0/1/2, ``<s>`` prepended).

The llama3 and spm tokenizers are trained with the `tokenizers` library on Forge's own source (forge_assets/**/*.py)
in a second or two; nothing is downloaded.
"""

from __future__ import annotations

import functools
import inspect
import json
import shutil
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from forge_assets.architectures import FAMILIES
from forge_assets.export.safetensors_header import SafetensorsHeaderError, read_safetensors_header

MODEL_KINDS = tuple(FAMILIES)  # every family of the architecture registry (forge_assets/architectures)
TOKENIZERS = ("forge-tiny", "llama3", "spm")

# Meta-Llama-3's split (tokenizer.json's pre_tokenizer); llama.cpp's `llama-bpe` pre-tokenizer implements the same regex.
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

BEGIN_OF_TEXT, END_OF_TEXT, EOT_ID = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
LLAMA3_SPECIAL_TOKENS = [BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, EOT_ID]
SPM_UNK, SPM_BOS, SPM_EOS = "<unk>", "<s>", "</s>"
SPM_SPACE = "\u2581"  # "▁", SentencePiece's word-boundary mark
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

# Sizes of the trained vocabularies (the added special tokens come on top for llama3, the byte tokens are inside for
# spm): neither is a multiple of 64, so a model's embedding (rounded up to one) has padding rows past the tokenizer.
LLAMA3_BPE_VOCAB = 3000  # + 5 special tokens = 3005 -> 3008 embedding rows
SPM_VOCAB = 3000  # <unk> <s> </s>, 256 byte tokens and 2741 trained pieces -> 3008 embedding rows
FORGE_TINY_VOCAB = 3000  # forge-tiny's tokenizer when no forge-tiny folder is given (its 9 special tokens included)
VOCAB_MULTIPLE = 64

# Llama-3-style chat template (Forge's own Jinja text): BOS, then one header block per turn, each ended by <|eot_id|>.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# Mistral-style [INST] template (Forge's own Jinja text): a system turn goes in front of the first user turn.
MISTRAL_CHAT_TEMPLATE = (
    "{%- set system = messages[0].content if messages and messages[0].role == 'system' else '' -%}"
    "{{- bos_token -}}"
    "{%- for m in messages if m.role != 'system' -%}"
    "{%- if m.role == 'user' -%}"
    "{{- '[INST] ' + ((system + '\\n\\n') if system and loop.first else '') + m.content + ' [/INST]' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{{- m.content + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_DTYPES = ("float32", "float16", "bfloat16")
_SAFETENSORS_METADATA_KEY = "__metadata__"


class RandomModelError(ValueError):
    """A random model or tokenizer cannot be built as asked; the message names the problem and the fix."""


def source_texts() -> list[str]:
    """The training text for the llama3 and spm tokenizers: this repository's forge_assets/**/*.py, in path order."""
    root = Path(__file__).resolve().parents[1]
    return [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts]


def _added_token(content: str, token_id: int) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def _added_tokens_decoder(tokens: dict[str, int]) -> dict:
    """tokenizer_config.json's `added_tokens_decoder`, as save_pretrained writes it."""
    return {str(i): {k: v for k, v in _added_token(t, i).items() if k != "id"} for t, i in tokens.items()}


@functools.cache
def _llama3_tokenizer_json() -> str:
    """Meta-Llama-3's tokenizer.json shape, with a vocabulary trained on Forge's source."""

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=LLAMA3_BPE_VOCAB, min_frequency=2, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(source_texts(), trainer=trainer)
    # As in Llama 3, the special tokens come after the BPE vocabulary (Llama 3: 128000 and up).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    bos = tok.token_to_id(BEGIN_OF_TEXT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN_OF_TEXT} $A", pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT}:1 $B:1", special_tokens=[(BEGIN_OF_TEXT, bos)])
    return tok.to_str()


@functools.cache
def _spm_tokenizer_json() -> str:
    """Mistral-7B's / Llama-2's tokenizer.json shape (SentencePiece BPE with byte fallback), trained on Forge's source."""

    # Trained a line at a time, as SentencePiece trains on sentences: no piece holds a newline, so a newline is the
    # byte token <0x0A>, as in Llama 2 and Mistral. Words are split at spaces for training only; no merge crosses
    # a word, so the saved tokenizer (which, like Mistral's, does not split) encodes the same.
    lines = [line for text in source_texts() for line in text.splitlines() if line.strip()]
    specials = [SPM_UNK, SPM_BOS, SPM_EOS]
    trained = Tokenizer(models.BPE(unk_token=SPM_UNK, byte_fallback=True, fuse_unk=True))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=SPM_VOCAB - len(BYTE_TOKENS), min_frequency=2, special_tokens=specials,
                                  show_progress=False)
    trained.train_from_iterator(lines, trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    # <unk> <s> </s> = 0 1 2, then <0x00>..<0xFF> = 3..258, then the trained pieces in their order, as in Llama 2.
    vocab: dict[str, int] = {}
    for t in [*specials, *BYTE_TOKENS, *sorted(model["vocab"], key=model["vocab"].get)]:
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=SPM_UNK, byte_fallback=True, fuse_unk=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPM_BOS}:0 $A:0", pair=f"{SPM_BOS}:0 $A:0 {SPM_BOS}:1 $B:1", special_tokens=[(SPM_BOS, vocab[SPM_BOS])])
    return tok.to_str()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer_files(out: Path, tokenizer_json: str, config: dict, special_map: dict, chat_template: str) -> None:
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special_map)
    (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def build_tokenizer(kind: str, out: Path, *, source: Path | None = None, chat_template: str | None = None) -> Path:
    """Write a tokenizer's files into out (tokenizer.json, tokenizer_config.json, chat_template.jinja and, for
    llama3 and spm, special_tokens_map.json); return out.

    kind `forge-tiny` copies them from `source`, a forge-tiny model folder; with no source, forge-tiny's tokenizer
    is trained afresh (training.base_model.train_tokenizer, FORGE_TINY_VOCAB) on Forge's source. `llama3` and `spm`
    are trained on Forge's source (see the module docstring); each loads with AutoTokenizer and decodes what it encodes.
    `chat_template`, when given, replaces the kind's chat template (e.g. chat.QWEN3_CODER_CHAT_TEMPLATE).
    """
    if chat_template is not None:
        build_tokenizer(kind, out, source=source)
        _replace_chat_template(Path(out), chat_template)
        return Path(out)
    out = Path(out)
    if kind not in TOKENIZERS:
        raise RandomModelError(f"tokenizer `{kind}` is not one Forge builds. Fix: choose one of {', '.join(TOKENIZERS)}.")
    out.mkdir(parents=True, exist_ok=True)
    if kind == "forge-tiny":
        if source is None:
            from forge_assets.chat import CHAT_TEMPLATE
            from forge_assets.training.base_model import train_tokenizer

            train_tokenizer(source_texts() + [CHAT_TEMPLATE], FORGE_TINY_VOCAB).save_pretrained(out)
            return out
        source = Path(source)
        if not (source / "tokenizer.json").is_file():
            raise RandomModelError(f"{source} has no tokenizer.json, so it is not a forge-tiny model folder. Fix: pass the folder build_tiny_model wrote.")
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
        return out
    if kind == "llama3":
        text = _llama3_tokenizer_json()
        added = {t["content"]: t["id"] for t in json.loads(text)["added_tokens"]}
        config = {
            "added_tokens_decoder": _added_tokens_decoder(added),
            "bos_token": BEGIN_OF_TEXT,
            "eos_token": EOT_ID,
            "clean_up_tokenization_spaces": False,  # Llama 3 says true, which would turn " ." into "." on decode
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 8192,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        _write_tokenizer_files(out, text, config, {"bos_token": BEGIN_OF_TEXT, "eos_token": EOT_ID}, LLAMA3_CHAT_TEMPLATE)
        return out
    text = _spm_tokenizer_json()
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder({SPM_UNK: 0, SPM_BOS: 1, SPM_EOS: 2}),
        "bos_token": SPM_BOS,
        "eos_token": SPM_EOS,
        "unk_token": SPM_UNK,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 32768,
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
    }
    special_map = {"bos_token": SPM_BOS, "eos_token": SPM_EOS, "unk_token": SPM_UNK}
    _write_tokenizer_files(out, text, config, special_map, MISTRAL_CHAT_TEMPLATE)
    return out


def _replace_chat_template(out: Path, chat_template: str) -> None:
    """chat_template.jinja where the builder wrote one, and tokenizer_config.json's `chat_template` where it has one
    (or no .jinja file holds it): gguf-py and transformers read either."""
    jinja, cfg = out / "chat_template.jinja", out / "tokenizer_config.json"
    if jinja.is_file():
        jinja.write_text(chat_template, encoding="utf-8")
    config = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
    if "chat_template" in config or not jinja.is_file():
        config["chat_template"] = chat_template
        _write_json(cfg, config)


def _rope_kwargs(config_cls, rope_theta: float, rope_scaling: dict | None) -> dict:
    """rope_theta and rope_scaling in the installed transformers' terms (5.x: one `rope_parameters` dict)."""
    scaling = dict(rope_scaling or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if "rope_parameters" in inspect.signature(config_cls.__init__).parameters:
        return {"rope_parameters": {"rope_type": "default", **scaling, "rope_theta": float(rope_theta)}}
    return {"rope_theta": float(rope_theta), "rope_scaling": scaling or None}


def _randomise_biases_and_norms(model) -> None:
    """Biases N(0, 0.1²) and norm weights 1 + N(0, 0.1²): the default init gives zeros and ones, which hide a converter
    that drops a bias or a norm."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if "RMSNorm" in type(module).__name__ or "LayerNorm" in type(module).__name__:
                module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))


def build_random_model(kind: str, out: Path, *, tokenizer: str = "forge-tiny", tokenizer_source: Path | None = None,
                       hidden_size: int = 256, intermediate_size: int = 512, num_layers: int = 2, num_heads: int = 4,
                       num_kv_heads: int = 2, head_dim: int | None = None, tie_word_embeddings: bool = False,
                       dtype: str = "float32", max_shard_size: str | None = None, rope_scaling: dict | None = None,
                       rope_theta: float = 10000.0, max_position_embeddings: int = 2048, seed: int = 0,
                       initializer_range: float = 0.05, chat_template: str | None = None, **family_options) -> Path:
    """A random model of `kind` (one of MODEL_KINDS) with the `tokenizer` (one of TOKENIZERS), saved to out; return out.

    The embedding has len(tokenizer) rounded up to a multiple of 64 rows (padding rows past the tokenizer, as in
    Qwen's checkpoints); config.json names the tokenizer's bos/eos/pad ids. Weights are cast to `dtype` and saved as
    safetensors (several shards and model.safetensors.index.json when `max_shard_size` is small). `rope_scaling`
    (e.g. {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}) goes to the config as is;
    transformers 5 stores it, rope_theta included, as config.json's `rope_parameters`. The family's `random_config`
    in the architecture registry adds its own settings, with `family_options` (e.g. num_experts=8, num_experts_per_tok=2,
    moe_intermediate_size=64 for qwen3_moe): qwen2 has no sliding window, mistral neither (sliding_window null, as
    Mistral-7B-v0.2 and later).
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
    )

    out = Path(out)
    if kind not in MODEL_KINDS:
        raise RandomModelError(f"model kind `{kind}` is not one Forge builds. Fix: choose one of {', '.join(MODEL_KINDS)}.")
    if dtype not in _DTYPES:
        raise RandomModelError(f"dtype `{dtype}` is not supported. Fix: choose one of {', '.join(_DTYPES)}.")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise RandomModelError(f"{num_heads} heads and {num_kv_heads} KV heads do not fit hidden_size {hidden_size}. Fix: make "
                               "hidden_size a multiple of num_heads and num_heads a multiple of num_kv_heads.")
    build_tokenizer(tokenizer, out, source=tokenizer_source, chat_template=chat_template)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    vocab_size = -(-len(tok) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config_cls = type(AutoConfig.for_model(kind))
    kwargs: dict = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6, initializer_range=initializer_range, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **_rope_kwargs(config_cls, rope_theta, rope_scaling),
    )
    if head_dim is not None or kind != "qwen2":  # Qwen3 defaults to 128; Qwen2's config has no head_dim unless asked
        kwargs["head_dim"] = head_dim or hidden_size // num_heads
    fam = FAMILIES[kind]
    if fam.random_config:  # the family's own settings (MoE experts, no sliding window, ...); family_options override
        kwargs.update(fam.random_config(**family_options))
    elif family_options:
        raise RandomModelError(f"{kind} takes no options {sorted(family_options)}. Fix: drop them.")
    config = AutoConfig.for_model(kind, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomise_biases_and_norms(model)
    model.to(getattr(torch, dtype))
    eos_ids = [tok.eos_token_id]
    for extra in ("<|endoftext|>", END_OF_TEXT):  # forge-tiny and Llama 3 also stop on their end-of-document token
        if extra in tok.get_vocab() and tok.convert_tokens_to_ids(extra) not in eos_ids:
            eos_ids.append(tok.convert_tokens_to_ids(extra))
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    save_kwargs: dict = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    if max_shard_size is not None:
        save_kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out, **save_kwargs)
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    if "num_local_experts" in saved and "num_experts" not in saved:
        # transformers 5 saves qwen3_moe's expert count as num_local_experts; the released checkpoints (and mlx-lm,
        # which reads config.json itself) name it num_experts
        saved["num_experts"] = saved["num_local_experts"]
        _write_json(config_path, saved)
    return out


def parameter_count(model_dir: Path) -> int:
    """Parameters in a model folder's *.safetensors files, from their headers alone (no tensor data is read)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise RandomModelError(f"{model_dir}: no *.safetensors files.")
    total = 0
    for f in files:
        try:
            header = read_safetensors_header(f)  # the length is bounded before anything is read
        except SafetensorsHeaderError as exc:
            raise RandomModelError(str(exc)) from None
        for name, info in header.items():
            if name != _SAFETENSORS_METADATA_KEY:
                count = 1
                for d in info["shape"]:
                    count *= d
                total += count
    return total
