"""The settings module: production defaults, layering, and errors that say where."""

import pytest

from ml_pipeline.settings import (
    RUN_OVERRIDABLE,
    PipelineSettings,
    SettingsError,
    for_run,
    harness_profile,
    load_settings,
)


def test_defaults_are_the_production_values():
    settings = load_settings(variable={}, environ={})
    assert settings.schedule == "@daily"
    assert settings.data_bucket == "ml-datasets"
    assert settings.gpu_resource_name == "nvidia.com/gpu"
    assert settings.gpus_per_trial == 1
    assert set(settings.gpu_node_selector) == {"gpu-type", "node-pool"}
    assert settings.on_finish_action == "delete_succeeded_pod"
    assert settings.require_cuda is True


def test_a_pod_may_wait_hours_for_a_node_but_only_minutes_to_start_once_placed():
    settings = load_settings(variable={}, environ={})
    assert settings.pod_schedule_timeout_seconds == 12 * 3600
    assert settings.pod_startup_timeout_seconds == 600
    harness = load_settings(variable=harness_profile(), environ={})
    assert harness.pod_startup_timeout_seconds < harness.pod_schedule_timeout_seconds


def test_environment_overrides_the_variable():
    settings = load_settings(
        variable={"trainer_image": "from-variable:1", "retries": 5},
        environ={"ML_PIPELINE_TRAINER_IMAGE": "from-env:2", "UNRELATED": "x"},
    )
    assert settings.trainer_image == "from-env:2"
    assert settings.retries == 5


def test_environment_values_are_json_for_non_strings():
    settings = load_settings(
        variable={},
        environ={
            "ML_PIPELINE_GPUS_PER_TRIAL": "2",
            "ML_PIPELINE_GPU_NODE_SELECTOR": '{"pool": "a"}',
            "ML_PIPELINE_IMAGE_PULL_POLICY": "Never",
            "ML_PIPELINE_SCHEDULE": "null",
        },
    )
    assert settings.gpus_per_trial == 2
    assert settings.gpu_node_selector == {"pool": "a"}
    assert settings.image_pull_policy == "Never"
    assert settings.schedule is None


def test_wrong_type_in_variable_names_the_source_and_field():
    with pytest.raises(SettingsError, match=r"Airflow Variable ml_pipeline_settings.*retries"):
        load_settings(variable={"retries": "many"}, environ={})


def test_unknown_field_in_variable_is_rejected():
    with pytest.raises(SettingsError, match="trainer_imag"):
        load_settings(variable={"trainer_imag": "typo"}, environ={})


def test_unknown_environment_variable_is_rejected_with_the_known_names():
    with pytest.raises(SettingsError, match=r"ML_PIPELINE_GPU_COUNT names no pipeline setting"):
        load_settings(variable={}, environ={"ML_PIPELINE_GPU_COUNT": "2"})


def test_bad_json_in_environment_is_rejected():
    with pytest.raises(SettingsError, match="ML_PIPELINE_TRIAL_GRID is not valid JSON"):
        load_settings(variable={}, environ={"ML_PIPELINE_TRIAL_GRID": "{lr: 1"})


def test_run_conf_overrides_allowed_fields_only():
    base = PipelineSettings()
    run = for_run(base, {"model_name": "scenario-model", "data_prefix": "scenarios/a"})
    assert (run.model_name, run.data_prefix) == ("scenario-model", "scenarios/a")
    with pytest.raises(SettingsError, match="sensor_timeout_seconds, which a single run may not"):
        for_run(base, {"sensor_timeout_seconds": 1})


def test_run_conf_of_the_wrong_type_names_dag_run_conf():
    with pytest.raises(SettingsError, match=r"dag_run.conf: .*metric_floor"):
        for_run(PipelineSettings(), {"metric_floor": "high"})


def test_run_overridable_fields_exist():
    assert set(PipelineSettings.model_fields) >= RUN_OVERRIDABLE


def test_trial_grid_is_the_product_over_the_defaults():
    settings = PipelineSettings(
        trial_grid={"learning_rate": [0.1, 0.01], "batch_size": [32, 64]},
        trial_defaults={"epochs": 3, "learning_rate": 9.0},
    )
    trials = settings.trial_hyperparameters()
    assert len(trials) == 4
    assert {(t["learning_rate"], t["batch_size"]) for t in trials} == {
        (0.1, 32),
        (0.1, 64),
        (0.01, 32),
        (0.01, 64),
    }
    assert all(t["epochs"] == 3 for t in trials)


def test_explicit_trials_replace_the_grid():
    settings = PipelineSettings(trials=({"learning_rate": 1e4},), trial_defaults={"epochs": 2})
    assert settings.trial_hyperparameters() == [{"epochs": 2, "learning_rate": 1e4}]


def test_harness_profile_is_valid_and_takes_overrides():
    profile = harness_profile(trainer_image="trainer:dev")
    settings = load_settings(variable=profile, environ={})
    assert settings.trainer_image == "trainer:dev"
    assert settings.schedule is None
    assert settings.sensor_poke_interval_seconds < PipelineSettings().sensor_poke_interval_seconds
    with pytest.raises(SettingsError, match="harness test profile"):
        harness_profile(retries=-1)


def test_a_floor_above_one_is_refused_for_a_fraction_metric():
    from ml_pipeline.settings import PipelineSettings

    with pytest.raises(ValueError, match=r"metric_floor 80\.0 is above 1"):
        PipelineSettings(metric_floor=80)
    assert PipelineSettings(evaluation_metric="loss", metric_floor=1.5).metric_floor == 1.5
