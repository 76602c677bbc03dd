"""The whole stack: cluster, moto S3, MLflow and a real Airflow, driven over its REST API.

The tests run in file order; the last two take the stack down and check nothing is left, the
last one after a ``kill -9`` of a replay in the middle of its run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from mlflow import MlflowClient

from fixtures.datagen import generate_features
from harness import leftovers, processes, scratch, services
from harness.airflow import database
from harness.pipeline_settings import PIPELINE
from harness.services import config as services_config

SMOKE_DAG = "testbed_smoke"
PIPELINE_DAG = "ml_full_training_pipeline"


def s3_client(running):
    return boto3.client(
        "s3",
        endpoint_url=running.services.s3_endpoint,
        aws_access_key_id=services_config.ACCESS_KEY_ID,
        aws_secret_access_key=services_config.SECRET_ACCESS_KEY,
        region_name=services_config.REGION,
    )


def run_to_the_end(client, dag_id, logical_date, conf):
    run = client.trigger(dag_id, logical_date, conf=conf)
    final = client.wait_for_run(dag_id, run["dag_run_id"], timeout=420)
    states = {
        (ti["task_id"], ti["map_index"]): ti["state"]
        for ti in client.task_instances(dag_id, run["dag_run_id"])
    }
    return run["dag_run_id"], final["state"], states


def test_a_dag_pod_reaches_s3_and_mlflow(running):
    client = running.client()
    client.wait_for_dag(SMOKE_DAG)
    run_id, state, states = run_to_the_end(client, SMOKE_DAG, datetime.now(UTC), {})
    assert state == "success", states
    assert set(states.values()) == {"success"} and len(states) == 2
    key = f"smoke/{run_id}.txt"
    body = s3_client(running).get_object(Bucket=PIPELINE.artifacts_bucket, Key=key)["Body"].read()
    assert body == b"written-by-pod"
    mlflow = MlflowClient(running.services.mlflow_uri)
    experiment = mlflow.get_experiment_by_name("testbed-smoke")
    assert experiment is not None
    logged = mlflow.search_runs([experiment.experiment_id])
    assert any(r.data.metrics.get("smoke") == 1.0 for r in logged)


def test_the_pipeline_deploys_its_first_model_on_the_gpu_node(running):
    model = f"stack-test-{uuid.uuid4().hex[:8]}"
    prefix = f"tests/{model}/daily"
    logical_date = datetime(2026, 11, 2, tzinfo=UTC)
    features = generate_features(rows=3000, seed=5).to_parquet()
    key = f"{prefix}/{logical_date:%Y-%m-%d}/{PIPELINE.features_file}"
    s3 = s3_client(running)
    s3.put_object(Bucket=PIPELINE.data_bucket, Key=key, Body=features)
    conf = {"data_prefix": prefix, "model_name": model, "experiment_name": model}
    run_id, state, states = run_to_the_end(running.client(), PIPELINE_DAG, logical_date, conf)
    assert state == "success", states
    assert states[("deploy_model", -1)] == "success"
    assert states[("skip_deployment", -1)] == "skipped"
    trials = [v for (task, _), v in states.items() if task == "hyperparameter_tuning.train_trial"]
    assert trials == ["success"] * len(trials) and len(trials) == 2
    champion = MlflowClient(running.services.mlflow_uri).get_model_version_by_alias(
        model, "champion"
    )
    assert champion.tags["deployment_status"] == "champion"
    assert champion.tags["promoted_by"] == run_id
    notification_key = f"{PIPELINE.notifications_prefix}/{PIPELINE_DAG}/{run_id}.json"
    notification = json.loads(
        s3.get_object(Bucket=PIPELINE.artifacts_bucket, Key=notification_key)["Body"].read()
    )
    assert notification["outcome"] == "deployed"
    assert notification["evaluation"]["candidate_version"] == champion.version


def _listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} write them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_airflow_keeps_its_metadata_in_postgresql_listening_on_loopback_only(stack, running):
    if database.backend() != database.POSTGRESQL:
        pytest.skip(f"{database.DB_ENV} chose {database.backend()}")
    import psycopg2

    url = processes_environment(stack, "airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert url.startswith("postgresql+psycopg2://"), database.describe(
        database.MetadataDatabase("", url)
    )
    assert processes.running_pid(stack.state, database.PROCESS) is not None
    port = int(re.search(r":(\d+)/", url)[1])
    # 127.0.0.1, and nothing else (no 0.0.0.0, no IPv6, no unix socket).
    assert _listening_addresses(port) == {"0100007F"}
    user, password = re.search(r"://([^:]+):([^@]+)@", url).groups()
    with (
        psycopg2.connect(
            host="127.0.0.1", port=port, user=user, password=password, dbname=database.DATABASE
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT count(*) FROM dag_run WHERE dag_id = %s", (SMOKE_DAG,))
        assert cursor.fetchone()[0] >= 1
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host="127.0.0.1", port=port, user=user, password="wrong", dbname=database.DATABASE
        )


def processes_environment(stack, name: str) -> dict[str, str]:
    pid = processes.running_pid(stack.state, name)
    assert pid is not None, f"{name} is not running"
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def test_down_leaves_no_container_or_process(stack, running):
    if stack.keep:
        pytest.skip("ML_TESTBED_KEEP=1 keeps the stack running")
    stack.down()
    assert services.containers.find(stack.config.name) == []
    assert not stack.state.exists() or processes.names(stack.state) == []
    assert not leftovers.find(stack.config.name), leftovers.find(stack.config.name).describe()


def _wait_for_trial_pod(log: Path, kubeconfig: Path, timeout: float = 600) -> str:
    """The run id of the replay writing ``log``, once one of its trial pods runs."""
    deadline = time.monotonic() + timeout
    run_id, core = None, None
    while time.monotonic() < deadline:
        time.sleep(2)
        if run_id is None:
            found = re.search(r"triggered run (scenario__\S+)", log.read_text())
            run_id = found and found[1]
            continue
        core = core or k8s.CoreV1Api(k8s_config.new_client_from_config(str(kubeconfig)))
        pods = core.list_namespaced_pod(
            PIPELINE.training_namespace, label_selector=f"run_id={run_id}"
        ).items
        if any("trial" in p.metadata.name and p.status.phase == "Running" for p in pods):
            return run_id
    raise AssertionError(f"no trial pod ran within {timeout} s; replay log:\n{log.read_text()}")


def _wait_for_node_lost(stack, timeout: float = 120) -> None:
    """Until the replay has taken the GPU node away (its kubelet is gone)."""
    kubelet = f"kubelet-{stack.config.name}-gpu-worker"
    deadline = time.monotonic() + timeout
    while processes.running_pid(stack.state, kubelet) is not None:
        assert time.monotonic() < deadline, f"{kubelet} still ran {timeout} s after the trial pod"
        time.sleep(0.5)


@pytest.mark.parametrize("scenario", ["happy_path", "node_lost"])
def test_kill_9_in_the_middle_of_a_scenario_then_up_and_down_leave_nothing(
    stack, tmp_path, scenario
):
    """The replay brings the stack up itself and is killed while a trial pod runs; for
    ``node_lost``, while the GPU node is away, so ``up`` must bring the node back too."""
    if stack.keep:
        pytest.skip("ML_TESTBED_KEEP=1 keeps the stack running; this test takes it down")
    log = tmp_path / "replay.log"
    with log.open("w") as output:
        replay = subprocess.Popen(
            [sys.executable, "-m", "harness", "replay", scenario],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    try:
        run_id = _wait_for_trial_pod(log, stack.state / "admin.kubeconfig")
        if scenario == "node_lost":
            _wait_for_node_lost(stack)
    finally:
        os.killpg(replay.pid, signal.SIGKILL)
        replay.wait()

    running = stack.up()
    assert running.cluster.info.provider != "local-up" or all(
        processes.running_pid(stack.state, f"kubelet-{node}")
        for node in (*running.cluster.info.cpu_nodes, *running.cluster.info.gpu_nodes)
    )
    assert running.client().dag_run(PIPELINE_DAG, run_id)["state"] == "failed"
    core = k8s.CoreV1Api(k8s_config.new_client_from_config(str(stack.state / "admin.kubeconfig")))
    for namespace in running.cluster.airflow.namespaces:
        assert core.list_namespaced_pod(namespace, label_selector=f"run_id={run_id}").items == []
    assert scratch.leftovers() == []

    stack.down()
    left = leftovers.find(stack.config.name)
    assert not left, left.describe()
