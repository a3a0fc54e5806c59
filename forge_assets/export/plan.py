"""What the `gguf` stage builds for a language, decided from forge.yaml's `deploy:` block: plain code, no Dagster.

- `needs_merge(deploy)`: the adapter merged into its base (one GGUF per language) rather than the shared base GGUF
  + a LoRA GGUF. `deploy.merge` asks for it; a target that serves merged files only (`MERGED_ONLY_TARGETS`) needs it.
- `base_gguf_folder(root, base_version, qtype, intermediate)`: the shared base GGUF's folder under the artifact
  root, named by the base version, the quantization, the converter's version (`BASE_GGUF_VERSION`: a base GGUF
  written by an older converter is not reused) and a non-default intermediate type.
"""

from __future__ import annotations

from pathlib import Path

from forge_assets.deploy import targets

BASE_GGUF_VERSION = "5"  # the converter's output for a base; bump when the base GGUF's bytes change
# Deploy targets that serve one merged GGUF per language, never a LoRA GGUF on a shared base (Ollama): each target
# says so itself (DeployTarget.serves_merged_only), so a new target needs no edit here.
MERGED_ONLY_TARGETS = frozenset(name for name, t in targets.TARGETS.items() if t.serves_merged_only)


def needs_merge(deploy) -> bool:
    """Whether `gguf` merges the adapter into the base for this `deploy:` block."""
    return bool(deploy.merge) or deploy.target in MERGED_ONLY_TARGETS


def base_gguf_folder(root: Path, base_version: str, qtype: str, intermediate: str = "auto") -> Path:
    """`<root>/base_gguf/<base version[:16]>-<qtype>-v<BASE_GGUF_VERSION>[-<intermediate>]`, shared by every language."""
    suffix = "" if intermediate == "auto" else f"-{intermediate}"
    return Path(root) / "base_gguf" / f"{base_version[:16]}-{qtype}-v{BASE_GGUF_VERSION}{suffix}"
