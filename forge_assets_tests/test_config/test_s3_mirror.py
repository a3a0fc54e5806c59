"""The S3 deployment: every artifact version is mirrored through dagster-aws to an S3 API on 127.0.0.1.

S3 cannot run here; moto's server is the test double, speaking the S3 HTTP API on loopback.
"""

from pathlib import Path

import pytest
from dagster_aws.s3 import S3Resource

from forge_assets.resources import ForgeResource
from forge_assets_tests.conftest import free_port

moto_server = pytest.importorskip("moto.server")


@pytest.fixture
def s3_endpoint(monkeypatch):
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_artifact_versions_are_mirrored_to_s3(s3_endpoint: str, tmp_path: Path):
    (tmp_path / "forge.yaml").write_text(f"artifact_root: {tmp_path / 'artifacts'}\n")
    s3 = S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.get_client().create_bucket(Bucket="forge-test")
    forge = ForgeResource(config_path=str(tmp_path / "forge.yaml"), s3_bucket="forge-test", s3_prefix="team", s3=s3)
    store = forge.store()
    with store.write("dataset", "python", {"inputs": {}}) as out:
        (out.path / "train.jsonl").write_text('{"text": "x"}\n')
    version = out.artifact.version
    client = s3.get_client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="forge-test")["Contents"])
    assert keys == sorted(["team/dataset/python/candidate", "team/dataset/python/promoted",
                           f"team/dataset/python/{version}/manifest.json", f"team/dataset/python/{version}/train.jsonl"])
    assert client.get_object(Bucket="forge-test", Key="team/dataset/python/promoted")["Body"].read().decode() == version
