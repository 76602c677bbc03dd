"""Mean imputation and standardisation, fitted on the training split only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from trainer.contract import FEATURE_COLUMNS, LABEL_COLUMN


@dataclass(frozen=True)
class Scaler:
    """Per-feature mean (also the value NaN is imputed with) and standard deviation."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fitted_rows: int

    @classmethod
    def fit(cls, train: pd.DataFrame) -> Scaler:
        """Fit on ``train``: means ignore NaN; the std is that of the imputed column."""
        values = train[list(FEATURE_COLUMNS)].to_numpy(np.float64)
        mean = np.nanmean(values, axis=0)
        # A column that is entirely NaN imputes to 0 instead of poisoning every row with NaN.
        mean = np.where(np.isnan(mean), 0.0, mean)
        std = np.where(np.isnan(values), mean, values).std(axis=0)
        # A constant column would divide by zero; it stays constant (zero) instead.
        std = np.where(std > 0, std, 1.0)
        return cls(FEATURE_COLUMNS, tuple(mean.tolist()), tuple(std.tolist()), len(train))

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Features imputed and standardised (float32), with the label as int64."""
        values = frame[list(self.features)].to_numpy(np.float64)
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        standard = (np.where(np.isnan(values), mean, values) - mean) / std
        result = pd.DataFrame(standard.astype(np.float32), columns=list(self.features))
        result[LABEL_COLUMN] = frame[LABEL_COLUMN].to_numpy(np.int64)
        return result

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Scaler:
        """The scaler ``to_dict`` wrote (``scaler.json``)."""
        return cls(
            tuple(values["features"]),
            tuple(float(v) for v in values["mean"]),
            tuple(float(v) for v in values["std"]),
            int(values["fitted_rows"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The scaler as JSON-ready data (what ``scaler.json`` holds)."""
        return asdict(self)
