"""``preprocess``: split, impute and standardise; the scaler is fitted on the train split only.

Besides the preprocessed splits, the held-out rows are kept as they arrived (``holdout.parquet``):
the evaluation scores the candidate and the champion on them, each through its own packaged
preprocessing (trainer.inference).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from trainer import storage
from trainer.contract import N_FEATURES, schema_violations
from trainer.errors import DataContractError
from trainer.scaling import Scaler

log = logging.getLogger(__name__)


def split(
    frame: pd.DataFrame, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random train/test split; each side keeps at least one row."""
    if len(frame) < 2:
        raise DataContractError(f"cannot split {len(frame)} row(s) into train and test")
    order = np.random.default_rng(seed).permutation(len(frame))
    test_rows = min(max(round(len(frame) * test_fraction), 1), len(frame) - 1)
    return frame.iloc[order[test_rows:]], frame.iloc[order[:test_rows]]


def run(input_uri: str, output_prefix: str, test_fraction: float, seed: int) -> dict[str, Any]:
    """Write ``train.parquet``, ``test.parquet``, ``holdout.parquet`` (the test rows raw) and
    ``scaler.json`` under ``output_prefix``."""
    frame = storage.read_parquet(input_uri)
    violations = schema_violations(frame)
    if violations:
        raise DataContractError(
            f"data contract violated for {input_uri}: {'; '.join(violations)} "
            "(run validate first: preprocess needs the contract's schema)"
        )
    train, test = split(frame, test_fraction, seed)
    scaler = Scaler.fit(train)
    uris = {
        name: storage.join_uri(output_prefix, file_name)
        for name, file_name in (
            ("train_uri", "train.parquet"),
            ("test_uri", "test.parquet"),
            ("scaler_uri", "scaler.json"),
            ("holdout_uri", "holdout.parquet"),
        )
    }
    storage.write_parquet(scaler.transform(train), uris["train_uri"])
    storage.write_parquet(scaler.transform(test), uris["test_uri"])
    storage.write_json(scaler.to_dict(), uris["scaler_uri"])
    storage.write_parquet(test.reset_index(drop=True), uris["holdout_uri"])
    log.info("wrote %d train and %d test rows under %s", len(train), len(test), output_prefix)
    return {**uris, "n_features": N_FEATURES, "train_rows": len(train), "test_rows": len(test)}
