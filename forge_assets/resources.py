"""Resources: forge.yaml and the artifact store, chosen per deployment (local disk, or S3 mirror)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource

from forge_assets.artifacts import ArtifactStore
from forge_assets.config import ForgeConfig, load_config


class S3Mirror:
    """Copies each completed artifact version to s3://bucket/prefix/<asset>/<language>/<version>/."""

    def __init__(self, client, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def upload_folder(self, local: Path, key_prefix: str) -> None:
        for p in sorted(local.rglob("*")):
            if p.is_file():
                self.client.upload_file(str(p), self.bucket, self._key(f"{key_prefix}/{p.relative_to(local).as_posix()}"))

    def put_text(self, rel: str, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=text.encode())


@dataclass(frozen=True)
class Partition:
    """What an asset works on: forge.yaml, the artifact store, and the partition's language (`all` when unpartitioned)."""

    cfg: ForgeConfig
    store: ArtifactStore
    language: str

    def __iter__(self):
        """`cfg, store, language = forge.partition(context)`."""
        return iter((self.cfg, self.store, self.language))


class ForgeResource(ConfigurableResource):
    """Forge's configuration (forge.yaml) and artifact store for a deployment."""

    config_path: str = ""  # empty: $FORGE_CONFIG, else ./forge.yaml
    s3_bucket: str = ""  # set to mirror every artifact version to S3
    s3_prefix: str = "forge"
    s3: S3Resource | None = None
    # Where heavy steps (training, merging, GGUF export, llama.cpp) run: a local subprocess, or a Kubernetes pod.
    step_runner: str = "subprocess"  # subprocess | k8s
    k8s_image: str = ""  # an image with Forge installed (pip install forge_assets), for step_runner k8s
    k8s_namespace: str = ""  # empty: the current namespace
    k8s_pvc: str = ""  # a PersistentVolumeClaim holding the artifact root, mounted in the pod at the same path
    k8s_gpus: int = 0  # nvidia.com/gpu limit of a step pod
    k8s_memory: str = ""  # memory limit of a step pod, e.g. 64Gi

    def setup_for_execution(self, context) -> None:
        """Tag the run with the process group executing it, so `forge run` can fail it if that group is killed."""
        from forge_assets.runs import PGID_TAG, owner_tags

        run = getattr(context, "run", None)
        if run is not None and context.instance is not None and PGID_TAG not in run.tags:
            context.instance.add_run_tags(run.run_id, owner_tags())

    def load(self) -> ForgeConfig:
        return load_config(self.config_path or None)

    def store(self, cfg: ForgeConfig | None = None) -> ArtifactStore:
        cfg = cfg or self.load()
        mirror = S3Mirror(self.s3.get_client(), self.s3_bucket, self.s3_prefix) if (self.s3_bucket and self.s3) else None
        return ArtifactStore(cfg.artifact_path, mirror=mirror)

    def partition(self, context) -> Partition:
        """forge.yaml, its store and the run's language partition (`all` for an unpartitioned asset), loaded once."""
        cfg = self.load()
        return Partition(cfg, self.store(cfg), context.partition_key if context.has_partition_key else "all")
