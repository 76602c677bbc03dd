"""A trial's MLflow run: parameters, per-epoch loss, final metrics and the model.

The tracking server comes from ``MLFLOW_TRACKING_URI`` (MLflow reads it itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from torch import nn

log = logging.getLogger(__name__)


@contextmanager
def trial_run(
    experiment: str, run_name: str, params: Mapping[str, object], tags: Mapping[str, str]
) -> Iterator[str]:
    """Start the run (yields its id); it ends FAILED if the body raises, FINISHED otherwise."""
    experiment_id = experiment_id_for(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags)) as run:
        mlflow.log_params(dict(params))
        yield run.info.run_id


def log_epoch_loss(epoch: int, loss: float) -> None:
    """Log one epoch's mean training loss as ``train_loss`` at step ``epoch``."""
    mlflow.log_metric("train_loss", loss, step=epoch)


def log_metrics(metrics: Mapping[str, float]) -> None:
    """Log the trial's final metrics."""
    mlflow.log_metrics(dict(metrics))


def log_model(
    model: nn.Module, signature: ModelSignature, input_example: pd.DataFrame, metadata: dict
) -> str:
    """Log ``model`` (a TorchScript inference path, trainer.inference) as the run's ``model``;
    returns its model URI."""
    started = time.perf_counter()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        # A ScriptModule is saved with torch.jit.save (MLflow's pt2 format needs a tensor
        # signature; the served model takes named feature columns).
        serialization_format="pickle",
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        # Explicit requirements: inferring them loads the model in a subprocess (about 10 s).
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
    )
    log.info("logged model %s in %.1f s", info.model_uri, time.perf_counter() - started)
    return info.model_uri


def experiment_id_for(name: str) -> str:
    """The id of the experiment ``name``, created if there is none.

    Not ``mlflow.set_experiment``: when parallel trials race to create a new experiment, the
    loser's call (MLflow 3.17) returns on RESOURCE_ALREADY_EXISTS without making it active, and
    its run then lands in the Default experiment. Found by the reliability runs.
    """
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # The winner of the race created it meanwhile.
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise MlflowException(f"experiment {name!r} was created and is gone again")
    return experiment.experiment_id
