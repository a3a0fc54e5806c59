"""Forge's Dagster definitions: the asset chain per language, the git push sensor, forge.yaml's schedule (if any), resources
per deployment."""

from __future__ import annotations

import os

from dagster import AssetSelection, Definitions, EnvVar, define_asset_job, load_asset_checks_from_modules, load_assets_from_modules
from dagster_aws.s3 import S3Resource

from forge_assets.assets import adapters, base_model, datasets, deploy, evals, export, sessions, snapshots
from forge_assets.partitions import language_partitions
from forge_assets.resources import ForgeResource
from forge_assets.schedules import build_schedules, schedule_settings
from forge_assets.sensors import LANGUAGE_ASSETS, git_push_sensor

STAGES = [snapshots, sessions, datasets, base_model, adapters, evals, export, deploy]
all_assets = load_assets_from_modules(STAGES)
all_checks = load_asset_checks_from_modules(STAGES)

# The main job: one language's whole chain, commit to deployed tag (base_model is built or reused first).
forge_job = define_asset_job("forge", selection=AssetSelection.all(), partitions_def=language_partitions)
language_job = define_asset_job("language_chain", selection=LANGUAGE_ASSETS, partitions_def=language_partitions)

RESOURCES = {
    "local": {"forge": ForgeResource()},
    "s3": {"forge": ForgeResource(s3_bucket=EnvVar("FORGE_S3_BUCKET"), s3_prefix=os.environ.get("FORGE_S3_PREFIX", "forge"), s3=S3Resource())},
    # Heavy steps as Kubernetes pods through dagster-k8s's PipesK8sClient (docs/kubernetes.md).
    "k8s": {"forge": ForgeResource(step_runner="k8s", k8s_image=EnvVar("FORGE_K8S_IMAGE"), k8s_namespace=os.environ.get("FORGE_K8S_NAMESPACE", ""),
                                   k8s_pvc=os.environ.get("FORGE_K8S_PVC", ""), k8s_gpus=int(os.environ.get("FORGE_K8S_GPUS", "0")),
                                   k8s_memory=os.environ.get("FORGE_K8S_MEMORY", ""))},
}


def deployment_name() -> str:
    """Which resource set to use: $FORGE_DEPLOYMENT (local or s3), default local."""
    name = os.environ.get("FORGE_DEPLOYMENT", "local")
    if name not in RESOURCES:
        raise ValueError(f"FORGE_DEPLOYMENT={name!r} is not one of {sorted(RESOURCES)}. Fix: unset it or use one of those.")
    return name


def make_definitions(config_path: str | None = None) -> Definitions:
    """The Definitions; with forge.yaml's `schedule:` (read now, from config_path or $FORGE_CONFIG / ./forge.yaml) they
    hold forge_schedule, otherwise no schedule at all."""
    return Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[forge_job, language_job],
        sensors=[git_push_sensor],
        schedules=build_schedules(schedule_settings(config_path), language_job) or None,  # None: exactly as without a schedule
        resources=RESOURCES[deployment_name()],
    )


defs = make_definitions()
