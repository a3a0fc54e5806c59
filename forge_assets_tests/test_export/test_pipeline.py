"""The gguf stage as plain code (export/pipeline.py): both shapes, the scratch files removed, the DoRA fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_assets.export.pipeline import LORA_FILE, export_gguf
from forge_assets_tests.conftest import PY_FILES
from forge_assets_tests.test_export.test_lora_gguf import make_peft_adapter

HELD_OUT = list(PY_FILES.values())


def _scratch(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())


@pytest.mark.parametrize("merge", [True, False])
def test_export_ships_scores_and_leaves_no_scratch_files(tiny_model: Path, tmp_path: Path, merge: bool):
    adapter = make_peft_adapter(tiny_model, tmp_path / "lora", seed=2)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    stages: list[str] = []
    scratch: list[int] = []

    def phase(name: str) -> None:  # scratch disk in use as each stage starts
        stages.append(name)
        scratch.append(sum(p.stat().st_size for p in work.rglob("*") if p.is_file()))

    figures = export_gguf(tiny_model, adapter, out, work, "Q8_0", "forge-python", phase=phase, held_out=HELD_OUT,
                          extra_quantizations=["Q4_K_M"], windows=3, window_tokens=64, log=lambda _: None, merge=merge,
                          base_folder=tmp_path / "base_gguf")
    assert _scratch(work) == []  # the unquantized intermediates and the extra type's file are gone
    # One unquantized F16 copy at a time: at most half this F32 checkpoint (the target is 2 × the model on disk).
    checkpoint = sum(p.stat().st_size for p in tiny_model.glob("*.safetensors"))
    assert 0 < max(scratch) <= 0.55 * checkpoint, (scratch, checkpoint)
    assert figures["intermediate"] == "F16" and figures["reference"] == "unquantized base GGUF (F16) + F16 LoRA GGUF"
    assert figures["architecture"] == "qwen2" and figures["tokenizer_pre"] == "qwen2"
    assert 0 < figures["reference_perplexity"] and abs(figures["quantization_loss_pct"]) < 5
    assert "Q4_K_M base + F16 LoRA" in figures["quantization_loss_by_type"]
    assert ("convert_reference" in stages) == merge  # the unmerged export keeps the base's intermediate as the reference
    assert figures["smoke_completion_tokens"] > 0
    if merge:
        assert figures["served_as"] == "merged" and (out / "model-Q8_0.gguf").is_file()
        assert figures["tensor_types"]["Q8_0"] > 0 and "convert_base" not in stages
    else:
        assert figures["served_as"] == "base+lora" and (out / LORA_FILE).is_file()
        assert (tmp_path / "base_gguf" / "base-Q8_0.gguf").is_file() and "convert_base" in stages
        assert sorted(p.name for p in (tmp_path / "base_gguf").iterdir()) == [".lock", "base-Q8_0.gguf"]
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_dora_adapter_is_served_merged_through_its_backend(tiny_model: Path, tmp_path: Path):
    adapter = make_peft_adapter(tiny_model, tmp_path / "dora", seed=3, use_dora=True)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    lines: list[str] = []
    figures = export_gguf(tiny_model, adapter, out, work, "Q8_0", "forge-python", held_out=HELD_OUT, windows=2,
                          window_tokens=64, log=lines.append, merge=False, base_folder=tmp_path / "base_gguf")
    assert figures["served_as"] == "merged" and "DoRA" in figures["merged_because"]
    assert (out / "model-Q8_0.gguf").is_file() and not (out / LORA_FILE).exists()
    assert any("merging dora with its training backend first" in ln for ln in lines)
    assert _scratch(work) == []  # the merged model folder is removed too
    assert figures["reference"] == "transformers + PEFT (F32)"  # DoRA has no LoRA GGUF to apply to the unquantized base
    assert abs(figures["quantization_loss_pct"]) < 5
