"""The logged model is the whole inference path; ``evaluate`` and deploy's canary load it as a
server does. Local files and a local MLflow store; the round trip loads in a fresh process."""

import contextlib
import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from fixtures.datagen import generate_features
from trainer import serving
from trainer.cli import main
from trainer.commands import preprocess
from trainer.contract import FEATURE_COLUMNS
from trainer.errors import EXIT_UNSERVABLE, UnservableModelError
from trainer.storage import write_parquet
from trainer.training import build_model

MODEL = "unit-serving-model"
TRIAL = {
    "learning_rate": 0.03,
    "batch_size": 64,
    "optimizer": "adam",
    "epochs": 4,
    "hidden_width": 16,
    "depth": 2,
    "seed": 7,
}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """preprocess's xcom for rows with missing cells (so the held-out rows have NaN)."""
    root = tmp_path_factory.mktemp("processed")
    write_parquet(generate_features(3000, seed=2, missing_rate=0.02), str(root / "f.parquet"))
    return preprocess.run(str(root / "f.parquet"), str(root / "out"), 0.2, seed=42)


def train(processed, tmp_path, trial_id, *extra):
    xcom = tmp_path / f"train-{trial_id}.json"
    flags = [item for k, v in TRIAL.items() for item in (f"--{k.replace('_', '-')}", str(v))]
    code = main(
        [
            *("train", "--train-uri", processed["train_uri"], "--test-uri", processed["test_uri"]),
            *("--scaler-uri", processed["scaler_uri"], "--trial-id", trial_id),
            *("--experiment", "unit-serving", "--device", "cpu", "--xcom-path", str(xcom)),
            *flags,
            *extra,
        ]
    )
    assert code == 0
    return json.loads(xcom.read_text())


def register(trial):
    client = MlflowClient()
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=trial["model_uri"], run_id=trial["run_id"])
    return str(version.version)


@pytest.fixture(scope="module")
def trial(processed, local_mlflow, tmp_path_factory):
    return train(processed, tmp_path_factory.mktemp("trial"), "0")


def test_a_fresh_process_scores_raw_rows_as_the_trainer_evaluated(trial, processed, tmp_path):
    # The served model takes the rows as they arrived (NaN included) and gives the accuracy the
    # trainer logged on the preprocessed split; no trainer code is imported to load it.
    script = (
        "import sys, mlflow.pyfunc, pandas as pd\n"
        "assert 'trainer' not in sys.modules\n"
        f"model = mlflow.pyfunc.load_model({trial['model_uri']!r})\n"
        f"rows = pd.read_parquet({processed['holdout_uri']!r})\n"
        "logits = model.predict(rows.drop(columns=['label']))\n"
        "print(float((logits.to_numpy().argmax(axis=1) == rows['label'].to_numpy()).mean()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    holdout = pd.read_parquet(processed["holdout_uri"])
    assert holdout[list(FEATURE_COLUMNS)].isna().any().any()
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(trial["accuracy"], abs=1e-9)


def test_the_logged_model_has_a_signature_an_example_and_says_what_it_is(trial):
    info = mlflow.models.get_model_info(trial["model_uri"])
    assert info.signature.inputs.input_names() == list(FEATURE_COLUMNS)
    assert info.metadata == {"model_format": "inference_path/1", "imputes_missing": "true"}
    assert info.saved_input_example_info is not None
    assert serving.not_an_inference_path(trial["model_uri"]) is None


def evaluate(candidate_uri, processed, tmp_path, *extra):
    xcom = tmp_path / "evaluate.json"
    code = main(
        [
            *("evaluate", "--candidate-uri", candidate_uri, "--model-name", MODEL),
            *("--dataset", f"today={processed['holdout_uri']}", "--experiment", "unit-serving"),
            *("--device", "cpu", "--xcom-path", str(xcom), *extra),
        ]
    )
    return code, json.loads(xcom.read_text()) if xcom.exists() else None


def test_evaluate_scores_the_candidate_and_the_champion_on_the_same_rows(
    trial, processed, tmp_path
):
    champion = register(trial)
    MlflowClient().set_registered_model_alias(MODEL, "champion", champion)
    weaker = train(processed, tmp_path, "1", "--epochs", "1", "--learning-rate", "0.0005")
    code, result = evaluate(
        weaker["model_uri"], processed, tmp_path, "--reference-uri", processed["holdout_uri"]
    )
    assert code == 0
    assert result["champion"]["version"] == champion and result["champion"]["scorable"]
    today = result["datasets"]["today"]
    assert set(result["datasets"]) == {"today", "reference"}
    assert today["candidate"]["accuracy"] == pytest.approx(weaker["accuracy"], abs=1e-9)
    assert today["champion"]["accuracy"] == pytest.approx(trial["accuracy"], abs=1e-9)
    run = MlflowClient().get_run(result["evaluation_run_id"])
    assert run.data.metrics["today_champion_accuracy"] == today["champion"]["accuracy"]
    logged = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert logged == {"today": today["digest"], "reference": today["digest"]}


def test_a_bare_network_champion_is_reported_not_scorable_never_scored(trial, processed, tmp_path):
    # What the pipeline registered before models carried their preprocessing.
    with mlflow.start_run() as run:
        info = mlflow.pytorch.log_model(
            build_model(16, 4, 1), name="model", serialization_format="pickle"
        )
    legacy = MlflowClient().create_model_version(
        MODEL, source=info.model_uri, run_id=run.info.run_id
    )
    MlflowClient().set_registered_model_alias(MODEL, "champion", legacy.version)
    code, result = evaluate(trial["model_uri"], processed, tmp_path)
    assert code == 0
    assert result["champion"]["scorable"] is False
    assert "bare network" in result["champion"]["why"]
    assert "champion" not in result["datasets"]["today"]


def test_the_canary_refuses_a_model_that_cannot_take_missing_features(processed, tmp_path):
    holdout = pd.read_parquet(processed["holdout_uri"])
    complete_only = train(processed, tmp_path, "2", "--no-impute-missing")
    with pytest.raises(UnservableModelError, match="NaN or infinite logits for 16 of"):
        serving.canary(complete_only["model_uri"], holdout.dropna())
    served = train(processed, tmp_path, "3")
    assert serving.canary(served["model_uri"], holdout.dropna())["rows"] == 32 + 16


def test_deploy_fails_with_exit_7_and_changes_nothing_when_the_canary_fails(
    processed, tmp_path, capsys
):
    version = register(train(processed, tmp_path, "4", "--no-impute-missing"))
    before = MlflowClient().get_registered_model(MODEL).aliases.get("champion")
    code = main(
        [
            *("deploy", "--model-name", MODEL, "--version", version),
            *("--record-prefix", str(tmp_path / "deployments"), "--expected-champion"),
            str(before) if before else "none",
            *("--canary-uri", processed["holdout_uri"], "--xcom-path", str(tmp_path / "d.json")),
        ]
    )
    assert code == EXIT_UNSERVABLE
    assert "the packaged model must impute them" in capsys.readouterr().err
    assert MlflowClient().get_registered_model(MODEL).aliases.get("champion") == before
    assert not (tmp_path / "deployments").exists()


def test_the_canary_batch_has_one_row_per_missing_feature():
    rows = pd.DataFrame(np.ones((40, 16)), columns=list(FEATURE_COLUMNS))
    batch = serving.canary_batch(rows)
    assert len(batch) == 32 + 16
    assert batch.tail(16).isna().sum().tolist() == [1] * 16
    assert torch.tensor(batch.head(32).to_numpy()).isnan().sum() == 0
