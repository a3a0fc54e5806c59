"""FIM on every base: each family's FIM tokens found in its vocabulary, canonical (Qwen) samples written with the base's
own token ids, and a base without FIM tokens skipping FIM samples and FIM evaluation with the reason.

The tokenizers are built here (random_models' forge-tiny, Llama-3 and SentencePiece-style ones, trained on Forge's
source in a second) and given each family's special tokens, as the real families' tokenizers have them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_assets.chat import EOT, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, IM_END, IM_START, REPO_NAME
from forge_assets.fim_tokens import (FAMILIES, NO_FIM, scheme_named, scheme_of_folder, scheme_of_gguf, scheme_of_tokenizer)
from forge_assets.mining.fim import header
from forge_assets.training.samples import IGNORE, Tok, encode

STARCODER = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>"]
CODELLAMA = ["\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>", "\u2581<EOT>"]
DEEPSEEK = ["<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"]
SMOLLM2 = ["<|endoftext|>", IM_START, IM_END, "<repo_name>", "<reponame>", "<file_sep>", "<filename>"]  # no FIM tokens

PRE, SUF, MID = "def handle(request):\n    ", "\n    return reply\n", "reply = store.get(request)"
PSM = f"{header('shop', 'app/h.py')}{FIM_PREFIX}{PRE}{FIM_SUFFIX}{SUF}{FIM_MIDDLE}{MID}{EOT}"
SPM = f"{header('shop', 'app/h.py')}{FIM_PREFIX}{FIM_SUFFIX}{SUF}{FIM_MIDDLE}{PRE}{MID}{EOT}"
CODE = f"{header('shop', 'app/h.py')}x = 1\n{EOT}"


def _with_tokens(kind: str, extra: list[str], out: Path):
    """random_models' `kind` tokenizer with `extra` special tokens, saved to out and loaded back."""
    from transformers import AutoTokenizer

    from forge_assets.export.random_models import build_tokenizer

    build_tokenizer(kind, out / "src")
    tok = AutoTokenizer.from_pretrained(out / "src", local_files_only=True)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out, local_files_only=True)


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fimtok")
    return {
        "qwen": _with_tokens("forge-tiny", [], root / "qwen"),
        "starcoder": _with_tokens("llama3", STARCODER, root / "starcoder"),
        "codellama": _with_tokens("spm", CODELLAMA, root / "codellama"),
        "deepseek": _with_tokens("spm", DEEPSEEK, root / "deepseek"),
        "smollm2": _with_tokens("llama3", SMOLLM2, root / "smollm2"),
        "llama3": _with_tokens("llama3", [], root / "llama3"),
    }


def _id(tok, token: str) -> int:
    vocab = tok.get_vocab()
    assert token in vocab, token
    return vocab[token]


def _enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind, scheme", [("qwen", "qwen"), ("starcoder", "starcoder"), ("codellama", "codellama"),
                                          ("deepseek", "deepseek"), ("smollm2", "none"), ("llama3", "none")])
def test_each_family_is_found_in_the_tokenizer_and_its_folder(toks, kind, scheme):
    tok = toks[kind]
    found = scheme_of_tokenizer(tok)
    assert found.name == scheme
    assert scheme_of_folder(Path(tok.name_or_path)).name == scheme  # the tokenizer files alone, no weights
    if scheme != "none":
        f = found.family
        assert found.has_fim and not found.skip_reason
        assert len({_id(tok, t) for t in (f.prefix, f.suffix, f.middle)}) == 3  # three distinct single tokens
    else:
        assert not found.has_fim and found.skip_reason.startswith(NO_FIM)
        assert "<|fim_prefix|>" in found.skip_reason and str(tok.name_or_path) in found.skip_reason  # names the base and what is missing
    expected_repo = {"qwen": (REPO_NAME, FILE_SEP), "starcoder": ("<repo_name>", "<file_sep>"), "smollm2": ("<repo_name>", "<file_sep>")}
    assert (found.repo, found.file) == expected_repo.get(kind, (None, None))
    assert found.end == {"codellama": "</s>", "deepseek": DEEPSEEK[3], "llama3": "<|end_of_text|>"}.get(kind, EOT)


