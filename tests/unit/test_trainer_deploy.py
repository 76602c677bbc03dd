"""``trainer deploy`` in-process against a local MLflow registry: the compare-and-set promotion,
retirement, retries, stale evaluations and the champion history.

The tests run in order on one registered model: v1 is promoted, then v2, then v3 is refused.
"""

import json

import pytest
from mlflow import MlflowClient

from trainer import history
from trainer.cli import main
from trainer.errors import EXIT_STALE_EVALUATION, EXIT_USAGE

MODEL = "unit-deploy-model"
EVALUATION = {
    "reason": "candidate accuracy 0.93 beats the champion's 0.90 by the margin",
    "metric": "accuracy",
    "candidate_metric": 0.93,
    "champion_metric": 0.90,
}


@pytest.fixture(scope="module")
def versions(local_mlflow, tmp_path_factory):
    """Three READY versions of MODEL, each from its own run with an accuracy metric."""
    client = MlflowClient()
    experiment = client.create_experiment("unit-deploy")
    client.create_registered_model(MODEL)
    created = []
    for accuracy in (0.90, 0.93, 0.95):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "accuracy", accuracy)
        source = tmp_path_factory.mktemp("model")
        created.append(
            str(client.create_model_version(MODEL, str(source), run.info.run_id).version)
        )
    return created


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """The record prefix the module's deploys share, so the champion history accumulates."""
    return tmp_path_factory.mktemp("deployments")


def deploy(tmp_path, records, version, expected, *extra, model=MODEL, run_id="manual__1"):
    """Run deploy in-process; returns (exit code, xcom dict or None)."""
    xcom = tmp_path / "xcom.json"
    code = main(
        [
            *("deploy", "--model-name", model, "--version", str(version)),
            *("--record-prefix", str(records), "--dag-run-id", run_id, "--xcom-path", str(xcom)),
            *("--expected-champion", expected, *extra),
        ]
    )
    return code, json.loads(xcom.read_text()) if xcom.exists() else None


def champion() -> str:
    return str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version)


def test_first_promotion_has_no_previous_champion(versions, records, tmp_path):
    code, record = deploy(tmp_path, records, versions[0], "none", run_id="run-a")
    assert code == 0
    assert record["previous_champion"] is None
    assert record["compared_with"] is None
    assert record["metrics"] == {"accuracy": 0.90}
    assert record["history_uri"] == f"{records}/{MODEL}/history.jsonl"
    version = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == versions[0]
    assert version.tags["previous_champion"] == "none"
    assert version.tags["promoted_by"] == "run-a"
    written = json.loads((records / MODEL / f"v{versions[0]}.json").read_text())
    assert written == record == json.loads((records / MODEL / "latest.json").read_text())
    [move] = history.read_moves(str(records), MODEL)
    assert move["from"] is None and move["to"] == versions[0] and move["compared_with"] is None
    assert move["at"] == record["promoted_at"] and move["run_id"] == record["run_id"]
    assert move["dag_run_id"] == "run-a" and move["evaluation"] == {}


def test_second_promotion_retires_the_first_and_a_retry_changes_nothing(
    versions, records, tmp_path
):
    first, second = versions[:2]
    evaluation = ("--evaluation", json.dumps(EVALUATION))
    code, record = deploy(tmp_path, records, second, first, *evaluation, run_id="run-b")
    assert code == 0
    assert record["previous_champion"] == record["compared_with"] == first
    # A retried pod: the alias already points at `second`; the record must not change meaning.
    code, retried = deploy(tmp_path, records, second, first, *evaluation, run_id="run-b")
    assert code == 0
    assert retried["previous_champion"] == first
    client = MlflowClient()
    assert champion() == second
    assert client.get_model_version(MODEL, second).tags["deployment_status"] == "champion"
    retired = client.get_model_version(MODEL, first).tags
    assert retired["deployment_status"] == "retired"
    assert retired["replaced_by"] == second
    moves = history.read_moves(str(records), MODEL)
    assert [(move["from"], move["to"]) for move in moves] == [(None, first), (first, second)]
    assert moves[-1]["evaluation"] == EVALUATION
    assert history.inconsistencies(moves) == []


def test_a_stale_evaluation_is_refused_and_names_who_moved_the_champion(
    versions, records, tmp_path, capsys
):
    first, second, third = versions
    moves_before = history.read_moves(str(records), MODEL)
    code, record = deploy(tmp_path, records, third, first, run_id="run-c")
    assert code == EXIT_STALE_EVALUATION == 6
    assert set(record) == {"error", "exit_code"}
    error = capsys.readouterr().err
    assert f"the champion of {MODEL} is v{second} (promoted by run run-b at " in error
    assert f"the evaluation compared v{third} with v{first}" in error
    assert "stale" in error
    assert "clear score_models of run run-c with its downstream tasks" in error
    assert champion() == second
    assert "deployment_status" not in MlflowClient().get_model_version(MODEL, third).tags
    assert not (records / MODEL / f"v{third}.json").exists()
    assert history.read_moves(str(records), MODEL) == moves_before


def test_expecting_no_champion_when_there_is_one_is_refused(versions, records, tmp_path, capsys):
    second, third = versions[1:]
    code, _ = deploy(tmp_path, records, third, "none", run_id="run-c")
    assert code == EXIT_STALE_EVALUATION
    assert f"the evaluation compared v{third} with no champion" in capsys.readouterr().err
    assert champion() == second


def test_a_retry_after_a_lost_history_write_records_the_move(versions, tmp_path):
    # The pod died after moving the alias but before appending: the retry must add the move.
    first, second = versions[:2]
    fresh = tmp_path / "fresh-records"
    code, _ = deploy(tmp_path, fresh, second, first, run_id="run-b")
    assert code == 0
    [move] = history.read_moves(str(fresh), MODEL)
    assert (move["from"], move["to"]) == (first, second)


def test_evaluation_that_is_not_a_json_object_is_a_usage_error(versions, records, tmp_path, capsys):
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(SystemExit) as exited:
            deploy(tmp_path, records, versions[2], versions[1], "--evaluation", bad)
        assert exited.value.code == EXIT_USAGE
        assert "argument --evaluation" in capsys.readouterr().err
    assert champion() == versions[1]


def test_expected_champion_is_required(versions, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["deploy", "--model-name", MODEL, "--version", "1", "--record-prefix", str(tmp_path)])
    assert exited.value.code == EXIT_USAGE
    assert "--expected-champion" in capsys.readouterr().err


def test_unknown_model_is_named(local_mlflow, records, tmp_path, capsys):
    code, record = deploy(tmp_path, records, 1, "none", model="no-such-model")
    assert code == 1
    assert set(record) == {"error", "exit_code"}
    assert "registered model 'no-such-model' does not exist" in capsys.readouterr().err


def test_unknown_version_is_named(versions, records, tmp_path, capsys):
    code, _ = deploy(tmp_path, records, 99, versions[1])
    assert code == 1
    assert f"registered model '{MODEL}' has no version '99'" in capsys.readouterr().err
