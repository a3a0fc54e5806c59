"""The dataset card says what FIM samples become for the configured base: kept as they are (forge-tiny, Qwen), written in
the base's own tokens (StarCoder, ...), or skipped with a warning (a base without FIM tokens)."""

from __future__ import annotations

from pathlib import Path

from forge_assets.fim_tokens import NO_FIM, configured_base_scheme, scheme_named
from forge_assets.mining.dataset import Dataset, dataset_card, fim_note


def _dataset(fim: int) -> Dataset:
    return Dataset("python", {"train": [], "valid": [], "test": []}, {"samples_by_kind": {"code": 10, "fim": fim}})


def test_the_configured_base_is_read_without_loading_or_downloading(tmp_path: Path):
    from forge_assets.export.random_models import build_tokenizer

    tiny, named = configured_base_scheme("forge-tiny", tmp_path)
    assert tiny.name == "qwen" and tiny.canonical and "forge-tiny" in named
    build_tokenizer("llama3", tmp_path / "llama3")  # tokenizer files alone: no config.json, no weights
    plain, named = configured_base_scheme("llama3", tmp_path)  # a path relative to forge.yaml's folder
    assert plain.name == "none" and named == "`llama3`"
    unknown, named = configured_base_scheme("nobody/not-cached-model", tmp_path)  # a hub id not in the local cache
    assert unknown is None and "not available locally yet" in named


def test_the_card_warns_when_the_configured_base_has_no_fim_tokens(tmp_path: Path):
    from forge_assets.export.random_models import build_tokenizer

    build_tokenizer("llama3", tmp_path / "llama3")
    base = configured_base_scheme(str(tmp_path / "llama3"), tmp_path)
    card = dataset_card(_dataset(7), base)
    assert "**Warning: the 7 FIM samples will be skipped** for the configured base" in card
    assert NO_FIM in card and str(tmp_path / "llama3") in card and "Fix:" in card


def test_the_card_names_the_base_tokens_or_says_nothing_changes():
    tiny = fim_note(_dataset(3), (scheme_named("qwen"), "`forge-tiny` (Qwen FIM tokens)"))
    assert tiny == ["FIM samples are written in Forge's canonical markup (Qwen2.5-Coder's tokens), which the configured base "
                    "`forge-tiny` (Qwen FIM tokens) reads as they are."]
    (star,) = fim_note(_dataset(3), (scheme_named("starcoder"), "`bigcode/starcoder2-3b`"))
    assert "StarCoder / StarCoder2 tokens (`<fim_prefix>` `<fim_suffix>` `<fim_middle>`)" in star and "Warning" not in star
    (deepseek,) = fim_note(_dataset(3), (scheme_named("deepseek"), "`deepseek`"))
    assert "PSM only" in deepseek
    (unknown,) = fim_note(_dataset(3), (None, "`Org/Model` (not available locally yet)"))
    assert "cannot be read yet" in unknown and "fim_skipped" in unknown
    assert "configured base" not in dataset_card(_dataset(3))  # without a base the card says nothing about one
    assert "canonical (Qwen) tokens" in dataset_card(_dataset(3))
