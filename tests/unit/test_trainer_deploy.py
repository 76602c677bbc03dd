"""``trainer deploy`` in-process against a local MLflow registry: promotion, retirement, retries."""

import json

import pytest
from mlflow import MlflowClient

from trainer.cli import main

MODEL = "unit-deploy-model"


@pytest.fixture(scope="module")
def versions(local_mlflow, tmp_path_factory):
    """Two READY versions of MODEL, each from its own run with an accuracy metric."""
    client = MlflowClient()
    experiment = client.create_experiment("unit-deploy")
    client.create_registered_model(MODEL)
    created = []
    for accuracy in (0.90, 0.93):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "accuracy", accuracy)
        source = tmp_path_factory.mktemp("model")
        created.append(
            str(client.create_model_version(MODEL, str(source), run.info.run_id).version)
        )
    return created


def deploy(tmp_path, version, model=MODEL, run_id="manual__1"):
    """Run deploy in-process; returns (exit code, xcom dict or None, record prefix)."""
    xcom, prefix = tmp_path / "xcom.json", tmp_path / "deployments"
    code = main(
        [
            *("deploy", "--model-name", model, "--version", str(version)),
            *("--record-prefix", str(prefix), "--dag-run-id", run_id, "--xcom-path", str(xcom)),
        ]
    )
    return code, json.loads(xcom.read_text()) if xcom.exists() else None, prefix


def test_first_promotion_has_no_previous_champion(versions, tmp_path):
    code, record, prefix = deploy(tmp_path, versions[0], run_id="run-a")
    assert code == 0
    assert record["previous_champion"] is None
    assert record["metrics"] == {"accuracy": 0.90}
    version = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == versions[0]
    assert version.tags["previous_champion"] == "none"
    assert version.tags["promoted_by"] == "run-a"
    written = json.loads((prefix / MODEL / f"v{versions[0]}.json").read_text())
    assert written == record == json.loads((prefix / MODEL / "latest.json").read_text())


def test_second_promotion_retires_the_first_and_a_retry_changes_nothing(versions, tmp_path):
    first, second = versions
    code, record, _ = deploy(tmp_path, second, run_id="run-b")
    assert code == 0
    assert record["previous_champion"] == first
    # A retried pod: the alias already points at `second`; the record must not change meaning.
    code, retried, _ = deploy(tmp_path, second, run_id="run-b")
    assert code == 0
    assert retried["previous_champion"] == first
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == second
    assert client.get_model_version(MODEL, second).tags["deployment_status"] == "champion"
    retired = client.get_model_version(MODEL, first).tags
    assert retired["deployment_status"] == "retired"
    assert retired["replaced_by"] == second


def test_unknown_model_is_named(local_mlflow, tmp_path, capsys):
    code, record, _ = deploy(tmp_path, 1, model="no-such-model")
    assert code == 1
    assert record is None
    assert "registered model 'no-such-model' does not exist" in capsys.readouterr().err


def test_unknown_version_is_named(versions, tmp_path, capsys):
    code, _, _ = deploy(tmp_path, 99)
    assert code == 1
    assert f"registered model '{MODEL}' has no version '99'" in capsys.readouterr().err