def test_forge_tiny_ids_are_what_its_tokenizer_gives(toks):
    """The canonical base: Tok changes nothing (the same ids as the tokenizer, the markers single special ids)."""
    tok = toks["qwen"]
    t = Tok(tok)
    assert t.scheme.canonical
    for text in (PSM, SPM, CODE):
        assert t(text) == _enc(tok, text)


@pytest.mark.parametrize("kind", ["starcoder", "codellama", "deepseek"])
def test_a_canonical_psm_sample_becomes_the_base_ids_in_order(toks, kind):
    tok = toks[kind]
    f = FAMILIES[kind]
    enc = encode([PSM], tok, 512)
    (ex,) = enc.examples
    head = []  # CodeLlama and DeepSeek have no repository tokens: the header is left out
    if kind == "starcoder":  # StarCoder2's repository format: <repo_name>shop<file_sep>app/h.py\n
        head = [_id(tok, "<repo_name>")] + _enc(tok, "shop") + [_id(tok, "<file_sep>")] + _enc(tok, "app/h.py\n")
    end = {"codellama": "\u2581<EOT>", "deepseek": DEEPSEEK[3]}.get(kind, "<|endoftext|>")
    prompt = head + [_id(tok, f.prefix)] + _enc(tok, PRE) + [_id(tok, f.suffix)] + _enc(tok, SUF) + [_id(tok, f.middle)]
    answer = _enc(tok, MID) + [_id(tok, end)]
    assert ex.ids == prompt + answer
    assert ex.labels == [IGNORE] * len(prompt) + answer  # the loss on the middle and its end, in the base's tokens
    assert tok.unk_token_id is None or tok.unk_token_id not in ex.ids  # no canonical marker became an unknown id


