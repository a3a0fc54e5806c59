"""Fill-in-the-middle token schemes: which FIM tokens a base model's family was trained with, found in its vocabulary.

Forge's datasets keep one **canonical markup**, Qwen2.5-Coder's (``chat.FIM_PREFIX`` ``<|fim_prefix|>``,
``chat.FIM_SUFFIX``, ``chat.FIM_MIDDLE``, ``chat.FIM_PAD``, the repository header ``chat.REPO_NAME`` /
``chat.FILE_SEP`` and the end of a document ``chat.EOT``), whatever the base. Where the base is known, its scheme
turns that markup into the base's own tokens: training and evaluation tokenize through it (``training.samples.Tok``),
the server renders FIM prompts with it, and the client configs and Ollama TEMPLATE take their FIM template from it.
A dataset mined once therefore trains any base, and switching the base never needs a re-mine.

Families (``shared/reference/serving-notes.md``; the token strings as the families' tokenizers spell them):

=========  =====================  =====================  ====================  ===========  ==============================  ====
family     prefix                 suffix                 middle                pad          a middle ends with              SPM
=========  =====================  =====================  ====================  ===========  ==============================  ====
qwen       ``<|fim_prefix|>``     ``<|fim_suffix|>``     ``<|fim_middle|>``    <|fim_pad|>  the end of text                 yes
starcoder  ``<fim_prefix>``       ``<fim_suffix>``       ``<fim_middle>``      <fim_pad>    the end of text                 yes
codellama  ``▁<PRE>``             ``▁<SUF>``             ``▁<MID>``            -            ``▁<EOT>``                      yes
deepseek   ``<｜fim▁begin｜>``     ``<｜fim▁hole｜>``      ``<｜fim▁end｜>``      -            the end of text                 no
=========  =====================  =====================  ====================  ===========  ==============================  ====

and ``none``: general chat models (Llama 3, SmolLM2, Mistral instruct) have no FIM tokens. Every family orders a
PSM prompt alike, ``prefix-token {prefix} suffix-token {suffix} middle-token``, and the families with SPM use the
variant Forge mines, ``prefix-token suffix-token {suffix} middle-token {prefix}{middle}`` (StarCoder's and CodeLlama's
``suffix_first``). DeepSeek-Coder was trained on PSM only: a canonical SPM sample still trains it as a PSM sample with
an empty prefix whose middle is the file's start, so nothing is lost. CodeLlama's documented prompt
``<PRE> {prefix} <SUF>{suffix} <MID>`` is the decoded form of ``▁<PRE>`` + prefix + ``▁<SUF>`` + suffix + ``▁<MID>``
(the spaces are the ``▁`` of its tokens and SentencePiece's word-start mark), which is how it is rendered here.

Repository and file tokens are found on their own (SmolLM2 has StarCoder's ``<repo_name>`` and ``<file_sep>`` but no
FIM tokens). The canonical header ``<|repo_name|>{repo}\\n<|file_sep|>{path}\\n`` becomes
``<repo_name>{repo}<file_sep>{path}\\n`` with StarCoder-style tokens (StarCoder2's repository format), and is left out
(repo and path dropped, never written as text or unknown ids) when the base has no file token.

A family counts as present only when its prefix, suffix and middle tokens are each one token of the vocabulary:
``scheme_of_tokenizer`` (a Hugging Face tokenizer), ``scheme_of_folder`` (a model folder's tokenizer files, no weights
read), ``scheme_of_gguf`` (gguf-py's reader) and ``scheme_of_llama`` (a loaded ``llama_cpp.Llama``: what llama.cpp
itself tokenizes, with ``special=True``, as one control or user-defined token).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from forge_assets.chat import EOT, FILE_SEP, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, IM_END, IM_START, REPO_NAME

NO_FIM = "base has no FIM tokens"  # the short reason every consumer reports


@dataclass(frozen=True)
class Family:
    """A model family's FIM tokens."""

    name: str
    label: str
    prefix: str
    suffix: str
    middle: str
    pad: str | None = None
    eot: str | None = None  # the token a middle ends with when the family has its own (else the end of text)
    spm: bool = True


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("qwen", "Qwen2.5-Coder / Qwen3-Coder", FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD),
    Family("starcoder", "StarCoder / StarCoder2", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>"),
    Family("codellama", "CodeLlama", "\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>", eot="\u2581<EOT>"),
    Family("deepseek", "DeepSeek-Coder", "<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>", spm=False),
)}
SCHEMES = (*FAMILIES, "none")
REPO_TOKENS = (REPO_NAME, "<repo_name>", "<reponame>")
FILE_TOKENS = (FILE_SEP, "<file_sep>", "<filename>")
TEXT_ENDS = (EOT, "<|end_of_text|>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "</s>")  # end-of-document tokens, preferred first
CHAT_TOKENS = (IM_START, IM_END)
CANONICAL = (EOT, IM_START, IM_END, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP)  # chat.SPECIAL_TOKENS
# Every token string any scheme uses but `</s>` (HTML's strikethrough end tag): generation stops at them and a generated
# middle is cut at the first of them (generate.stop_ids, fim_eval.truncate_middle).
ALL_MARKERS = tuple(dict.fromkeys([*CANONICAL, *(t for f in FAMILIES.values() for t in (f.prefix, f.suffix, f.middle, f.pad, f.eot) if t),
                                   *REPO_TOKENS, *FILE_TOKENS, *(t for t in TEXT_ENDS if t != "</s>")]))
# What no training text may hold as plain content (mining/filters.control_token_in): Forge's markup and every family's
# FIM and end tokens; not the StarCoder-style `<filename>`/`<reponame>`, which XML and templates use as ordinary tags.
CONTROL_TOKENS = tuple(dict.fromkeys([*CANONICAL, *(t for f in FAMILIES.values() for t in (f.prefix, f.suffix, f.middle, f.pad, f.eot) if t),
                                      "<|end_of_text|>"]))
_HEAD = re.compile(r"^(?:" + re.escape(REPO_NAME) + r"([^\n]*)\n)?(?:" + re.escape(FILE_SEP) + r"([^\n]*)\n)?")
_CANONICAL_RE = re.compile("|".join(re.escape(t) for t in CANONICAL))


@dataclass(frozen=True)
class FimScheme:
    """A base's FIM family (None: no FIM tokens), its repository/file tokens and end of text, and where it was read."""

    family: Family | None
    repo: str | None = None
    file: str | None = None
    end: str | None = EOT
    chat: tuple[str, ...] = ()  # canonical chat tokens the vocabulary has (<|im_start|>, <|im_end|>)
    source: str = "the base model"
    _map: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        f = self.family
        m = {FIM_PREFIX: f and f.prefix, FIM_SUFFIX: f and f.suffix, FIM_MIDDLE: f and f.middle, FIM_PAD: f and f.pad,
             REPO_NAME: self.repo, FILE_SEP: self.file, EOT: self.end, **{t: t if t in self.chat else None for t in CHAT_TOKENS}}
        self._map.update({k: v or None for k, v in m.items()})

    @property
    def name(self) -> str:
        return self.family.name if self.family else "none"

    @property
    def has_fim(self) -> bool:
        return self.family is not None

    @property
    def label(self) -> str:
        return self.family.label if self.family else "no FIM tokens"

    @property
    def canonical(self) -> bool:
        """Whether the base's tokens are the canonical markup itself (texts need no conversion)."""
        return all(self._map[t] == t for t in CANONICAL)

    @property
    def skip_reason(self) -> str:
        """Why FIM is skipped for this base ("" when it is not)."""
        if self.has_fim:
            return ""
        return (f"{NO_FIM}: {self.source} has none of {', '.join(f.prefix for f in FAMILIES.values())} in its vocabulary, so "
                "fill-in-the-middle samples are not trained or scored and FIM requests are refused")

    @property
    def middle_end(self) -> str | None:
        """The token a FIM middle ends with: CodeLlama's ▁<EOT>, else the end of text."""
        return (self.family.eot if self.family and self.family.eot else None) or self.end

    def marker(self, canonical: str) -> str | None:
        """The base's token string for a canonical marker, or None when the base has no such token."""
        return self._map.get(canonical)

    def header(self, repo: str, path: str) -> str:
        """The repository/file header in the base's tokens ("" without a file token)."""
        if not self.file:
            return ""
        head = f"{self.file}{path}\n"
        if self.repo:  # Qwen ends the repository line with a newline, StarCoder goes straight on to the file token
            head = self.repo + repo + ("\n" if self.repo == REPO_NAME else "") + head
        return head

    def _require_fim(self) -> Family:
        if self.family is None:
            raise ValueError(f"{self.skip_reason}. Fix: use chat or plain completion with this model, or train on a base "
                             "with FIM tokens (Qwen2.5-Coder, StarCoder2, CodeLlama, DeepSeek-Coder).")
        return self.family

    def psm(self, prefix: str, suffix: str, repo: str | None = None, path: str | None = None) -> str:
        """A PSM prompt in the base's tokens, with the repository header when repo and path are given."""
        f = self._require_fim()
        head = self.header(repo, path) if repo is not None and path is not None else ""
        return f"{head}{f.prefix}{prefix}{f.suffix}{suffix}{f.middle}"

    def spm(self, prefix: str, suffix: str, repo: str | None = None, path: str | None = None) -> str:
        """An SPM prompt (``prefix-token suffix-token {suffix} middle-token {prefix}``) for families trained on SPM."""
        f = self._require_fim()
        if not f.spm:
            raise ValueError(f"{f.label} was trained on PSM prompts only. Fix: use psm().")
        head = self.header(repo, path) if repo is not None and path is not None else ""
        return f"{head}{f.prefix}{f.suffix}{suffix}{f.middle}{prefix}"

    def stop_tokens(self) -> list[str]:
        """The strings a FIM completion stops at: the end of text, the FIM, pad, file and repository tokens and the chat
        turn tokens the base has (for Qwen exactly ``chat.FIM_STOP_TOKENS``)."""
        f = self.family
        tokens = [self.end, *((f.prefix, f.suffix, f.middle, f.pad, f.eot) if f else ()), self.file, self.repo, *self.chat]
        return list(dict.fromkeys(t for t in tokens if t))

    def to_base(self, text: str) -> str:
        """A text in Forge's canonical markup written with the base's tokens: the header re-rendered (or left out), the
        FIM tokens replaced, a FIM sample's final end of text replaced by the family's middle end; a canonical marker
        the base has no token for is dropped. Identity for a base whose tokens are the canonical ones."""
        if self.canonical:
            return text
        m = _HEAD.match(text)
        head = ""
        if m.end():
            head = self.header(m.group(1) or "", m.group(2) or "") if m.group(2) is not None else ""
            text = text[m.end():]
        tail = ""
        if FIM_MIDDLE in text and text.endswith(EOT):
            text, tail = text[: -len(EOT)], self.middle_end or ""
        return head + _CANONICAL_RE.sub(lambda x: self._map.get(x.group(0)) or "", text) + tail

    def base_tokens(self) -> list[str]:
        """Every token string this scheme writes (each one token of the base's vocabulary)."""
        return list(dict.fromkeys(t for t in [*self._map.values(), self.middle_end] if t))

    def token_ids(self, tokenizer) -> dict[str, int]:
        """{base token string: its id} under a Hugging Face tokenizer; raises when one is not a single token there."""
        vocab = tokenizer.get_vocab()
        out = {}
        for t in self.base_tokens():
            if t not in vocab:
                raise ValueError(f"{self.source}: the FIM scheme `{self.name}` writes {t!r}, which is not a token of this tokenizer. "
                                 "Fix: detect the scheme from this very tokenizer (fim_tokens.scheme_of_tokenizer).")
            out[t] = vocab[t]
        return out


# ---------------------------------------------------------------------------------------------------- detection


def detect(has: Callable[[str], bool], source: str, eos: str | None = None) -> FimScheme:
    """The scheme of a vocabulary, given `has(token)`: whether a string is one token of it. `eos` is the tokenizer's end
    of sequence, the end of text when none of the usual end-of-document tokens is there."""
    family = next((f for f in FAMILIES.values() if has(f.prefix) and has(f.suffix) and has(f.middle)), None)
    if family is not None:
        family = Family(family.name, family.label, family.prefix, family.suffix, family.middle,
                        family.pad if family.pad and has(family.pad) else None, family.eot if family.eot and has(family.eot) else None,
                        family.spm)
    repo = next((t for t in REPO_TOKENS if has(t)), None)
    file = next((t for t in FILE_TOKENS if has(t)), None)
    end = next((t for t in TEXT_ENDS if has(t)), None) or (eos if eos and has(eos) else None)
    return FimScheme(family, repo, file, end, tuple(t for t in CHAT_TOKENS if has(t)), source)


def scheme_of_vocab(tokens: Iterable[str], source: str = "the base model", eos: str | None = None) -> FimScheme:
    vocab = set(tokens)
    return detect(vocab.__contains__, source, eos)


def scheme_of_tokenizer(tokenizer, source: str | None = None) -> FimScheme:
    """The scheme of a Hugging Face tokenizer (its vocabulary, added tokens included)."""
    name = source or f"the tokenizer of {getattr(tokenizer, 'name_or_path', '') or 'the base model'}"
    return scheme_of_vocab(tokenizer.get_vocab(), name, getattr(tokenizer, "eos_token", None))


def _content(tok) -> str | None:
    return tok if isinstance(tok, str) else tok.get("content") if isinstance(tok, dict) else None


def scheme_of_folder(folder: Path) -> FimScheme:
    """The scheme of a Hugging Face model folder, read from tokenizer.json and tokenizer_config.json (no weights, no
    network); a folder without tokenizer.json is read with transformers' AutoTokenizer (local files only)."""
    folder = Path(folder)
    source = f"the tokenizer of {folder}"
    cfg = {}
    if (folder / "tokenizer_config.json").is_file():
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return scheme_of_tokenizer(AutoTokenizer.from_pretrained(folder, local_files_only=True), source)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = (data.get("model") or {}).get("vocab") or {}
    tokens = set(vocab) if isinstance(vocab, dict) else {v[0] for v in vocab if isinstance(v, list) and v}  # BPE / Unigram
    tokens |= {t["content"] for t in data.get("added_tokens") or [] if t.get("content")}
    tokens |= {c for t in (cfg.get("added_tokens_decoder") or {}).values() if (c := _content(t))}
    return scheme_of_vocab(tokens, source, _content(cfg.get("eos_token")))


def scheme_of_gguf(path: Path) -> FimScheme:
    """The scheme of a GGUF file's vocabulary (gguf-py's reader): its control and user-defined tokens count."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    f_tokens, f_types = reader.fields.get("tokenizer.ggml.tokens"), reader.fields.get("tokenizer.ggml.token_type")
    if f_tokens is None:
        return scheme_of_vocab([], f"the GGUF {path}")
    tokens = [bytes(f_tokens.parts[i]).decode("utf-8", "replace") for i in f_tokens.data]
    types = [int(f_types.parts[i][0]) for i in f_types.data] if f_types is not None else [0] * len(tokens)
    special = {int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)}
    vocab = {t for t, k in zip(tokens, types) if k in special}
    eos_field = reader.fields.get("tokenizer.ggml.eos_token_id")
    eos = tokens[int(eos_field.parts[eos_field.data[0]][0])] if eos_field is not None else None
    return scheme_of_vocab(vocab, f"the GGUF {Path(path).name}", eos)


def scheme_of_llama(llm, source: str | None = None) -> FimScheme:
    """The scheme of a loaded ``llama_cpp.Llama``: a token counts when llama.cpp tokenizes its text (``special=True``)
    as exactly one control or user-defined token whose text it is."""
    import llama_cpp

    model = llm._model
    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    memo: dict[str, bool] = {}

    def has(token: str) -> bool:
        if token not in memo:
            ids = llm.tokenize(token.encode("utf-8"), add_bos=False, special=True)
            memo[token] = (len(ids) == 1 and model.token_get_text(ids[0]) == token
                           and bool(llama_cpp.llama_vocab_get_attr(model.vocab, ids[0]) & wanted))
        return memo[token]

    eos_id = model.token_eos()
    eos = model.token_get_text(eos_id) if eos_id >= 0 else None
    return detect(has, source or f"the GGUF {Path(getattr(model, 'path_model', '') or 'model').name}", eos)


def scheme_named(name: str, source: str = "the deployment record") -> FimScheme:
    """A scheme from its recorded name (a deployment record keeps the name): the family's full token set."""
    if name == "none":
        return FimScheme(None, None, None, EOT, (), source)
    if name not in FAMILIES:
        raise ValueError(f"unknown FIM scheme {name!r}; expected one of {', '.join(SCHEMES)}")
    repo, file = {"qwen": (REPO_NAME, FILE_SEP), "starcoder": ("<repo_name>", "<file_sep>")}.get(name, (None, None))
    end = {"codellama": "</s>", "deepseek": TEXT_ENDS[2]}.get(name, EOT)
    return FimScheme(FAMILIES[name], repo, file, end, CHAT_TOKENS if name == "qwen" else (), source)


CANONICAL_SCHEME = scheme_named("qwen", "Forge's canonical markup")


def is_fim_text(text: str) -> bool:
    """Whether a dataset text is a FIM sample (it holds the canonical middle token)."""
    return FIM_MIDDLE in text


def drop_fim(records: list[dict], scheme: FimScheme) -> tuple[list[dict], int]:
    """(records without the FIM samples, how many were dropped) when the base has no FIM tokens; else (records, 0)."""
    if scheme.has_fim:
        return records, 0
    kept = [r for r in records if r.get("kind") != "fim" and not is_fim_text(r["text"])]
    return kept, len(records) - len(kept)


def configured_base_scheme(base_model: str, base_dir: Path) -> tuple[FimScheme | None, str]:
    """The scheme of forge.yaml's `base_model` as far as it can be known without loading (or downloading) anything:
    forge-tiny has the canonical tokens; a local folder is read; a Hugging Face id is read from the local hub cache when
    it is there. Returns (scheme or None when unknown, a sentence saying which base it is)."""
    if base_model == "forge-tiny":
        return CANONICAL_SCHEME, "`forge-tiny` (Qwen FIM tokens)"
    p = Path(base_model).expanduser()
    p = p if p.is_absolute() else Path(base_dir) / p
    if p.is_dir():
        return scheme_of_folder(p), f"`{base_model}`"
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(base_model, local_files_only=True, allow_patterns=["tokenizer*.json"]))
        return scheme_of_folder(cached), f"`{base_model}`"
    except Exception:  # noqa: BLE001 - not in the local cache (or not an id): unknown until base_model is built
        return None, f"`{base_model}` (not available locally yet)"
