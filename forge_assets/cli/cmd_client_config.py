"""`forge client-config`: a ready-to-paste OpenCode, Continue or Tabby configuration for the deployed tags."""

from __future__ import annotations

import sys
from pathlib import Path


def client_config(kind: str, language: str | None, write: str | None) -> int:
    """Print (or write) a ready-to-paste OpenCode, Continue or Tabby configuration for the deployed tags."""
    from forge_assets.artifacts import ArtifactError, ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy import clients
    from forge_assets.deploy.service import served

    cfg = load_config()
    try:
        name, text = clients.render(kind, served(ArtifactStore(cfg.artifact_path), cfg, language=language), language)
    except (ArtifactError, ValueError) as exc:
        print(f"forge client-config: {exc}", file=sys.stderr)
        return 1
    if write:
        Path(write).write_text(text)
        print(f"forge client-config: wrote {write} ({name} for {kind})", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
