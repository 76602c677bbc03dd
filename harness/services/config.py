"""The one source of what the services share with the rest: ports, buckets, credentials, labels.

The harness, docker-compose.test.yml (generated from here) and the pods' credentials Secret all
read these values; buckets come from the pipeline's settings (dags/ml_pipeline/settings.py).
"""

from __future__ import annotations

from harness.pipeline_settings import PIPELINE

# Ports inside the containers (each container has its own network namespace, so both use 5000).
MOTO_PORT = 5000
MLFLOW_PORT = 5000
# Each component and its port inside its container.
PORTS = {"moto": MOTO_PORT, "mlflow": MLFLOW_PORT}
# MLflow's SQLite database lives here inside its container (the image's working directory).
MLFLOW_DATA_DIR = "/data"
MLFLOW_ARTIFACTS_BUCKET = "mlflow-artifacts"
# Every bucket the pipeline and MLflow use; created on moto at start.
BUCKETS = (PIPELINE.data_bucket, PIPELINE.artifacts_bucket, MLFLOW_ARTIFACTS_BUCKET)
# Throwaway credentials of a throwaway moto server (moto accepts any). The secret key is
# distinctive rather than "testing" so that the secrets test can look for it in every log,
# report and forensic bundle and know a hit is a leak.
ACCESS_KEY_ID = "mltb-access-key"
SECRET_ACCESS_KEY = "mltb-s3-secret-7f3c9a0e5d21b846"
REGION = "us-east-1"
# Containers are found by these labels, never by memory: `down` works after a kill -9 too.
LABEL_STACK = "ml-testbed.stack"
LABEL_COMPONENT = "ml-testbed.component"


def aws_environment() -> dict[str, str]:
    """Credentials and region as AWS SDKs read them from the environment."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


def boto3_credentials() -> dict[str, str]:
    """The same credentials as keyword arguments of ``boto3.client``."""
    return {
        "aws_access_key_id": ACCESS_KEY_ID,
        "aws_secret_access_key": SECRET_ACCESS_KEY,
        "region_name": REGION,
    }


def moto_command() -> list[str]:
    """moto's server, listening on every interface of its own container."""
    return ["moto_server", "-H", "0.0.0.0", "-p", str(MOTO_PORT)]


def mlflow_command() -> list[str]:
    """A light MLflow: SQLite registry, artifacts proxied to the moto bucket, one worker."""
    return [
        "mlflow",
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        str(MLFLOW_PORT),
        "--backend-store-uri",
        f"sqlite:///{MLFLOW_DATA_DIR}/mlflow.db",
        "--artifacts-destination",
        f"s3://{MLFLOW_ARTIFACTS_BUCKET}",
        "--workers",
        "1",
        # Pods call it by the host's bridge address, not localhost.
        "--allowed-hosts",
        "*",
    ]


def mlflow_environment(s3_endpoint: str) -> dict[str, str]:
    """MLflow reaches moto for artifacts; the job runner is off (13 processes, 1.3 GB less)."""
    return {
        **aws_environment(),
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
