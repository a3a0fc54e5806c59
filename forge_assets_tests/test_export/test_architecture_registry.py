"""The architecture registry (forge_assets/architectures) is the only place a model family is described."""

from __future__ import annotations

import ast
from pathlib import Path

import forge_assets
from forge_assets.architectures import FAMILIES, BY_HF_ARCHITECTURE, BY_MODEL_TYPE, lookup, of_config


def test_no_other_module_holds_a_table_of_architectures():
    """A set, list, tuple or dict literal naming two or more registered model types or architecture classes outside
    the registry is another architecture table (as LORA_TARGETS, ADAPTER_ARCHITECTURES and CHUNKED_TYPES were)."""
    names = set(BY_MODEL_TYPE) | set(BY_HF_ARCHITECTURE)
    root = Path(forge_assets.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if "architectures" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None) \
                if isinstance(node, (ast.Set, ast.List, ast.Tuple)) else None
            hits = [k.value for k in items or [] if isinstance(k, ast.Constant) and k.value in names]
            if len(hits) >= 2:
                found.append(f"{path.relative_to(root)}:{node.lineno} {hits}")
    assert not found, found


def test_every_family_is_complete_and_consistent():
    import gguf

    for name, fam in FAMILIES.items():
        assert hasattr(gguf.MODEL_ARCH, fam.gguf_arch), name
        assert fam.model_types and fam.hf_architectures and fam.lora_modules, name
        assert all(lookup(t) is fam for t in fam.model_types)
        assert fam.is_moe == bool(fam.expert_parameters) == bool(fam.mlx_expert_modules), name
        if fam.vllm_lora_modules:
            assert set(fam.lora_modules) <= fam.vllm_lora_modules, f"{name}: Forge trains what vLLM cannot serve"
        assert fam.random_config is None or isinstance(fam.random_config(), dict)
    assert FAMILIES["mistral"].llama_cpp_lora and FAMILIES["mistral"].permute_qk  # served unmerged like Llama


def test_an_unknown_model_type_is_refused_naming_the_families():
    import pytest

    from forge_assets.architectures import UnknownArchitecture

    with pytest.raises(UnknownArchitecture, match=r"model_type `gemma2`.*qwen3_moe \(Qwen3 MoE.*docs/architectures.md"):
        of_config({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]})
