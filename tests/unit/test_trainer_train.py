"""``trainer train`` on the CPU, in-process, on local files with a local MLflow store."""

import json

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from fixtures.datagen import generate_features
from trainer.cli import main
from trainer.commands import preprocess
from trainer.errors import EXIT_CUDA_MISSING, EXIT_DIVERGED, EXIT_USAGE
from trainer.storage import write_parquet

# 4000 rows, 32x2 MLP, Adam at 0.03, 6 epochs: about 0.91 test accuracy in under a second of
# training on two cores (a width-1 model scores about 0.66 on the same data).
MIN_ACCURACY = 0.88
HYPERPARAMETERS = {
    "learning_rate": 0.03,
    "batch_size": 64,
    "optimizer": "adam",
    "epochs": 6,
    "hidden_width": 32,
    "depth": 2,
    "seed": 7,
}
XCOM_KEYS = {
    "trial_id",
    "accuracy",
    "f1",
    "loss",
    "run_id",
    "model_uri",
    "hyperparameters",
    "device",
    "train_seconds",
    "samples_per_second",
}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """preprocess's xcom for 4000 clean rows."""
    root = tmp_path_factory.mktemp("processed")
    write_parquet(generate_features(4000, seed=1), str(root / "features.parquet"))
    return preprocess.run(str(root / "features.parquet"), str(root / "out"), 0.2, seed=42)


def train(processed, xcom_path, trial_id="0", *extra, **overrides):
    """Run ``train`` in-process; returns the exit code."""
    values = {**HYPERPARAMETERS, **overrides}
    flags = [
        item
        for name, value in values.items()
        for item in (f"--{name.replace('_', '-')}", str(value))
    ]
    return main(
        [
            *("train", "--train-uri", processed["train_uri"], "--test-uri", processed["test_uri"]),
            *("--scaler-uri", processed["scaler_uri"]),
            *("--trial-id", trial_id, "--experiment", "unit-train", "--device", "cpu"),
            *("--xcom-path", str(xcom_path), *flags, *extra),
        ]
    )


@pytest.fixture(scope="module")
def first_trial(processed, local_mlflow, tmp_path_factory):
    """The xcom of one trial with the reference hyperparameters."""
    xcom = tmp_path_factory.mktemp("trial") / "xcom.json"
    assert train(processed, xcom, "0", "--tag", "dag_run_id=manual__1", "--tag", "team=ml") == 0
    return json.loads(xcom.read_text())


def test_trial_converges_and_reports_the_documented_xcom(first_trial):
    assert set(first_trial) == XCOM_KEYS
    assert first_trial["accuracy"] >= MIN_ACCURACY
    assert 0.0 < first_trial["f1"] <= 1.0
    assert first_trial["loss"] < 0.4
    assert first_trial["hyperparameters"] == HYPERPARAMETERS
    assert first_trial["device"] == "cpu"
    assert first_trial["trial_id"] == "0"
    assert first_trial["model_uri"].startswith("models:/")
    assert first_trial["train_seconds"] > 0
    assert first_trial["samples_per_second"] > 0


def test_mlflow_run_holds_params_metrics_and_tags(first_trial):
    client = MlflowClient()
    run = client.get_run(first_trial["run_id"])
    assert run.info.run_name == "trial-0"
    assert run.info.status == "FINISHED"
    expected_params = {name: str(value) for name, value in HYPERPARAMETERS.items()}
    assert run.data.params == {**expected_params, "device": "cpu"}
    assert run.data.metrics["accuracy"] == pytest.approx(first_trial["accuracy"])
    assert {"accuracy", "f1", "loss", "train_loss"} <= set(run.data.metrics)
    history = client.get_metric_history(first_trial["run_id"], "train_loss")
    assert [point.step for point in history] == list(range(1, HYPERPARAMETERS["epochs"] + 1))
    assert run.data.tags["dag_run_id"] == "manual__1"
    assert run.data.tags["team"] == "ml"


def test_model_uri_registers_and_loads(first_trial):
    client = MlflowClient()
    client.create_registered_model("unit-train-model")
    version = client.create_model_version(
        "unit-train-model", source=first_trial["model_uri"], run_id=first_trial["run_id"]
    )
    assert version.status == "READY"
    model = mlflow.pytorch.load_model(f"models:/unit-train-model/{version.version}")
    assert model(torch.zeros(3, 16)).shape == (3, 2)


