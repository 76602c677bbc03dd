"""The DAG's own tasks, fed by the real trainer, against real moto S3 and MLflow servers.

Only the Airflow context is faked: the commands the DAG generates run as the trainer, and the
registry and notification calls reach the servers. Two runs: the first deploys (no champion yet),
the second's weaker candidate is rejected and tagged so.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import boto3
import pytest
from airflow.sdk.exceptions import AirflowFailException

import ml_training_pipeline as pipeline
from fixtures.datagen import generate_features, write_features
from ml_pipeline import registry

LOGICAL_DATE = "2026-11-24"
MODEL = "e2e-classifier"
DATA_URI = f"s3://ml-datasets/scenarios/e2e/{LOGICAL_DATE}/features.parquet"
RUN_CONF = {
    "model_name": MODEL,
    "experiment_name": "e2e-trials",
    "data_prefix": "scenarios/e2e",
    "metric_floor": 0.3,
    "trial_defaults": {
        "learning_rate": 0.01,
        "batch_size": 64,
        "optimizer": "adam",
        "epochs": 4,
        "hidden_width": 32,
        "depth": 2,
        "seed": 3,
    },
    # A good trial, a weak one (one epoch of slow sgd) and one that diverges.
    "trials": [
        {},
        {"optimizer": "sgd", "learning_rate": 0.0005, "epochs": 1},
        {"optimizer": "sgd", "learning_rate": 1e6},
    ],
}


@pytest.fixture
def world(moto_server, mlflow_server, aws_env, monkeypatch, tmp_path):
    """Buckets, fixture data, DAG settings pointing at the servers, and a fake task context."""
    s3 = boto3.client("s3")
    for bucket in ("ml-datasets", "ml-artifacts"):
        s3.create_bucket(Bucket=bucket)
    write_features(generate_features(rows=3000, seed=11), DATA_URI)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({"conn_type": "aws", "extra": {"endpoint_url": moto_server}}),
    )
    monkeypatch.setattr(
        pipeline,
        "SETTINGS",
        pipeline.SETTINGS.model_copy(
            update={
                "mlflow_tracking_uri": mlflow_server,
                "require_cuda": False,
                "shared_data_mount_path": str(tmp_path / "shared-data"),
            }
        ),
    )
    context = {"ds": LOGICAL_DATE}
    monkeypatch.setattr(pipeline, "get_current_context", lambda: context)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    return SimpleNamespace(s3=s3, context=context, env=env, tmp=tmp_path)


def start_run(world, run_id):
    world.context.update(run_id=run_id, dag_run=SimpleNamespace(run_id=run_id, conf=RUN_CONF))


def trainer(world, arguments):
    """Runs one trainer command as its pod would; returns (exit code, xcom or None, stderr)."""
    xcom = world.tmp / f"xcom-{len(list(world.tmp.glob('xcom-*')))}.json"
    done = subprocess.run(
        [sys.executable, "-m", "trainer", *arguments],
        env={**world.env, "TRAINER_XCOM_PATH": str(xcom)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, json.loads(xcom.read_text()) if xcom.exists() else None, done.stderr


def prepare_and_train(world):
    code, _, stderr = trainer(world, ["validate", "--input", DATA_URI, "--min-rows", "500"])
    assert code == 0, stderr
    prefix = f"s3://ml-artifacts/processed/{world.context['run_id']}"
    code, processed, stderr = trainer(
        world, ["preprocess", "--input", DATA_URI, "--output-prefix", prefix]
    )
    assert code == 0, stderr
    outcomes = [
        trainer(world, trial_pod["arguments"])
        for trial_pod in pipeline.generate_hyperparams.function(processed)
    ]
    return processed, outcomes


def score(world, best, processed):
    """What score_models runs: the candidate and the champion on today's held-out rows."""
    code, scores, stderr = trainer(
        world,
        [
            *("evaluate", "--candidate-uri", best["model_uri"], "--model-name", MODEL),
            *("--dataset", f"today={processed['holdout_uri']}", "--experiment", "e2e-trials"),
            *("--tag", f"dag_run_id={world.context['run_id']}", "--device", "cpu"),
        ],
    )
    assert code == 0, stderr
    return scores


