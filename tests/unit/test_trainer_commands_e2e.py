"""The trainer's commands in pipeline order, as the pods run them: subprocesses against real
moto S3 and a real MLflow server.

validate -> preprocess -> two trials in parallel (sharing a cache directory, as the trial pods
share their volume) -> register the better model -> deploy it -> register and deploy the other
-> the first is retired. Measured on an idle two-core machine: 36 s for the commands (mostly
interpreter start-up and imports: torch and MLflow take about 8 s a process) plus about 20 s to
start the session's moto and MLflow servers.
"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from fixtures.datagen import generate_features, write_features

DATA_BUCKET, ARTIFACTS_BUCKET = "trainer-e2e-data", "trainer-e2e-artifacts"
MODEL = "trainer-e2e-classifier"
EXPERIMENT = "trainer-e2e-trials"
# The harness profile's two trials: the same network at two learning rates.
TRIALS = {"0": "0.003", "1": "0.03"}
COMMAND_TIMEOUT_SECONDS = 120
log = logging.getLogger(__name__)


class Trainer:
    """Runs ``python -m trainer`` the way a pod does: environment, arguments, xcom file."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir

    def start(self, name: str, *arguments: str) -> tuple[subprocess.Popen[str], Path]:
        """Start one command; ``name`` labels its xcom file and its failure message."""
        xcom = self.workdir / f"{name}.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "trainer", *arguments, "--xcom-path", str(xcom)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return process, xcom

    @staticmethod
    def finish(name: str, process: subprocess.Popen[str], xcom: Path) -> dict:
        """Wait for a started command; its xcom, or a failure with its output."""
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT_SECONDS)
        assert process.returncode == 0, f"{name} exited {process.returncode}:\n{output[-4000:]}"
        return json.loads(xcom.read_text())

    def run(self, name: str, *arguments: str) -> dict:
        """Run one command to completion; returns its xcom."""
        started = time.monotonic()
        result = self.finish(name, *self.start(name, *arguments))
        log.info("%s took %.1f s", name, time.monotonic() - started)
        return result


@pytest.fixture
def trainer(mlflow_server, aws_env, tmp_path) -> Trainer:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    return Trainer(env, tmp_path)


def train_arguments(processed: dict, trial_id: str, learning_rate: str, cache: Path) -> list[str]:
    return [
        *("train", "--train-uri", processed["train_uri"], "--test-uri", processed["test_uri"]),
        *("--scaler-uri", processed["scaler_uri"]),
        *("--learning-rate", learning_rate, "--batch-size", "64", "--optimizer", "adam"),
        *("--epochs", "5", "--hidden-width", "32", "--depth", "2", "--seed", "7"),
        *("--trial-id", trial_id, "--experiment", EXPERIMENT, "--device", "auto"),
        *("--cache-dir", str(cache), "--tag", "dag_run_id=e2e"),
    ]


def register(client: MlflowClient, trial: dict) -> str:
    """What evaluate_model does: the trial's model_uri becomes a version.

    A tracking server accepts an MLflow 3 ``models:/m-...`` source only with its model_id.
    """
    version = client.create_model_version(
        MODEL,
        source=trial["model_uri"],
        run_id=trial["run_id"],
        model_id=trial["model_uri"].removeprefix("models:/"),
    )
    assert version.status == "READY"
    return str(version.version)


def test_pipeline_commands_in_sequence(trainer, mlflow_server, tmp_path):
    started = time.monotonic()
    s3 = boto3.client("s3")
    for bucket in (DATA_BUCKET, ARTIFACTS_BUCKET):
        s3.create_bucket(Bucket=bucket)
    data_uri = f"s3://{DATA_BUCKET}/daily/2026-11-24/features.parquet"
    write_features(generate_features(4000, seed=1, missing_rate=0.01), data_uri)

    validated = trainer.run("validate", "validate", "--input", data_uri)
    assert validated["valid"] is True
    assert validated["rows"] == 4000

    prefix = f"s3://{ARTIFACTS_BUCKET}/processed/daily/2026-11-24/run-1"
    processed = trainer.run(
        "preprocess", "preprocess", "--input", data_uri, "--output-prefix", prefix
    )
    assert processed["train_uri"] == f"{prefix}/train.parquet"
    assert processed["scaler_uri"] == f"{prefix}/scaler.json"
    s3.head_object(Bucket=ARTIFACTS_BUCKET, Key="processed/daily/2026-11-24/run-1/scaler.json")

    # In parallel, as mapped trial pods run: also exercises the shared cache's atomic writes.
    cache = tmp_path / "shared-data"
    trials_started = time.monotonic()
    running = {
        trial_id: trainer.start(
            f"train-{trial_id}", *train_arguments(processed, trial_id, learning_rate, cache)
        )
        for trial_id, learning_rate in TRIALS.items()
    }
    trials = {
        trial_id: Trainer.finish(f"train-{trial_id}", *job) for trial_id, job in running.items()
    }
    log.info("two parallel trials took %.1f s", time.monotonic() - trials_started)
    assert len(list(cache.glob("*.parquet"))) == 2
    for trial in trials.values():
        assert trial["accuracy"] >= 0.85
    best, other = sorted(trials.values(), key=lambda trial: trial["accuracy"], reverse=True)

    client = MlflowClient(tracking_uri=mlflow_server)
    client.create_registered_model(MODEL)
    first_version = register(client, best)
    records = f"s3://{ARTIFACTS_BUCKET}/deployments"
    deploy = ("deploy", "--model-name", MODEL, "--record-prefix", records)
    record = trainer.run(
        "deploy-1",
        *deploy,
        *("--version", first_version, "--dag-run-id", "run-1", "--expected-champion", "none"),
    )
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == first_version
    assert champion.tags["deployment_status"] == "champion"
    assert champion.tags["promoted_by"] == "run-1"
    assert champion.tags["previous_champion"] == "none"
    assert "promoted_at" in champion.tags
    assert record["run_id"] == best["run_id"]
    assert record["metrics"]["accuracy"] == pytest.approx(best["accuracy"])
    latest = s3.get_object(Bucket=ARTIFACTS_BUCKET, Key=f"deployments/{MODEL}/latest.json")
    assert json.loads(latest["Body"].read()) == record

    second_version = register(client, other)
    trainer.run(
        "deploy-2",
        *deploy,
        *("--version", second_version, "--dag-run-id", "run-2"),
        *("--expected-champion", first_version),
    )
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == second_version
    assert (
        client.get_model_version(MODEL, second_version).tags["previous_champion"] == first_version
    )
    retired = client.get_model_version(MODEL, first_version).tags
    assert retired["deployment_status"] == "retired"
    assert retired["replaced_by"] == second_version
    s3.head_object(Bucket=ARTIFACTS_BUCKET, Key=f"deployments/{MODEL}/v{second_version}.json")
    log.info("the pipeline's commands took %.1f s", time.monotonic() - started)
