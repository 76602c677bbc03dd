"""``train``: one hyperparameter trial, tracked in MLflow, its model logged for the registry."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from trainer import inference, storage, tracking
from trainer.compilation import require_toolchain
from trainer.contract import FEATURE_COLUMNS, LABEL_COLUMN, schema_violations
from trainer.device import configure_device, make_deterministic, resolve_device
from trainer.errors import DataContractError
from trainer.scaling import Scaler
from trainer.training import evaluate, to_device, train_model
from trainer.trial import Hyperparameters

log = logging.getLogger(__name__)


def load_split(
    uri: str, device: torch.device, cache_dir: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A preprocessed split as (features, labels) on ``device``."""
    return _tensors(_preprocessed(uri, cache_dir), device)


def _preprocessed(uri: str, cache_dir: str | None) -> Any:
    frame = storage.read_parquet(uri, cache_dir)
    violations = schema_violations(frame)
    if not violations and frame[list(FEATURE_COLUMNS)].isna().any().any():
        violations.append("features contain NaN")
    if violations:
        raise DataContractError(
            f"{uri} is not preprocessed training data: {'; '.join(violations)}; "
            "pass the train_uri/test_uri that preprocess wrote"
        )
    return frame


def _tensors(frame: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    features = frame[list(FEATURE_COLUMNS)].to_numpy(np.float32)
    return to_device(features, frame[LABEL_COLUMN].to_numpy(np.int64), device)


def run(
    *,
    train_uri: str,
    test_uri: str,
    scaler_uri: str,
    hyperparameters: Hyperparameters,
    trial_id: str,
    experiment: str,
    device_name: str,
    require_cuda: bool,
    tags: Mapping[str, str],
    cache_dir: str | None,
    compile_model: bool = False,
    deterministic: bool = False,
    impute_missing: bool = True,
) -> dict[str, Any]:
    """Train, evaluate and log one trial; returns the trial's result for xcom.

    ``compile_model`` trains through torch.compile; ``deterministic`` asks for deterministic
    kernels on CUDA as well (a CPU run always has them). Each is recorded as an MLflow param
    only when set, so the params of a default trial stay its hyperparameters and device.
    The logged model is the inference path (trainer.inference): the train split's ``scaler``
    and the network; ``impute_missing`` False leaves the imputation out of it.
    """
    # Before any data is read: a trial that needs a GPU fails fast and says so.
    device = resolve_device(device_name, require_cuda)
    if compile_model:
        require_toolchain(device)
    configure_device(device)
    make_deterministic(hyperparameters.seed, device, strict_on_cuda=deterministic)
    train_features, train_labels = load_split(train_uri, device, cache_dir)
    test_frame = _preprocessed(test_uri, cache_dir)
    test_features, test_labels = _tensors(test_frame, device)
    scaler = Scaler.from_dict(storage.read_json(scaler_uri))
    params = {**hyperparameters.as_dict(), "device": device.type}
    if device.type == "cuda":
        params["gpu_name"] = torch.cuda.get_device_name(device)
    if compile_model:
        params["compile"] = "true"
    if deterministic:
        params["deterministic"] = "true"
    if not impute_missing:
        params["impute_missing"] = "false"
    # What the node's device plugin gave this container (unset: no GPU was asked for).
    given = os.environ.get("NVIDIA_VISIBLE_DEVICES", "none")
    log.info("trial %s on %s, GPUs given: %s: %s", trial_id, device.type, given, hyperparameters)
    with tracking.trial_run(
        experiment, f"trial-{trial_id}", params, {**tags, "trial_id": trial_id}
    ) as run_id:
        trained = train_model(
            hyperparameters,
            train_features,
            train_labels,
            on_epoch_end=tracking.log_epoch_loss,
            compile_model=compile_model,
        )
        metrics = evaluate(trained.model, test_features, test_labels)
        tracking.log_metrics({"accuracy": metrics.accuracy, "f1": metrics.f1, "loss": metrics.loss})
        model_uri = tracking.log_model(
            inference.script(trained.model, scaler, impute=impute_missing),
            inference.signature(),
            inference.raw_rows(test_frame.head(5), scaler),
            inference.metadata(impute_missing),
        )
    log.info(
        "trial %s: accuracy %.4f, f1 %.4f, loss %.4f in %.1f s (%.0f samples/s)",
        trial_id,
        metrics.accuracy,
        metrics.f1,
        metrics.loss,
        trained.seconds,
        trained.samples_per_second,
    )
    return {
        "trial_id": trial_id,
        "accuracy": metrics.accuracy,
        "f1": metrics.f1,
        "loss": metrics.loss,
        "run_id": run_id,
        "model_uri": model_uri,
        "hyperparameters": hyperparameters.as_dict(),
        "device": device.type,
        "train_seconds": trained.seconds,
        "samples_per_second": trained.samples_per_second,
    }
