"""Fixtures for the deploy tests: one tiny Q8_0 GGUF per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def q8_gguf(tiny_model: Path, tmp_path_factory) -> Path:
    """forge-tiny converted to GGUF and quantized to Q8_0 by llama.cpp."""
    from forge_assets.export.gguf_export import convert_to_gguf, quantize

    folder = tmp_path_factory.mktemp("q8")
    convert_to_gguf(tiny_model, folder / "f32.gguf", "F32")
    quantize(folder / "f32.gguf", folder / "model-Q8_0.gguf", "Q8_0")
    return folder / "model-Q8_0.gguf"
