"""docker-compose.test.yml starts the same services the harness starts, for people and CIs that
prefer compose (tested with Debian's docker-compose 1.29)."""

from __future__ import annotations

import shutil
import subprocess
import time

import boto3
import pytest

from harness.airflow.environment import free_port
from harness.cluster.engine import ensure_docker
from harness.host import apt_install
from harness.pipeline_settings import REPO_ROOT
from harness.services import config
from harness.services.containers import mlflow_healthy
from harness.services.image import ensure_services_image
from tests.requirements import unavailable

PROJECT = "mltb-compose-test"


@pytest.fixture
def compose():
    try:
        ensure_docker()
        apt_install(["docker-compose"], why="testing docker-compose.test.yml")
    except RuntimeError as error:
        unavailable("stack", f"no Docker engine or docker-compose can be had here: {error}")
    ensure_services_image()
    ports = {"ML_TESTBED_MOTO_PORT": str(free_port()), "ML_TESTBED_MLFLOW_PORT": str(free_port())}
    base = [
        shutil.which("docker-compose"),
        "-p",
        PROJECT,
        "-f",
        str(REPO_ROOT / "docker-compose.test.yml"),
    ]
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "ML_TESTBED_HOST_ADDRESS": "127.0.0.1", **ports}
    subprocess.run([*base, "up", "-d"], env=env, check=True, capture_output=True)
    yield ports
    subprocess.run([*base, "down", "-v"], env=env, check=True, capture_output=True)
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={PROJECT}"], capture_output=True, text=True
    ).stdout.split()
    assert left == []


def test_compose_services_are_healthy_with_the_pipeline_buckets(compose):
    s3_endpoint = f"http://127.0.0.1:{compose['ML_TESTBED_MOTO_PORT']}"
    mlflow_uri = f"http://127.0.0.1:{compose['ML_TESTBED_MLFLOW_PORT']}"

    deadline = time.monotonic() + 90
    while not mlflow_healthy(mlflow_uri) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert mlflow_healthy(mlflow_uri)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=config.REGION,
        aws_access_key_id=config.ACCESS_KEY_ID,
        aws_secret_access_key=config.SECRET_ACCESS_KEY,
    )
    names = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    assert set(config.BUCKETS) <= names
