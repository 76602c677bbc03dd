"""The DAG's Python callables, with the Airflow context faked (the boundary, not the logic)."""

from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

import ml_training_pipeline as pipeline

PROCESSED = {
    "train_uri": "s3://a/train.parquet",
    "test_uri": "s3://a/test.parquet",
    "scaler_uri": "s3://a/scaler.json",
}


@pytest.fixture
def context(monkeypatch):
    """A run's context as get_current_context() returns it; tests fill in dag_run.conf."""
    values = {
        "run_id": "manual__2026-11-24T00:00:00+00:00",
        "ds": "2026-11-24",
        "dag_run": SimpleNamespace(conf={}),
    }
    monkeypatch.setattr(pipeline, "get_current_context", lambda: values)
    return values


def commands_of(trial_pods):
    return [trial_pod["arguments"] for trial_pod in trial_pods]


def test_generate_hyperparams_renders_one_command_per_trial(context):
    commands = commands_of(pipeline.generate_hyperparams.function(PROCESSED))
    assert len(commands) == len(pipeline.SETTINGS.trial_hyperparameters())
    for index, command in enumerate(commands):
        assert command[command.index("--trial-id") + 1] == str(index)
        assert "logical_date=2026-11-24" in command
        assert not any("{{" in argument for argument in command)


def test_generate_hyperparams_takes_the_trials_of_the_run_conf(context):
    context["dag_run"].conf = {"trials": [{"learning_rate": 1e4, "optimizer": "sgd"}]}
    (command,) = commands_of(pipeline.generate_hyperparams.function(PROCESSED))
    assert command[command.index("--learning-rate") + 1] == "10000.0"
    assert command[command.index("--optimizer") + 1] == "sgd"