def test_same_seed_gives_identical_metrics(first_trial, processed, tmp_path):
    assert train(processed, tmp_path / "xcom.json", "1") == 0
    again = json.loads((tmp_path / "xcom.json").read_text())
    for metric in ("accuracy", "f1", "loss"):
        assert again[metric] == first_trial[metric]


def test_huge_learning_rate_is_reported_as_divergence(processed, local_mlflow, tmp_path, capsys):
    code = train(processed, tmp_path / "xcom.json", "2", optimizer="sgd", learning_rate=1e4)
    assert code == EXIT_DIVERGED
    assert (
        "training diverged at epoch 1: loss=nan (learning_rate=10000.0, optimizer=sgd)"
        in capsys.readouterr().err
    )
    assert json.loads((tmp_path / "xcom.json").read_text())["exit_code"] == EXIT_DIVERGED
    (failed,) = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("unit-train").experiment_id],
        filter_string="attributes.run_name = 'trial-2'",
    )
    assert failed.info.status == "FAILED"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_require_cuda_without_cuda_exits_5_before_reading_data(tmp_path, capsys):
    nowhere = {"train_uri": str(tmp_path / "absent"), "test_uri": str(tmp_path / "absent")}
    code = main(
        [
            *("train", "--train-uri", nowhere["train_uri"], "--test-uri", nowhere["test_uri"]),
            *("--scaler-uri", str(tmp_path / "absent")),
            *("--learning-rate", "0.01", "--batch-size", "8", "--optimizer", "adam"),
            *("--epochs", "1", "--hidden-width", "4", "--depth", "1", "--seed", "0"),
            *("--trial-id", "9", "--experiment", "unused", "--require-cuda"),
            *("--xcom-path", str(tmp_path / "xcom.json")),
        ]
    )
    assert code == EXIT_CUDA_MISSING
    stderr = capsys.readouterr().err
    assert "CUDA is required" in stderr
    assert "absent" not in stderr


def test_require_cuda_contradicting_device_cpu_is_a_usage_error(processed, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train(processed, tmp_path / "xcom.json", "3", "--require-cuda")
    assert exit_info.value.code == 2


def test_deterministic_flag_keeps_the_cpu_result_and_is_recorded(first_trial, processed, tmp_path):
    # The CPU always runs deterministic kernels; the flag changes CUDA only (tests/gpu).
    assert train(processed, tmp_path / "xcom.json", "4", "--deterministic") == 0
    again = json.loads((tmp_path / "xcom.json").read_text())
    assert [again[m] for m in ("accuracy", "f1", "loss")] == [
        first_trial[m] for m in ("accuracy", "f1", "loss")
    ]
    assert MlflowClient().get_run(again["run_id"]).data.params["deterministic"] == "true"


def test_compile_trains_a_tiny_model_to_the_same_accuracy(processed, local_mlflow, tmp_path):
    # 3200 training rows in batches of 64: one batch shape, so torch.compile compiles once
    # (about 15-40 s here with a cold cache, which is the whole cost of this test).
    assert train(processed, tmp_path / "xcom.json", "5", "--compile") == 0
    result = json.loads((tmp_path / "xcom.json").read_text())
    assert result["accuracy"] >= MIN_ACCURACY
    assert MlflowClient().get_run(result["run_id"]).data.params["compile"] == "true"
    # The logged model is the plain module, loadable without a compiler.
    assert result["model_uri"].startswith("models:/")


def test_compile_without_a_compiler_exits_2_before_reading_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    absent = str(tmp_path / "absent")
    code = main(
        [
            *("train", "--train-uri", absent, "--test-uri", absent, "--device", "cpu"),
            *("--scaler-uri", absent),
            *("--learning-rate", "0.01", "--batch-size", "8", "--optimizer", "adam"),
            *("--epochs", "1", "--hidden-width", "4", "--depth", "1", "--seed", "0"),
            *("--trial-id", "9", "--experiment", "unused", "--compile"),
            *("--xcom-path", str(tmp_path / "xcom.json")),
        ]
    )
    assert code == EXIT_USAGE
    stderr = capsys.readouterr().err
    assert "--compile on cpu needs a C++ compiler" in stderr
    assert "drop --compile" in stderr
    assert "absent" not in stderr
