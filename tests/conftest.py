"""Real servers for the tests: moto's S3 and an MLflow tracking server, as subprocesses.

Each server is a ``@contextmanager`` that starts it, waits until it answers, yields its URL and
stops its whole process group in ``finally`` (so a failed test leaves nothing running); the
session fixtures are thin wrappers. Server logs land under pytest's temporary directory, and a
server that does not come up fails with the tail of its log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from botocore.client import BaseClient

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MLFLOW_ARTIFACTS_BUCKET = "mlflow-artifacts"
_MOTO_START_SECONDS = 30
# MLflow needs about 11 s on two cores with one worker; more when the machine is busy.
_MLFLOW_START_SECONDS = 90


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    state = f"exited with {process.returncode}" if process.poll() is not None else "still starting"
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(
        f"{url} did not answer within {timeout:.0f} s ({state}); log {log_path}:\n{tail}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers (MLflow forks workers)."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when pytest dies without running teardown
    (killed by a CI timeout, say); both servers stop their own workers on SIGTERM."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def running_server(
    command: list[str], health_url: str, log_path: Path, timeout: float, env: Mapping[str, str]
) -> Iterator[None]:
    """Run ``command`` in its own process group until the block ends."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        _wait_until_healthy(health_url, process, log_path, timeout)
        yield
    finally:
        _stop(process)


@contextmanager
def moto_s3(workdir: Path) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, **TEST_CREDENTIALS}
    with running_server(command, f"{url}/", workdir / "moto.log", _MOTO_START_SECONDS, env):
        yield url


@contextmanager
def mlflow_tracking_server(workdir: Path, s3_endpoint: str) -> Iterator[str]:
    """An MLflow server (SQLite store, artifacts in moto's ``mlflow-artifacts``); yields its URL."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials())
    s3.create_bucket(Bucket=MLFLOW_ARTIFACTS_BUCKET)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}"),
        *("--artifacts-destination", f"s3://{MLFLOW_ARTIFACTS_BUCKET}"),
    ]
    env = {
        **os.environ,
        **TEST_CREDENTIALS,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        # The job runner adds a dozen processes the tests never use.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with running_server(
        command, f"{url}/health", workdir / "mlflow.log", _MLFLOW_START_SECONDS, env
    ):
        yield url


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server shared by the session."""
    with moto_s3(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[str]:
    """The URL of an MLflow tracking server whose artifacts go to moto."""
    with mlflow_tracking_server(tmp_path_factory.mktemp("mlflow"), moto_server) as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_server: str) -> str:
    """Point boto3 (and everything built on it) at moto for one test; returns the endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture
def s3_client(aws_env: str) -> BaseClient:
    """A boto3 S3 client for moto."""
    return boto3.client("s3")


@pytest.fixture(scope="session")
def local_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store for in-process tests (no server: about 3 s to create, once)."""
    return f"sqlite:///{tmp_path_factory.mktemp('local-mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def local_mlflow(
    tmp_path_factory: pytest.TempPathFactory, local_tracking_uri: str
) -> Iterator[str]:
    """MLFLOW_TRACKING_URI set to the local SQLite store for a test module; yields the URI.

    Without a server MLflow writes artifacts to ./mlruns, resolved when the store is first used:
    the working directory moves to a temporary one so nothing lands in the repository.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", local_tracking_uri)
        patch.chdir(tmp_path_factory.mktemp("mlruns"))
        yield local_tracking_uri
