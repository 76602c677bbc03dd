"""A trial's MLflow run: parameters, per-epoch loss, final metrics and the model.

The tracking server comes from ``MLFLOW_TRACKING_URI`` (MLflow reads it itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from torch import nn

log = logging.getLogger(__name__)


@contextmanager
def trial_run(
    experiment: str, run_name: str, params: Mapping[str, object], tags: Mapping[str, str]
) -> Iterator[str]:
    """Start the run (yields its id); it ends FAILED if the body raises, FINISHED otherwise."""
    _use_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=dict(tags)) as run:
        mlflow.log_params(dict(params))
        yield run.info.run_id


def log_epoch_loss(epoch: int, loss: float) -> None:
    """Log one epoch's mean training loss as ``train_loss`` at step ``epoch``."""
    mlflow.log_metric("train_loss", loss, step=epoch)


def log_metrics(metrics: Mapping[str, float]) -> None:
    """Log the trial's final metrics."""
    mlflow.log_metrics(dict(metrics))


def log_model(model: nn.Module) -> str:
    """Log ``model`` (moved to the CPU) as the run's ``model``; returns its model URI."""
    started = time.perf_counter()
    info = mlflow.pytorch.log_model(
        model.cpu(),
        name="model",
        serialization_format="pickle",
        # Explicit requirements: inferring them loads the model in a subprocess (about 10 s).
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            # MLflow pickles with cloudpickle; loading needs the same version.
            f"cloudpickle=={version('cloudpickle')}",
            f"numpy=={np.__version__}",
        ],
    )
    log.info("logged model %s in %.1f s", info.model_uri, time.perf_counter() - started)
    return info.model_uri


def _use_experiment(name: str) -> None:
    try:
        mlflow.set_experiment(name)
    except MlflowException as error:
        # Parallel trials of a new experiment race to create it; the loser uses the winner's.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        mlflow.set_experiment(name)