def test_an_spm_sample_keeps_the_variant_order(toks):
    tok = toks["starcoder"]
    (ex,) = encode([SPM], tok, 512).examples
    ids = [_id(tok, t) for t in ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")]
    at = len(ex.ids) - len(_enc(tok, SUF)) - len(_enc(tok, PRE + MID)) - 4
    assert ex.ids[at:at + 2] == ids[:2]  # prefix token, suffix token, the suffix, middle token, prefix + middle
    assert ex.ids[at + 2 + len(_enc(tok, SUF))] == ids[2]


def test_a_base_without_fim_tokens_drops_fim_samples_and_maps_headers(toks):
    for kind in ("smollm2", "llama3"):
        tok = toks[kind]
        enc = encode([PSM, CODE], tok, 512)
        assert enc.dropped["no_fim_tokens"] == 1 and len(enc.examples) == 1
        ids = enc.examples[0].ids
        assert None not in ids and (tok.unk_token_id is None or tok.unk_token_id not in ids)
        if kind == "smollm2":  # StarCoder-style repository tokens: <repo_name>shop<file_sep>app/h.py\n
            assert ids[:1] == [_id(tok, "<repo_name>")] and _id(tok, "<file_sep>") in ids
            assert ids[-1] == _id(tok, EOT)
        else:  # no repository or file token: the header is left out; the end of text is Llama 3's
            assert tok.decode(ids) == "x = 1\n<|end_of_text|>"
            assert Tok(tok).special[REPO_NAME] is None and Tok(tok).special[FIM_PREFIX] is None


def test_read_records_skips_fim_samples_for_a_base_without_fim_tokens(toks, tmp_path: Path):
    from forge_assets.training.data import read_records, read_texts

    rows = [{"kind": "code", "text": CODE}, {"kind": "fim", "text": PSM}, {"kind": "fim", "text": SPM}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines: list[str] = []
    none = scheme_of_folder(Path(toks["smollm2"].name_or_path))
    assert [r["text"] for r in read_records(tmp_path, "train", fim=none, log=lines.append)] == [CODE]
    (warning,) = lines
    assert warning.startswith("WARNING: skipped 2 fill-in-the-middle samples") and "train.jsonl" in warning
    assert NO_FIM in warning and str(toks["smollm2"].name_or_path) in warning and "Fix:" in warning
    starcoder = scheme_of_folder(Path(toks["starcoder"].name_or_path))
    assert read_texts(tmp_path, "train", fim=starcoder, log=lines.append) == [CODE, PSM, SPM] and len(lines) == 1


def test_scheme_prompts_and_stops():
    assert scheme_named("qwen").psm("a", "b", "r", "p") == f"{REPO_NAME}r\n{FILE_SEP}p\n{FIM_PREFIX}a{FIM_SUFFIX}b{FIM_MIDDLE}"
    assert scheme_named("starcoder").psm("a", "b", "r", "p") == "<repo_name>r<file_sep>p\n<fim_prefix>a<fim_suffix>b<fim_middle>"
    assert scheme_named("starcoder").spm("a", "b") == "<fim_prefix><fim_suffix>b<fim_middle>a"
    assert scheme_named("codellama").psm("a", "b", "r", "p") == "\u2581<PRE>a\u2581<SUF>b\u2581<MID>"  # no repository tokens
    assert scheme_named("deepseek").psm("a", "b") == f"{DEEPSEEK[0]}a{DEEPSEEK[1]}b{DEEPSEEK[2]}"
    with pytest.raises(ValueError, match="PSM prompts only"):
        scheme_named("deepseek").spm("a", "b")
    with pytest.raises(ValueError, match="use chat or plain completion"):
        scheme_named("none").psm("a", "b")
    from forge_assets.chat import FIM_STOP_TOKENS

    assert scheme_named("qwen").stop_tokens() == FIM_STOP_TOKENS
    assert {"<|endoftext|>", "<fim_prefix>", "<file_sep>"} <= set(scheme_named("starcoder").stop_tokens())
    assert "\u2581<EOT>" in scheme_named("codellama").stop_tokens()


def test_gguf_vocabulary_detection(tmp_path: Path):
    """gguf-py's reader: control tokens count, ordinary vocabulary entries do not."""
    import gguf

    def write(name: str, tokens: list[str], control: set[str]) -> Path:
        path = tmp_path / name
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([int(gguf.TokenType.CONTROL if t in control else gguf.TokenType.NORMAL) for t in tokens])
        w.add_eos_token_id(0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        return path

    words = ["a", "b", "c"]
    star = write("star.gguf", ["<|endoftext|>", *words, *STARCODER[1:]], set(STARCODER))
    assert scheme_of_gguf(star).name == "starcoder" and scheme_of_gguf(star).file == "<file_sep>"
    plain = write("plain.gguf", ["<|endoftext|>", *words, "<fim_prefix>", "<fim_suffix>", "<fim_middle>"], {"<|endoftext|>"})
    assert scheme_of_gguf(plain).name == "none"  # the FIM strings are ordinary text there, not special tokens


def test_a_base_without_fim_tokens_trains_and_scores_without_fim_and_says_why(toks, tmp_path: Path):
    """A small random Llama with SmolLM2's kind of vocabulary (ChatML, <repo_name>, <file_sep>, no FIM tokens): the adapter
    trains on code only and reports the skipped FIM samples; evaluation scores no FIM case and says why; the FIM gate is
    reported skipped (neither failed nor passed on a comparison), and the table carries the warning."""
    from forge_assets.config import GatesConfig, TrainingConfig
    from forge_assets.evaluation.gate import fim_gate, judge_eval
    from forge_assets.evaluation.scores import evaluate, markdown_table
    from forge_assets.export.random_models import build_random_model
    from forge_assets_tests.test_export.test_lora_gguf import make_peft_adapter

    from ..conftest import PY_FILES

    base = build_random_model("llama", tmp_path / "base", tokenizer="forge-tiny", tokenizer_source=Path(toks["smollm2"].name_or_path),
                              hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1, num_layers=1)
    data = tmp_path / "data"
    data.mkdir()
    src = PY_FILES["app/handlers.py"]
    code = [{"kind": "code", "repo": "shop", "path": p, "text": header("shop", p) + s + EOT} for p, s in PY_FILES.items()]
    fim = [{"kind": "fim", "repo": "shop", "path": "app/handlers.py",
            "text": f"{header('shop', 'app/handlers.py')}{FIM_PREFIX}{src[:120]}{FIM_SUFFIX}{src[160:]}{FIM_MIDDLE}{src[120:160]}{EOT}"}]
    for split, rows in {"train": code + fim * 3, "valid": code[:1], "test": code + fim}.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    from forge_assets.training.adapter import train_adapter

    lines: list[str] = []
    cfg = TrainingConfig(backend="peft", rank=4, alpha=8, max_steps=1, batch_size=2, seq_len=128)
    result = train_adapter(base, data, tmp_path / "adapter", cfg, log=lines.append)
    assert result["fim_scheme"] == "none" and result["fim_samples_skipped"] == 3 and result["fim_skipped"].startswith(NO_FIM)
    assert any(line.startswith("WARNING: skipped 3 fill-in-the-middle samples") and str(base) in line for line in lines)

    adapter = make_peft_adapter(base, tmp_path / "peft", seed=1)
    lines.clear()
    scores = evaluate(base, adapter, data, 128, {"fim_cases": 20, "codebleu_samples": 0, "humaneval": {"problems": 0}},
                      language="python", log=lines.append)
    assert scores["fim_cases"] == 0 and scores["fim_scheme"] == "none" and scores["fim_samples_skipped"] == 1
    assert "test_samples_fim" not in scores and scores["test_samples_code"] == len(code)  # FIM left out of perplexity
    assert scores["fim_skipped"].startswith(NO_FIM) and any(line.startswith("WARNING: FIM evaluation skipped") for line in lines)
    verdict = fim_gate(scores, GatesConfig())
    assert verdict.skipped and verdict.passed and verdict.message.startswith("skipped: base has no FIM tokens")
    assert "it passes" not in verdict.message
    assert [v.name for v in judge_eval(scores, GatesConfig()) if v.skipped] == ["fim_not_worse_than_base", "not_worse_than_served"]  # no champion here
    table = markdown_table(scores)
    assert table.startswith("**Warning: FIM skipped**") and "1 FIM samples left out" in table and "| perplexity |" in table


def test_fim_eval_cases_prompt_in_the_base_tokens_and_cut_at_its_markers():
    from forge_assets.evaluation.fim_eval import build_cases, truncate_middle

    from ..conftest import PY_FILES

    files = [("shop", p, s) for p, s in PY_FILES.items()]
    canonical = build_cases(files, "python", max_cases=6, seed=3)
    star = build_cases(files, "python", max_cases=6, seed=3, scheme=scheme_named("starcoder"))
    assert [(c.prefix, c.middle, c.suffix) for c in star] == [(c.prefix, c.middle, c.suffix) for c in canonical]  # the same cases
    for c, s in zip(canonical, star):
        assert c.prompt.startswith(f"{REPO_NAME}shop\n{FILE_SEP}{c.path}\n{FIM_PREFIX}")
        assert s.prompt == f"<repo_name>shop<file_sep>{s.path}\n<fim_prefix>{s.prefix}<fim_suffix>{s.suffix}<fim_middle>"
    block = next(c for c in star if c.kind == "block")
    assert truncate_middle("    return x\n<file_sep>app/other.py\n", block) == "    return x\n"
    assert truncate_middle("    x = 1\n\u2581<EOT>junk", block) == "    x = 1\n"


def test_perplexity_batches_take_the_ids_training_takes(toks):
    """Evaluation's perplexity batches tokenize canonical texts through Tok: a CodeLlama base is scored on ▁<PRE>… ids as it
    was trained (its tokenizer alone would read <|fim_prefix|> as text), forge-tiny on its tokenizer's own ids."""
    from forge_assets.training.data import batches

    for kind in ("codellama", "qwen"):
        tok = toks[kind]
        (ids, mask, labels), = batches(tok, [PSM], 512, 4)
        assert ids[0].tolist() == Tok(tok)(PSM) and bool(mask.all())
    assert Tok(toks["codellama"])(PSM) != _enc(toks["codellama"], PSM)
