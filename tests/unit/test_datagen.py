"""The synthetic data generator: reproducible, balanced, and its knobs do what they say."""

import numpy as np
import pandas as pd
import pytest

from fixtures.datagen import generate_features, main, teacher
from trainer.contract import FEATURE_COLUMNS, LABEL_COLUMN
from trainer.storage import read_parquet

ROWS = 4000


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return generate_features(ROWS, seed=3)


def test_same_arguments_give_the_identical_frame(clean):
    pd.testing.assert_frame_equal(generate_features(ROWS, seed=3), clean)


def test_another_seed_gives_other_rows(clean):
    assert not generate_features(ROWS, seed=4).equals(clean)


def test_schema_is_the_contracts(clean):
    assert list(clean.columns) == [*FEATURE_COLUMNS, LABEL_COLUMN]
    assert set(clean[list(FEATURE_COLUMNS)].dtypes) == {np.dtype("float32")}
    assert clean[LABEL_COLUMN].dtype == np.int64
    assert set(clean[LABEL_COLUMN].unique()) == {0, 1}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_labels_are_roughly_balanced(seed):
    assert 0.4 <= generate_features(ROWS, seed)[LABEL_COLUMN].mean() <= 0.6


def test_label_noise_flips_that_fraction_and_nothing_else(clean):
    noisy = generate_features(ROWS, seed=3, label_noise=0.1)
    flipped = (noisy[LABEL_COLUMN] != clean[LABEL_COLUMN]).mean()
    assert flipped == pytest.approx(0.1)
    pd.testing.assert_frame_equal(noisy[list(FEATURE_COLUMNS)], clean[list(FEATURE_COLUMNS)])


def test_missing_rate_blanks_that_fraction_of_feature_cells(clean):
    holed = generate_features(ROWS, seed=3, missing_rate=0.12)
    assert holed[list(FEATURE_COLUMNS)].isna().to_numpy().mean() == pytest.approx(0.12)
    assert holed[LABEL_COLUMN].equals(clean[LABEL_COLUMN])


def test_drift_moves_the_features_but_the_teacher_still_labels_them(clean):
    drifted = generate_features(ROWS, seed=3, drift=1.0)
    features = drifted[list(FEATURE_COLUMNS)].to_numpy(np.float64)
    shift = np.abs(features.mean(axis=0) - clean[list(FEATURE_COLUMNS)].mean().to_numpy())
    assert (shift > 0.5 * teacher().scales).all()
    # float32 storage can move a row sitting exactly on the boundary; nothing more.
    assert (teacher().label(features) == drifted[LABEL_COLUMN].to_numpy()).mean() > 0.999


def test_out_of_range_knob_is_refused():
    with pytest.raises(ValueError, match="label_noise must be between 0 and 1"):
        generate_features(10, seed=0, label_noise=1.5)


def test_cli_writes_to_s3(s3_client, capsys):
    s3_client.create_bucket(Bucket="datagen")
    main(
        [
            "--rows",
            "600",
            "--seed",
            "5",
            "--missing-rate",
            "0.01",
            "--out",
            "s3://datagen/f.parquet",
        ]
    )
    assert "wrote 600 rows to s3://datagen/f.parquet" in capsys.readouterr().out
    expected = generate_features(600, seed=5, missing_rate=0.01)
    pd.testing.assert_frame_equal(read_parquet("s3://datagen/f.parquet"), expected)
