"""`forge client-config`: a ready-to-paste OpenCode, Continue or Tabby configuration for the deployed tags."""

from __future__ import annotations

import sys
from pathlib import Path


def _generation_settings(store, cfg, languages: list[str]) -> dict:
    """{language: the generation settings its tag is served with} (deploy/service.generation_settings, for the gguf
    version its promoted deployment serves; without one, forge.yaml's values with no template default), for models
    whose deployment record does not carry them."""
    from forge_assets.artifacts import ArtifactError
    from forge_assets.deploy.service import _read_json, generation_settings
    from forge_assets.deploy.settings import generation

    out = {}
    for lang in languages:
        dep = store.promoted("deployment", lang)
        version = _read_json(dep.path / "deployment.json").get("gguf") if dep is not None else None
        try:
            out[lang] = generation_settings(cfg, lang, store.get("gguf", lang, version)) if version else None
        except (ArtifactError, OSError, ValueError):
            out[lang] = None
        if out[lang] is None:
            out[lang] = generation(cfg.deploy, lang, None)
    return out


def client_config(kind: str, language: str | None, write: str | None) -> int:
    """Print (or write) a ready-to-paste OpenCode, Continue or Tabby configuration for the deployed tags."""
    from forge_assets.artifacts import ArtifactError, ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy import clients
    from forge_assets.deploy.service import served

    cfg = load_config()
    try:
        store = ArtifactStore(cfg.artifact_path)
        endpoint = served(store, cfg, language=language)
        endpoint = clients.with_generation(endpoint, _generation_settings(store, cfg, endpoint.languages))
        name, text = clients.render(kind, endpoint, language)
    except (ArtifactError, ValueError) as exc:
        print(f"forge client-config: {exc}", file=sys.stderr)
        return 1
    if write:
        Path(write).write_text(text)
        print(f"forge client-config: wrote {write} ({name} for {kind})", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
