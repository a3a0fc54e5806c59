"""What several `forge` commands share: the Dagster instance, the artifact store, splitting an error's cause from its
fix, and the argparse type of --language."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def instance():
    """The Dagster instance under $DAGSTER_HOME (default data/dagster_home, created)."""
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("data/dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.get()


def store(cfg, mirror: bool = False):
    """The artifact store; with mirror=True (a command that writes) mirrored to S3 as the Dagster runs do when FORGE_DEPLOYMENT=s3."""
    from forge_assets.artifacts import ArtifactStore

    if mirror and os.environ.get("FORGE_DEPLOYMENT") == "s3" and os.environ.get("FORGE_S3_BUCKET"):
        from dagster_aws.s3 import S3Resource

        from forge_assets.resources import ForgeResource

        return ForgeResource(s3_bucket=os.environ["FORGE_S3_BUCKET"], s3_prefix=os.environ.get("FORGE_S3_PREFIX", "forge"),
                             s3=S3Resource()).store(cfg)
    return ArtifactStore(cfg.artifact_path)


def split_fix(text: str) -> tuple[str, str]:
    """An error message's cause and its fix (the text after `Fix:`; a pointer to the run's log when it names none)."""
    cause, sep, fix = text.partition("Fix:")
    return cause.strip(), (fix.strip() if sep else "see the run's log (dagster dev, or the output above).")


def language(value: str) -> str:
    """argparse type of every --language: a name that can be a partition key and a folder (else a usage error, no traceback)."""
    from forge_assets.languages import language_name_problem

    problem = language_name_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value
