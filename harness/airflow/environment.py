"""The environment every Airflow process of a stack shares: one source for its configuration.

Connections and the pipeline's settings Variable are given as AIRFLOW_CONN_* / AIRFLOW_VAR_*
environment variables, so nothing is written into the metadata database by hand.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.paths import write_private
from harness.pipeline_settings import DAGS_DIR
from harness.services import config as services_config
from ml_pipeline.settings import VARIABLE_NAME

USER = "harness"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class AirflowConnections:
    """What the pipeline's connections point at."""

    s3_endpoint: str
    kubeconfig: Path
    namespace: str
    xcom_sidecar_image: str


def kept(path: Path, make: Callable[[], str]) -> str:
    """The value in ``path``, made (0600) by ``make`` the first time: kept in the stack's home so
    every component, and a restarted one, agrees."""
    if not path.exists():
        write_private(path, make())
    return path.read_text().strip()


def _secret(home: Path, name: str) -> str:
    return kept(home / f".{name}", lambda: secrets.token_urlsafe(32))


def _login_password(home: Path) -> None:
    """The api-server login's password, made here (0600 from the start) before Airflow starts.

    SimpleAuthManager generates a missing one and prints it to its log, which then holds a
    secret; given a passwords file that already has the user, it prints nothing.
    """
    path = home / PASSWORDS_FILE
    if not path.exists():
        write_private(path, json.dumps({USER: secrets.token_urlsafe(24)}) + "\n")


def airflow_environment(
    home: Path,
    api_port: int,
    connections: AirflowConnections,
    pipeline_settings: dict[str, Any],
    database: Mapping[str, str],
) -> dict[str, str]:
    """Environment variables for every Airflow process (and CLI call) of the stack;
    ``database`` is the metadata database's (harness.airflow.database)."""
    from cryptography.fernet import Fernet

    _login_password(home)
    fernet_file = home / ".fernet_key"
    if not fernet_file.exists():
        write_private(fernet_file, Fernet.generate_key().decode())
    aws = {
        "conn_type": "aws",
        "login": services_config.ACCESS_KEY_ID,
        "password": services_config.SECRET_ACCESS_KEY,
        "extra": {"endpoint_url": connections.s3_endpoint, "region_name": services_config.REGION},
    }
    kubernetes = {
        "conn_type": "kubernetes",
        "extra": {
            "kube_config_path": str(connections.kubeconfig),
            "namespace": connections.namespace,
            "xcom_sidecar_container_image": connections.xcom_sidecar_image,
        },
    }
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "false",
        **database,
        "AIRFLOW__CORE__FERNET_KEY": fernet_file.read_text(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__SECRET_KEY": _secret(home, "api_secret_key"),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home, "jwt_secret"),
        # New DAG files are noticed within seconds, not minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "false",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(kubernetes),
        f"AIRFLOW_VAR_{VARIABLE_NAME.upper()}": json.dumps(pipeline_settings),
        # MLflow's client retries 7 times with backoff doubling from 2 s (minutes per call):
        # an unavailable MLflow should fail the task within seconds and leave it to Airflow's
        # own retries.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        "NO_PROXY": "*",
    }
