"""The whole stack: cluster, moto S3, MLflow and a real Airflow, driven over its REST API."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import boto3
import pytest
from mlflow import MlflowClient

from harness import processes, services
from harness.cluster.engine import ensure_docker
from harness.pipeline_settings import PIPELINE
from harness.services import config as services_config
from harness.stack import Stack, StackConfig

SMOKE_DAG = "testbed_smoke"


@pytest.fixture(scope="module")
def stack():
    try:
        ensure_docker()
    except RuntimeError as error:
        pytest.skip(f"no container engine can be had here: {error}")
    return Stack(StackConfig(), keep=os.environ.get("ML_TESTBED_KEEP") == "1")


def test_stack_up_runs_a_dag_whose_pod_uses_s3_and_mlflow_then_down_leaves_nothing(stack):
    running = stack.up()
    client = running.client()
    client.wait_for_dag(SMOKE_DAG)
    run = client.trigger(SMOKE_DAG, datetime.now(UTC), conf={})
    final = client.wait_for_run(SMOKE_DAG, run["dag_run_id"], timeout=300)
    states = {
        ti["task_id"]: ti["state"] for ti in client.task_instances(SMOKE_DAG, run["dag_run_id"])
    }
    assert final["state"] == "success", states
    assert states == {"hello": "success", "pod_reaches_s3_and_mlflow": "success"}

    s3 = boto3.client(
        "s3",
        endpoint_url=running.services.s3_endpoint,
        aws_access_key_id=services_config.ACCESS_KEY_ID,
        aws_secret_access_key=services_config.SECRET_ACCESS_KEY,
        region_name=services_config.REGION,
    )
    key = f"smoke/{run['dag_run_id']}.txt"
    body = s3.get_object(Bucket=PIPELINE.artifacts_bucket, Key=key)["Body"].read()
    assert body == b"written-by-pod"
    mlflow = MlflowClient(running.services.mlflow_uri)
    experiment = mlflow.get_experiment_by_name("testbed-smoke")
    assert experiment is not None
    logged = mlflow.search_runs([experiment.experiment_id])
    assert any(r.data.metrics.get("smoke") == 1.0 for r in logged)

    if stack.keep:
        return
    stack.down()
    assert services.containers.find(stack.config.name) == []
    assert not stack.state.exists() or processes.names(stack.state) == []
