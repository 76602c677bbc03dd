"""What a scenario puts in place before and during its run: the day's data and the champion.

Data is made by the seeded fixture generator and lands in moto S3 on time, late (on a timer of
its own) or never. A champion is trained by the trainer itself, in a subprocess against the
stack's S3 and MLflow, and registered under the ``champion`` alias, so it is a real model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.client import BaseClient

from fixtures.datagen import generate_features
from harness.pipeline_settings import REPO_ROOT
from harness.scenarios.model import AfterPokes, AfterSeconds, Champion, Data, Dataset
from harness.scratch import scratch_dir
from harness.services import config as services_config
from ml_pipeline import registry
from ml_pipeline.settings import PipelineSettings
from ml_pipeline.trials import trial_arguments

# What lands when a scenario asks for corrupted data: bytes no parquet reader accepts.
CORRUPTED_BYTES = b"this is not a parquet file: the upstream export was cut off\n"
_TRAINER_TIMEOUT_SECONDS = 300


def s3_client(endpoint: str) -> BaseClient:
    """A client of the stack's moto S3."""
    return boto3.client("s3", endpoint_url=endpoint, **services_config.boto3_credentials())


def dataset_bytes(data: Dataset | Data) -> bytes:
    """The parquet file a dataset spec describes (or the corrupted bytes)."""
    if isinstance(data, Data) and data.corrupted:
        return CORRUPTED_BYTES
    frame = generate_features(
        data.rows,
        data.seed,
        label_noise=data.label_noise,
        drift=data.drift,
        missing_rate=data.missing_rate,
    )
    if isinstance(data, Data):
        frame = frame.rename(columns=data.renamed_columns)
    return frame.to_parquet(index=False)


class DataLanding:
    """Puts the day's features in S3 when the scenario says: before the run, later, or never.

    ``sensor_deferred`` tells whether the sensor has deferred yet (``after_pokes`` counts pokes
    from then). The landing thread is a daemon and stops with ``cancel``.
    """

    def __init__(
        self,
        s3: BaseClient,
        bucket: str,
        key: str,
        data: Data,
        poke_interval: float,
        sensor_deferred: Callable[[], bool],
    ) -> None:
        self.s3, self.bucket, self.key, self.data = s3, bucket, key, data
        self.poke_interval = poke_interval
        self.sensor_deferred = sensor_deferred
        self.landed_at: float | None = None
        self.error: str | None = None
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None

    def before_run(self) -> None:
        """Lands on-time data now; starts the timer of late data."""
        arrival = self.data.arrival
        if arrival == "on_time":
            self._land()
        elif isinstance(arrival, AfterPokes | AfterSeconds):
            self._thread = threading.Thread(target=self._land_late, daemon=True, name="landing")
            self._thread.start()

    def cancel(self) -> None:
        """Stops a landing that has not happened yet."""
        self._cancelled.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _land(self) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=dataset_bytes(self.data))
        self.landed_at = time.monotonic()

    def _land_late(self) -> None:
        arrival = self.data.arrival
        try:
            if isinstance(arrival, AfterSeconds):
                delay = arrival.after_seconds
            else:
                while not self.sensor_deferred():
                    if self._cancelled.wait(0.5):
                        return
                # Half an interval past the Nth poke, so the Nth poke surely missed the file.
                delay = (arrival.after_pokes - 0.5) * self.poke_interval
            if not self._cancelled.wait(delay):
                self._land()
        except Exception as error:  # reported as a mismatch, not lost in a thread
            self.error = f"landing the data failed: {error}"


def _trainer(arguments: list[str], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Runs ``python -m trainer ARGUMENTS`` and returns its xcom result."""
    xcom = workdir / f"{arguments[0]}.json"
    done = subprocess.run(
        [sys.executable, "-m", "trainer", *arguments, "--xcom-path", str(xcom)],
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=_TRAINER_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"training the seeded champion failed: trainer {arguments[0]} exited "
            f"{done.returncode}:\n{done.stderr[-3000:]}"
        )
    return json.loads(xcom.read_text())


def train_champion(
    champion: Champion,
    *,
    s3_endpoint: str,
    mlflow_uri: str,
    model_name: str,
    data_key: str,
    settings: PipelineSettings,
) -> str:
    """Trains and registers the champion; returns its version."""
    data_bucket, artifacts_bucket = settings.data_bucket, settings.artifacts_bucket
    s3_client(s3_endpoint).put_object(
        Bucket=data_bucket, Key=data_key, Body=dataset_bytes(champion.trained_on)
    )
    env = {
        **services_config.aws_environment(),
        "AWS_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }
    with scratch_dir("champion") as workdir:
        processed = _trainer(
            [
                "preprocess",
                "--input",
                f"s3://{data_bucket}/{data_key}",
                "--output-prefix",
                f"s3://{artifacts_bucket}/{data_key.rsplit('/', 1)[0]}/processed",
            ],
            env,
            Path(workdir),
        )
        # The profile's first trial, changed where the scenario says.
        hyperparameters = {**settings.trial_hyperparameters()[0], **champion.hyperparameters}
        arguments = trial_arguments(
            hyperparameters,
            trial_id=0,
            processed=processed,
            experiment=model_name,
            cache_dir=str(Path(workdir) / "cache"),
            require_cuda=False,
            tags={"seeded_by": "scenario"},
        )
        trained = _trainer(arguments, env, Path(workdir))
    client = registry.client_for(mlflow_uri)
    version = registry.register_candidate(
        client, model_name, trained, tags={"deployment_status": "champion", "seeded": "true"}
    )
    client.set_registered_model_alias(model_name, registry.CHAMPION_ALIAS, version)
    client.delete_registered_model_alias(model_name, registry.CHALLENGER_ALIAS)
    return version
