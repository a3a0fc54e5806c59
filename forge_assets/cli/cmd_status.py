"""`forge status`: the shared endpoint, then each language's versions, deployment and promotion, as JSON
(assembled by forge_assets.deploy.status)."""

from __future__ import annotations

import json


def status(languages: list[str] | None = None, endpoint: bool | None = None) -> int:
    """Print each language's latest artifact versions and deployment, checking the endpoint over HTTP.

    The endpoint block is printed when `endpoint` is True, or (None) when no language was named.
    """
    from forge_assets.artifacts import ArtifactStore
    from forge_assets.config import load_config
    from forge_assets.deploy import status as report

    cfg = load_config()
    store = ArtifactStore(cfg.artifact_path)
    if (not languages if endpoint is None else endpoint) and (shared := report.endpoint_status(store)) is not None:
        print(json.dumps(shared, indent=2))
    for lang in languages or report.languages(store):
        print(json.dumps(report.language_status(store, cfg, lang), indent=2))
    return 0
