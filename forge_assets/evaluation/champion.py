"""Which adapter a candidate is judged against: the champion, the language's promoted (served) adapter.

Plain code over the artifact store. The champion must be trained on the same base model version as the
candidate (a new base makes the perplexities incomparable): a first run, or a run on a new base, has no
champion and says why. A candidate that *is* the promoted adapter (the chain re-run on unchanged inputs)
keeps the champion its promoting evaluation was judged against, so that evaluation is reused, not redone.
"""

from __future__ import annotations

from forge_assets.artifacts import Artifact, ArtifactError, ArtifactStore


def resolve_champion(store: ArtifactStore, language: str, candidate: Artifact, base_version: str) -> tuple[Artifact | None, str | None]:
    """(the champion adapter, None), or (None, why there is none)."""
    served = store.promoted("adapter", language)
    if served is None:
        return None, f"first run: no `{language}` adapter has been promoted yet"
    if served.version == candidate.version:
        ev = store.promoted("eval_scores", language)
        inputs = ev.manifest().get("inputs", {}) if ev is not None else {}
        if inputs.get("adapter") == candidate.version and inputs.get("champion"):
            try:
                return store.get("adapter", language, inputs["champion"]), None
            except ArtifactError:
                pass  # removed by `forge gc`: judged without one
        return None, f"the candidate {candidate.version[:12]} is the served adapter itself"
    served_base = served.manifest().get("inputs", {}).get("base_model")
    if served_base != base_version:
        return None, (f"the served adapter {served.version[:12]} was trained on base_model {str(served_base)[:12]}, the candidate on "
                      f"{base_version[:12]} (a new base): their figures are not comparable")
    return served, None