def test_each_trial_requests_one_gpu_unless_it_asks_for_its_own_count(context):
    context["dag_run"].conf = {"trials": [{"learning_rate": 0.01}, {"gpus": 3}]}
    default, own = pipeline.generate_hyperparams.function(PROCESSED)
    for trial_pod, gpus in ((default, "1"), (own, "3")):
        resources = trial_pod["container_resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert resources["limits"]["nvidia.com/gpu"] == gpus
        assert set(resources["requests"]) == {"cpu", "memory", "nvidia.com/gpu"}
    assert "--gpus" not in own["arguments"]


def test_the_gpus_per_trial_setting_is_the_default_count(context, monkeypatch):
    monkeypatch.setattr(
        pipeline, "SETTINGS", pipeline.SETTINGS.model_copy(update={"gpus_per_trial": 2})
    )
    for trial_pod in pipeline.generate_hyperparams.function(PROCESSED):
        assert trial_pod["container_resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_a_gpu_count_that_is_not_a_whole_number_is_named(context):
    context["dag_run"].conf = {"trials": [{"gpus": "two"}]}
    with pytest.raises(ValueError, match=r"trial 0: gpus must be a whole number"):
        pipeline.generate_hyperparams.function(PROCESSED)


def test_each_trial_runs_the_trainer_image_unless_it_names_an_allowed_one(context, monkeypatch):
    context["dag_run"].conf = {"trials": [{}, {"image": "ml-testbed/trainer:candidate"}]}
    with pytest.raises(ValueError, match="trial 1: image 'ml-testbed/trainer:candidate' is not"):
        pipeline.generate_hyperparams.function(PROCESSED)
    allowed = {"allowed_trial_images": ("ml-testbed/trainer:candidate",)}
    monkeypatch.setattr(pipeline, "SETTINGS", pipeline.SETTINGS.model_copy(update=allowed))
    default, own = pipeline.generate_hyperparams.function(PROCESSED)
    assert default["image"] == pipeline.SETTINGS.trainer_image
    assert own["image"] == "ml-testbed/trainer:candidate"
    assert not any("candidate" in argument for argument in own["arguments"])


def test_a_trial_image_that_is_not_a_reference_is_named(context):
    context["dag_run"].conf = {"trials": [{"image": ""}]}
    with pytest.raises(ValueError, match=r"trial 0: image must be an image reference"):
        pipeline.generate_hyperparams.function(PROCESSED)


def test_a_conf_key_a_run_may_not_set_fails_with_its_name(context):
    context["dag_run"].conf = {"trainer_image": "other"}
    with pytest.raises(ValueError, match=r"dag_run\.conf sets trainer_image"):
        pipeline.generate_hyperparams.function(PROCESSED)


def test_select_best_model_fails_clearly_when_no_trial_succeeded(context):
    with pytest.raises(AirflowFailException, match="none of the hyperparameter trials succeeded"):
        pipeline.select_best_model.function([])


def test_select_best_model_uses_the_runs_metric(context):
    context["dag_run"].conf = {"evaluation_metric": "f1"}
    results = [
        {"trial_id": "0", "accuracy": 0.9, "f1": 0.6, "loss": 0.2},
        {"trial_id": "1", "accuracy": 0.8, "f1": 0.7, "loss": 0.2},
    ]
    assert pipeline.select_best_model.function(results)["trial_id"] == "1"


@pytest.mark.parametrize(
    ("decision", "branch"), [("deploy", "deploy_model"), ("skip", "skip_deployment")]
)
def test_branch_follows_the_decision(decision, branch):
    assert pipeline.choose_branch(decision) == branch


def test_unknown_decision_fails_the_branch():
    with pytest.raises(AirflowFailException, match="expected one of"):
        pipeline.choose_branch("maybe")


def test_run_setting_macro_applies_the_conf():
    dag_run = SimpleNamespace(conf={"data_prefix": "scenarios/late_data/daily"})
    assert pipeline.run_setting(dag_run, "data_prefix") == "scenarios/late_data/daily"
    assert pipeline.run_setting(SimpleNamespace(conf=None), "data_prefix") == "daily"


UNSCORABLE = {
    "champion": {"version": "4", "scorable": False, "why": "a bare network logged before ..."},
    "datasets": {"today": {"candidate": {"accuracy": 0.9}}},
}


def test_an_unscorable_champion_fails_the_evaluation_saying_what_to_do():
    with pytest.raises(AirflowFailException) as raised:
        pipeline._champion_scores(UNSCORABLE, "accuracy", pipeline.SETTINGS)
    message = str(raised.value)
    assert "champion v4 cannot be scored on today's data: a bare network" in message
    assert '{"unscorable_champion": "replace"}' in message
    assert "logged figure" in message


def test_replace_lets_the_threshold_decide_against_an_unscorable_champion():
    settings = pipeline.SETTINGS.model_copy(update={"unscorable_champion": "replace"})
    assert pipeline._champion_scores(UNSCORABLE, "accuracy", settings) is None
    scored = {
        "champion": {"version": "4", "scorable": True},
        "datasets": {"today": {"candidate": {"accuracy": 0.9}, "champion": {"accuracy": 0.8}}},
    }
    assert pipeline._champion_scores(scored, "accuracy", pipeline.SETTINGS) == {"today": 0.8}


def test_a_trial_asking_for_an_allowed_mig_profile_gets_it_and_its_operator_checks_it(
    context, monkeypatch
):
    mig = "nvidia.com/mig-1g.5gb"
    context["dag_run"].conf = {"trials": [{}, {"gpu_resource": mig}]}
    with pytest.raises(ValueError, match=f"trial 1: gpu_resource '{mig}' is not allowed"):
        pipeline.generate_hyperparams.function(PROCESSED)
    allowed = {"allowed_gpu_resources": (mig,)}
    monkeypatch.setattr(pipeline, "SETTINGS", pipeline.SETTINGS.model_copy(update=allowed))
    default, own = pipeline.generate_hyperparams.function(PROCESSED)
    assert default["gpu_resource_name"] == "nvidia.com/gpu"
    assert own["gpu_resource_name"] == mig
    assert own["container_resources"]["limits"][mig] == "1"
    assert "nvidia.com/gpu" not in own["container_resources"]["limits"]
    assert "gpu_resource" not in " ".join(own["arguments"])
