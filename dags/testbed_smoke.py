"""The testbed's smoke check: a task runs, and a pod reaches S3 and MLflow with the pipeline's
image, namespace, credentials Secret and endpoints. Trigger it to check a stack end to end."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, task

from ml_pipeline import pods
from ml_pipeline.operators import PipelinePodOperator
from ml_pipeline.settings import load_settings

SETTINGS = load_settings()
# Runs inside the trainer image: write and read back an object, log an MLflow run, return both.
POD_SCRIPT = """
import json, os, sys
import boto3, mlflow
bucket, key = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3")
s3.put_object(Bucket=bucket, Key=key, Body=b"written-by-pod")
body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
mlflow.set_experiment("testbed-smoke")
with mlflow.start_run() as run:
    mlflow.log_metric("smoke", 1.0)
os.makedirs("/airflow/xcom", exist_ok=True)
with open("/airflow/xcom/return.json", "w") as xcom:
    json.dump({"s3_body": body, "mlflow_run_id": run.info.run_id}, xcom)
"""


@task
def hello() -> str:
    """A task with no dependencies at all: the scheduler and executor work."""
    return "hello from the testbed"


with DAG(
    dag_id="testbed_smoke",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["testbed"],
    doc_md=__doc__,
):
    hello() >> PipelinePodOperator(
        task_id="pod_reaches_s3_and_mlflow",
        name="testbed-smoke",
        cmds=["python", "-c"],
        arguments=[POD_SCRIPT, SETTINGS.artifacts_bucket, "smoke/{{ run_id }}.txt"],
        container_resources=pods.resources(SETTINGS, SETTINGS.preparation_resources),
        **{**pods.pod_defaults(SETTINGS, SETTINGS.training_namespace), "retries": 0},
    )