def test_first_run_deploys_then_a_weaker_candidate_is_rejected(world):
    start_run(world, "manual__first")
    processed, (good, weak, diverged) = prepare_and_train(world)
    assert good[0] == 0 and weak[0] == 0, (good[2], weak[2])
    assert diverged[0] == 4 and "diverged" in diverged[2]
    assert weak[1]["accuracy"] < good[1]["accuracy"] - 0.05

    # The reduce sees the successful trials only.
    best = pipeline.select_best_model.function([good[1], weak[1]])
    assert best["run_id"] == good[1]["run_id"]
    scores = score(world, best, processed)
    weak_before = score(world, weak[1], processed)
    assert scores["champion"]["version"] is None
    evaluation = pipeline.evaluate_model.function(best, scores)
    assert evaluation["decision"] == "deploy", evaluation["reason"]
    assert evaluation["champion_version"] is None
    # The served model scores today's raw rows as the trainer scored the preprocessed ones.
    assert evaluation["candidate_metric"] == pytest.approx(good[1]["accuracy"], abs=1e-6)
    assert pipeline.choose_branch(evaluation["decision"]) == "deploy_model"
    code, record, stderr = trainer(
        world,
        [
            "deploy",
            "--model-name",
            MODEL,
            "--version",
            evaluation["candidate_version"],
            "--record-prefix",
            "s3://ml-artifacts/deployments",
            "--dag-run-id",
            "manual__first",
            "--expected-champion",
            "none",
            "--canary-uri",
            processed["holdout_uri"],
        ],
    )
    assert code == 0, stderr
    assert str(record["version"]) == evaluation["candidate_version"]
    assert record["canary"]["rows"] > 16
    client = registry.client_for(pipeline.SETTINGS.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == evaluation["candidate_version"]

    # Scores taken before the champion existed are stale now: nothing is decided on them.
    start_run(world, "manual__second")
    with pytest.raises(AirflowFailException, match=r"is now v\d+: clear score_models with"):
        pipeline.evaluate_model.function(weak[1], weak_before)
    with pytest.raises(AirflowFailException, match="not the best trial's model"):
        pipeline.evaluate_model.function(weak[1], scores)
    assert registry.versions_registered_by(client, MODEL, "manual__second") == []

    # Second run: its best is the weak trial, which does not beat the champion.
    scores = score(world, weak[1], processed)
    assert scores["champion"] == {
        "version": champion.version,
        "uri": f"models:/{MODEL}/{champion.version}",
        "run_id": good[1]["run_id"],
        "scorable": True,
        "why": None,
    }
    today = scores["datasets"]["today"]
    assert today["champion"]["accuracy"] == pytest.approx(good[1]["accuracy"], abs=1e-6)
    evaluation = pipeline.evaluate_model.function(weak[1], scores)
    assert evaluation["decision"] == "skip"
    assert evaluation["champion_version"] == champion.version
    assert pipeline.choose_branch(evaluation["decision"]) == "skip_deployment"
    pipeline.skip_deployment.function(evaluation)
    rejected = client.get_model_version(MODEL, evaluation["candidate_version"])
    assert rejected.tags["deployment_status"] == "rejected"
    assert f"vs champion v{champion.version}" in rejected.tags["rejection_reason"]
    assert rejected.tags["evaluated_against"] == champion.version
    assert float(rejected.tags["eval.today.champion.accuracy"]) == pytest.approx(
        today["champion"]["accuracy"], abs=1e-6
    )
    assert rejected.tags["eval.today.digest"] == today["digest"]
    evaluation_run = client.get_run(scores["evaluation_run_id"])
    assert evaluation_run.data.tags["kind"] == "evaluation"
    assert [i.dataset.name for i in evaluation_run.inputs.dataset_inputs] == ["today"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version

    # A retried evaluate_model reuses the version it registered.
    again = pipeline.evaluate_model.function(weak[1], scores)
    assert again["candidate_version"] == rejected.version


def fake_task_instance(states, xcoms):
    return SimpleNamespace(
        task_id="send_notification",
        get_task_states=lambda dag_id, run_ids: {run_ids[0]: dict(states)},
        xcom_pull=lambda task_ids: xcoms.get(task_ids),
    )


def read_notification(world, run_id):
    key = f"notifications/ml_full_training_pipeline/{run_id}.json"
    return json.loads(world.s3.get_object(Bucket="ml-artifacts", Key=key)["Body"].read())


def test_notification_of_a_skipped_run_lands_in_s3(world):
    start_run(world, "manual__skipped")
    evaluation = {"model_name": MODEL, "candidate_version": "2", "reason": "not better"}
    states = {"evaluate_model": "success", "skip_deployment": "success", "deploy_model": "skipped"}
    world.context["ti"] = fake_task_instance(states, {"evaluate_model": evaluation})
    returned = pipeline.send_notification.function()
    stored = read_notification(world, "manual__skipped")
    assert stored["outcome"] == returned["outcome"] == "skipped"
    assert stored["evaluation"]["reason"] == "not better"


def test_notification_of_a_failed_run_is_sent_then_fails_the_task(world):
    start_run(world, "manual__late")
    states = {
        "wait_for_training_data": "failed",
        "data_preparation.validate_data": "upstream_failed",
    }
    world.context["ti"] = fake_task_instance(states, {})
    with pytest.raises(AirflowFailException, match="failed at wait_for_training_data"):
        pipeline.send_notification.function()
    assert read_notification(world, "manual__late")["failed_task"] == "wait_for_training_data"


def test_a_registered_model_without_champion_has_no_champion(mlflow_server):
    client = registry.client_for(mlflow_server)
    client.create_registered_model("no-champion-yet")
    assert registry.current_champion(client, "no-champion-yet") is None
    assert registry.current_champion(client, "never-registered") is None
