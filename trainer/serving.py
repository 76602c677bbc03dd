"""Registered models as a server sees them: loaded with ``mlflow.pyfunc`` and fed raw rows.

The evaluation scores the candidate and the champion this way, and deploy's canary proves that a
version serves before the champion alias moves to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info

from trainer import inference
from trainer.contract import FEATURE_COLUMNS
from trainer.errors import UnservableModelError
from trainer.training import N_CLASSES

# Rows of today's held-out split in the canary batch, besides the rows with a missing feature.
CANARY_ROWS = 32


@dataclass(frozen=True)
class Served:
    """A model loaded for serving, and where from."""

    uri: str
    model: Any


def not_an_inference_path(uri: str) -> str | None:
    """Why the model at ``uri`` cannot score raw rows (None when it can).

    Models registered before the inference path were the bare network: they need features the
    pipeline standardised with a scaler they do not carry. Errors reading the model's metadata
    are raised as they are.
    """
    # A read that fails (MLflow or the artifact store away) is raised, not taken for a model
    # that cannot serve: the task fails and is retried.
    info = get_model_info(uri)
    found = (info.metadata or {}).get(inference.FORMAT_KEY)
    if found != inference.FORMAT:
        return (
            f"{uri} is not an inference path (metadata {inference.FORMAT_KEY}={found!r}, expected "
            f"{inference.FORMAT!r}): a bare network logged before the model carried its "
            "preprocessing, so raw rows would reach it unscaled"
        )
    columns = [] if info.signature is None else info.signature.inputs.input_names()
    if list(columns) != list(FEATURE_COLUMNS):
        return f"{uri} takes the columns {list(columns)}, not the contract's features"
    return None


def load(uri: str, device: str) -> Served:
    """The model at ``uri`` through ``mlflow.pyfunc`` on ``device`` (``cpu`` or ``cuda``)."""
    # Download errors (MlflowException, OSError) are raised as they are: an outage is not an
    # unservable model. What the model itself gets wrong is.
    try:
        model = mlflow.pyfunc.load_model(uri, model_config={"device": device})
    except (RuntimeError, ImportError, TypeError, ValueError) as error:
        raise UnservableModelError(f"{uri} does not load with mlflow.pyfunc: {error}") from None
    return Served(uri, model)


def logits(served: Served, features: pd.DataFrame) -> np.ndarray:
    """The model's output for ``features`` (the contract's columns, raw), as rows x classes."""
    try:
        output = served.model.predict(features)
    except (MlflowException, RuntimeError, TypeError, ValueError) as error:
        raise UnservableModelError(f"{served.uri} cannot score raw feature rows: {error}") from None
    values = np.asarray(output, dtype=np.float64)
    if values.shape != (len(features), N_CLASSES):
        raise UnservableModelError(
            f"{served.uri} returned an output of shape {values.shape} for {len(features)} rows; "
            f"expected ({len(features)}, {N_CLASSES}) logits"
        )
    return values


def canary_batch(holdout: pd.DataFrame) -> pd.DataFrame:
    """Rows a server must answer: today's first held-out rows, and one row per feature with
    that feature missing (the data contract allows missing features)."""
    rows = inference.features_of(holdout.head(CANARY_ROWS)).reset_index(drop=True)
    template = rows.iloc[[0]] if len(rows) else pd.DataFrame([[0.0] * len(FEATURE_COLUMNS)])
    template.columns = list(FEATURE_COLUMNS)
    missing = pd.concat([template] * len(FEATURE_COLUMNS), ignore_index=True)
    for index, column in enumerate(FEATURE_COLUMNS):
        missing.loc[index, column] = math.nan
    return pd.concat([rows, missing], ignore_index=True)


def canary(uri: str, holdout: pd.DataFrame, device: str = "cpu") -> dict[str, Any]:
    """Loads ``uri`` and scores the canary batch; UnservableModelError says what failed."""
    why = not_an_inference_path(uri)
    if why:
        raise UnservableModelError(why)
    batch = canary_batch(holdout)
    values = logits(load(uri, device), batch)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        missing = [column for column in FEATURE_COLUMNS if batch.loc[bad, column].isna().any()]
        raise UnservableModelError(
            f"{uri} returned NaN or infinite logits for {int(bad.sum())} of {len(batch)} canary "
            f"rows (rows with a missing {', '.join(missing) or 'no'} feature among them); the "
            "data contract allows missing features, so the packaged model must impute them"
        )
    return {
        "model_uri": uri,
        "rows": len(batch),
        "rows_with_a_missing_feature": len(FEATURE_COLUMNS),
    }
