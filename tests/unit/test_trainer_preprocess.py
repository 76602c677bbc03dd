"""``trainer preprocess``: seeded split, imputation and a scaler fitted on the train split only."""

import json

import numpy as np
import pandas as pd
import pytest

from fixtures.datagen import generate_features
from trainer.cli import main
from trainer.commands.preprocess import split
from trainer.contract import FEATURE_COLUMNS, LABEL_COLUMN
from trainer.errors import EXIT_DATA_CONTRACT
from trainer.storage import write_parquet

FEATURES = list(FEATURE_COLUMNS)


@pytest.fixture
def features_with_holes():
    return generate_features(2000, seed=21, missing_rate=0.03, drift=0.5)


def preprocess(tmp_path, frame, *extra):
    """Run preprocess in-process; returns (exit code, xcom, output prefix)."""
    data, xcom, prefix = tmp_path / "in.parquet", tmp_path / "xcom.json", tmp_path / "out"
    write_parquet(frame, str(data))
    code = main(
        [
            *("preprocess", "--input", str(data), "--output-prefix", str(prefix)),
            *("--xcom-path", str(xcom), *extra),
        ]
    )
    return code, xcom, prefix


def test_writes_the_documented_outputs(tmp_path, features_with_holes):
    code, xcom, prefix = preprocess(tmp_path, features_with_holes, "--test-fraction", "0.25")
    assert code == 0
    result = json.loads(xcom.read_text())
    assert result == {
        "train_uri": f"{prefix}/train.parquet",
        "test_uri": f"{prefix}/test.parquet",
        "scaler_uri": f"{prefix}/scaler.json",
        "holdout_uri": f"{prefix}/holdout.parquet",
        "n_features": 16,
        "train_rows": 1500,
        "test_rows": 500,
    }
    for name in ("train", "test"):
        written = pd.read_parquet(prefix / f"{name}.parquet")
        assert list(written.columns) == [*FEATURES, LABEL_COLUMN]
        assert not written.isna().any().any()
        assert written[LABEL_COLUMN].dtype == np.int64
    # The held-out rows as they arrived: the evaluation feeds them to each model's own path.
    holdout = pd.read_parquet(prefix / "holdout.parquet")
    assert len(holdout) == 500 and holdout[list(FEATURES)].isna().any().any()


def test_scaler_is_fitted_on_the_train_split_only(tmp_path, features_with_holes):
    code, _, prefix = preprocess(tmp_path, features_with_holes, "--seed", "7")
    assert code == 0
    scaler = json.loads((prefix / "scaler.json").read_text())
    raw_train, _ = split(features_with_holes, 0.2, seed=7)
    np.testing.assert_allclose(scaler["mean"], raw_train[FEATURES].mean(), rtol=1e-6)
    assert not np.allclose(scaler["mean"], features_with_holes[FEATURES].mean(), rtol=1e-3)
    assert scaler["fitted_rows"] == len(raw_train)
    train = pd.read_parquet(prefix / "train.parquet")[FEATURES]
    test = pd.read_parquet(prefix / "test.parquet")[FEATURES]
    np.testing.assert_allclose(train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(ddof=0), 1.0, atol=1e-4)
    # The test split is transformed with the train statistics, so it is not exactly centred.
    assert np.abs(test.mean()).max() > 1e-3


def test_missing_values_are_imputed_with_the_train_mean(tmp_path, features_with_holes):
    _, _, prefix = preprocess(tmp_path, features_with_holes, "--seed", "7")
    raw_train, _ = split(features_with_holes, 0.2, seed=7)
    train = pd.read_parquet(prefix / "train.parquet")
    holes = raw_train["f00"].isna().to_numpy()
    assert holes.any()
    # The train mean standardises to exactly zero.
    np.testing.assert_allclose(train["f00"].to_numpy()[holes], 0.0, atol=1e-6)


def test_split_is_seeded():
    frame = generate_features(500, seed=1)
    first, second = split(frame, 0.2, seed=3), split(frame, 0.2, seed=3)
    assert first[1].index.equals(second[1].index)
    assert not split(frame, 0.2, seed=4)[1].index.equals(first[1].index)
    assert len(first[0]) == 400
    assert set(first[0].index).isdisjoint(first[1].index)


def test_broken_schema_is_a_contract_violation(tmp_path, capsys):
    frame = generate_features(100, seed=1).drop(columns=[LABEL_COLUMN])
    code, _, _ = preprocess(tmp_path, frame)
    assert code == EXIT_DATA_CONTRACT
    assert "missing columns label" in capsys.readouterr().err
