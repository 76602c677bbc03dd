"""``evaluate``: score the candidate and the champion on the same data, as a server would.

Both models are loaded with ``mlflow.pyfunc`` and fed the same raw rows: today's held-out split
and any further evaluation sets (a fixed reference set). Each model brings its own preprocessing
(trainer.inference), so a champion trained on other data is scored fairly. One MLflow run
records both models' metrics and the datasets (``mlflow.log_input``, with their digests). The
decision is the pipeline's (evaluate_model); this command only measures.

A champion that is not an inference path (registered before models carried their preprocessing)
is reported as not scorable, with the reason; it is never scored on features it would misread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import mlflow
import mlflow.data
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainer import inference, serving, storage, tracking
from trainer.commands.deploy import CHAMPION_ALIAS
from trainer.contract import LABEL_COLUMN, schema_violations
from trainer.device import resolve_device
from trainer.errors import DataContractError, UnservableModelError

log = logging.getLogger(__name__)


def run(
    *,
    candidate_uri: str,
    model_name: str,
    datasets: Mapping[str, str],
    experiment: str,
    device_name: str,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """Scores the candidate at ``candidate_uri`` and ``model_name``'s champion on ``datasets``
    (name -> parquet URI of raw rows with labels); returns the scores for xcom."""
    started = time.perf_counter()
    device = resolve_device(device_name, require_cuda=False).type
    frames = {name: _read(uri) for name, uri in datasets.items()}
    why = serving.not_an_inference_path(candidate_uri)
    if why:
        raise UnservableModelError(f"the candidate cannot be evaluated: {why}")
    champion = _champion(model_name)
    models = {"candidate": serving.load(candidate_uri, device)}
    if champion["uri"] and champion["scorable"]:
        models["champion"] = serving.load(champion["uri"], device)
    scores: dict[str, dict[str, Any]] = {}
    with mlflow.start_run(
        experiment_id=tracking.experiment_id_for(experiment),
        run_name="evaluation",
        tags={**tags, "kind": "evaluation", "champion_version": str(champion["version"])},
    ) as evaluation_run:
        for name, frame in frames.items():
            dataset = mlflow.data.from_pandas(
                frame, source=datasets[name], name=name, targets=LABEL_COLUMN
            )
            mlflow.log_input(dataset, context=name)
            scores[name] = {"uri": datasets[name], "digest": dataset.digest, "rows": len(frame)}
            for role, served in models.items():
                figures = _score(served, frame, role, name)
                scores[name][role] = figures
                mlflow.log_metrics({f"{name}_{role}_{k}": v for k, v in figures.items()})
    seconds = time.perf_counter() - started
    log.info("evaluated on %s in %.1f s: %s", ", ".join(frames), seconds, scores)
    return {
        "candidate_uri": candidate_uri,
        "champion": champion,
        "datasets": scores,
        "evaluation_run_id": evaluation_run.info.run_id,
        "device": device,
        "seconds": seconds,
    }


def _read(uri: str) -> Any:
    frame = storage.read_parquet(uri)
    violations = schema_violations(frame)
    if frame.empty:
        violations.append("no rows")
    if violations:
        raise DataContractError(
            f"evaluation set {uri} breaks the data contract: {'; '.join(violations)}; it must "
            "hold the contract's raw feature columns and labels (preprocess's holdout.parquet)"
        )
    return frame


def _score(served: serving.Served, frame: Any, role: str, name: str) -> dict[str, float]:
    logits = serving.logits(served, inference.features_of(frame))
    bad = int((~np.isfinite(logits).all(axis=1)).sum())
    if bad:
        raise UnservableModelError(
            f"the {role} {served.uri} returned NaN or infinite logits for {bad} of {len(frame)} "
            f"rows of {name}: it cannot be scored (does it impute missing features?)"
        )
    figures = inference.metrics(logits, inference.labels_of(frame))
    return {"accuracy": figures.accuracy, "f1": figures.f1, "loss": figures.loss}


def _champion(model_name: str) -> dict[str, Any]:
    """The champion version and whether it can be scored; version None when there is none."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return {"version": None, "uri": None, "run_id": None, "scorable": False, "why": None}
    uri = f"models:/{model_name}/{version.version}"
    why = serving.not_an_inference_path(uri)
    return {
        "version": str(version.version),
        "uri": uri,
        "run_id": version.run_id,
        "scorable": why is None,
        "why": why,
    }
