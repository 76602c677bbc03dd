"""``trainer train`` on CUDA: the same trial as on the CPU, within bf16's tolerance.

Skips with its reason where torch sees no CUDA device (CI has none).
"""

import json

import pytest
import torch
from mlflow import MlflowClient

from fixtures.datagen import generate_features
from trainer.cli import main
from trainer.commands import preprocess
from trainer.storage import write_parquet

pytestmark = pytest.mark.gpu
# bf16 autocast and TF32 change rounding, not the model: on 800 test rows, 0.02 is 16 rows.
ACCURACY_TOLERANCE = 0.02
HYPERPARAMETERS = [
    *("--learning-rate", "0.03", "--batch-size", "64", "--optimizer", "adam", "--epochs", "6"),
    *("--hidden-width", "32", "--depth", "2", "--seed", "7"),
]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """preprocess's xcom for 4000 clean rows."""
    root = tmp_path_factory.mktemp("processed")
    write_parquet(generate_features(4000, seed=1), str(root / "features.parquet"))
    return preprocess.run(str(root / "features.parquet"), str(root / "out"), 0.2, seed=42)


def train(processed, tmp_path, trial_id, *device_flags):
    """One trial in-process; returns its xcom."""
    xcom = tmp_path / f"xcom-{trial_id}.json"
    code = main(
        [
            *("train", "--train-uri", processed["train_uri"], "--test-uri", processed["test_uri"]),
            *("--scaler-uri", processed["scaler_uri"]),
            *("--trial-id", trial_id, "--experiment", "gpu-checks", "--xcom-path", str(xcom)),
            *HYPERPARAMETERS,
            *device_flags,
        ]
    )
    assert code == 0
    return json.loads(xcom.read_text())


def test_cuda_accuracy_matches_the_cpu(processed, local_mlflow, tmp_path):
    on_cpu = train(processed, tmp_path, "cpu", "--device", "cpu")
    on_cuda = train(processed, tmp_path, "cuda", "--device", "cuda")
    assert (on_cpu["device"], on_cuda["device"]) == ("cpu", "cuda")
    assert on_cuda["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=ACCURACY_TOLERANCE)
    params = MlflowClient().get_run(on_cuda["run_id"]).data.params
    assert params["device"] == "cuda"
    assert params["gpu_name"] == torch.cuda.get_device_name()


def test_require_cuda_trains_on_the_gpu(processed, local_mlflow, tmp_path):
    result = train(processed, tmp_path, "required", "--device", "auto", "--require-cuda")
    assert result["device"] == "cuda"
    assert result["samples_per_second"] > 0


def test_deterministic_cuda_trials_repeat_exactly(processed, local_mlflow, tmp_path):
    first = train(processed, tmp_path, "det-1", "--device", "cuda", "--deterministic")
    second = train(processed, tmp_path, "det-2", "--device", "cuda", "--deterministic")
    assert [first[m] for m in ("accuracy", "f1", "loss")] == [
        second[m] for m in ("accuracy", "f1", "loss")
    ]


def test_compiled_cuda_accuracy_matches_the_cpu(processed, local_mlflow, tmp_path):
    on_cpu = train(processed, tmp_path, "cpu-ref", "--device", "cpu")
    compiled = train(processed, tmp_path, "compiled", "--device", "cuda", "--compile")
    assert compiled["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=ACCURACY_TOLERANCE)


def test_evaluate_on_cuda_scores_as_on_the_cpu(processed, local_mlflow, tmp_path):
    # The served model (mlflow.pyfunc, TorchScript inference path) on the GPU and on the CPU.
    trained = train(processed, tmp_path, "served", "--device", "cuda")
    scores = {}
    for device in ("cpu", "cuda"):
        xcom = tmp_path / f"evaluate-{device}.json"
        code = main(
            [
                *("evaluate", "--candidate-uri", trained["model_uri"], "--model-name", "gpu-m"),
                *("--dataset", f"today={processed['holdout_uri']}", "--experiment", "gpu-checks"),
                *("--device", device, "--xcom-path", str(xcom)),
            ]
        )
        assert code == 0
        scores[device] = json.loads(xcom.read_text())
    assert scores["cuda"]["device"] == "cuda"
    cpu, cuda = (scores[d]["datasets"]["today"]["candidate"] for d in ("cpu", "cuda"))
    assert cuda["accuracy"] == pytest.approx(cpu["accuracy"], abs=ACCURACY_TOLERANCE)
