"""The model as it serves: raw feature rows in, logits out, in one TorchScript module.

The registered model is the whole inference path: mean imputation and standardisation fitted on
the train split (trainer.scaling) and the network. Scripted, so that ``mlflow.pyfunc`` loads it
anywhere torch is, without this package; a champion and a challenger trained on different days
carry their own preprocessing and can be scored on the same raw rows.

``mlflow.pyfunc.load_model(uri).predict(frame)`` takes a DataFrame of the contract's feature
columns (NaN allowed: it is imputed) and returns a DataFrame of the two classes' logits, one row
per input row; ``predictions`` turns those into class labels and metrics.
"""

# No ``from __future__ import annotations``: TorchScript reads InferencePath's annotations.
import warnings

import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from torch import nn

from trainer.contract import FEATURE_COLUMNS, LABEL_COLUMN
from trainer.scaling import Scaler
from trainer.training import N_CLASSES, Evaluation, figures

# What a model's MLflow metadata says when it is the inference path, not a bare network.
FORMAT_KEY = "model_format"
FORMAT = "inference_path/1"


class InferencePath(nn.Module):
    """Impute NaN with the train means, standardise, then the network.

    ``impute`` False packages a model that expects complete rows: a missing feature gives NaN
    logits. The data contract allows missing features, so deploy's canary refuses such a model
    (the ``unservable`` trial fault packages one).
    """

    impute: bool

    def __init__(
        self, network: nn.Module, mean: torch.Tensor, std: torch.Tensor, impute: bool = True
    ) -> None:
        super().__init__()
        self.network = network
        self.impute = impute
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        raw = features.to(torch.float32)
        if self.impute:
            raw = torch.where(torch.isnan(raw), self.mean, raw)
        return self.network((raw - self.mean) / self.std)


def script(network: nn.Module, scaler: Scaler, impute: bool = True) -> torch.jit.ScriptModule:
    """The inference path of a trained ``network`` (moved to the CPU) and its train ``scaler``."""
    if tuple(scaler.features) != FEATURE_COLUMNS:
        raise ValueError(
            f"the scaler was fitted on columns {list(scaler.features)}, not the contract's "
            f"{list(FEATURE_COLUMNS)}; preprocess the data again"
        )
    path = InferencePath(
        network.cpu(),
        torch.tensor(scaler.mean, dtype=torch.float32),
        torch.tensor(scaler.std, dtype=torch.float32),
        impute,
    )
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript for torch.export, whose MLflow format (pt2) takes
        # tensors, not the named feature columns a server is sent; scripted models still load.
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
        )
        return torch.jit.script(path.eval())


def metadata(impute: bool) -> dict[str, str]:
    """What the logged model's MLflow metadata says about it."""
    return {FORMAT_KEY: FORMAT, "imputes_missing": str(impute).lower()}


def signature() -> ModelSignature:
    """Raw feature columns (doubles, NaN allowed) in; the two classes' logits out."""
    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in FEATURE_COLUMNS]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, N_CLASSES))]),
    )


def raw_rows(frame: pd.DataFrame, scaler: Scaler) -> pd.DataFrame:
    """Preprocessed rows taken back to raw feature values (an input example for the model)."""
    values = frame[list(FEATURE_COLUMNS)].to_numpy(np.float64)
    raw = values * np.asarray(scaler.std) + np.asarray(scaler.mean)
    return pd.DataFrame(raw, columns=list(FEATURE_COLUMNS))


def features_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The contract's feature columns of ``frame`` as doubles, the model's input."""
    return frame[list(FEATURE_COLUMNS)].astype(np.float64)


def metrics(logits: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Accuracy, F1 of class 1 and mean cross-entropy of a served model's ``logits``
    (trainer.training.figures, the trainer's own evaluation's)."""
    return figures(
        torch.as_tensor(np.asarray(logits, dtype=np.float32)),
        torch.as_tensor(np.asarray(labels, dtype=np.int64)),
    )


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    """The label column as int64."""
    return frame[LABEL_COLUMN].to_numpy(np.int64)
