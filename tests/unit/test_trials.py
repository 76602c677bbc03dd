"""Trial command lines are complete and concrete before they are mapped into pods."""

import pytest

from ml_pipeline.settings import PipelineSettings
from ml_pipeline.trials import (
    HYPERPARAMETER_FLAGS,
    pop_gpu_resource,
    split_pod_keys,
    trial_arguments,
)

PROCESSED = {
    "train_uri": "s3://b/p/train.parquet",
    "test_uri": "s3://b/p/test.parquet",
    "scaler_uri": "s3://b/p/scaler.json",
}


def arguments(hyperparameters, **overrides):
    options = {
        "trial_id": 1,
        "processed": PROCESSED,
        "experiment": "exp",
        "cache_dir": "/mnt/shared-data",
        "require_cuda": True,
        "tags": {"logical_date": "2026-11-24", "dag_run_id": "manual__x"},
    }
    return trial_arguments(hyperparameters, **{**options, **overrides})


def test_every_trial_of_the_default_grid_has_all_flags_and_no_template():
    for index, hyperparameters in enumerate(PipelineSettings().trial_hyperparameters()):
        args = arguments(hyperparameters, trial_id=index)
        assert args[0] == "train"
        assert not any("{{" in arg or "}}" in arg for arg in args)
        for name, flag in HYPERPARAMETER_FLAGS.items():
            assert args[args.index(flag) + 1] == str(hyperparameters[name])
        assert "--require-cuda" in args
        assert "logical_date=2026-11-24" in args


def test_cuda_is_not_required_when_the_setting_is_off():
    hyperparameters = PipelineSettings().trial_hyperparameters()[0]
    assert "--require-cuda" not in arguments(hyperparameters, require_cuda=False)


def test_unknown_or_missing_hyperparameters_are_named():
    hyperparameters = {**PipelineSettings().trial_hyperparameters()[0], "momentum": 0.9}
    del hyperparameters["epochs"]
    with pytest.raises(ValueError, match=r"unknown \['momentum'\], missing \['epochs'\]"):
        arguments(hyperparameters)


def test_a_trial_may_name_only_the_trainer_image_or_an_allowed_one():
    trial = {"learning_rate": 0.1}
    assert split_pod_keys({**trial, "image": "t:1"}, 1, "t:1", 0)[2] == "t:1"
    assert split_pod_keys({**trial, "image": "t:test"}, 1, "t:1", 0, ("t:test",))[2] == "t:test"
    with pytest.raises(ValueError) as refused:
        split_pod_keys({**trial, "image": "evil/miner:latest"}, 1, "t:1", 3, ("t:test",))
    message = str(refused.value)
    assert message.startswith("trial 3: image 'evil/miner:latest' is not allowed")
    assert "allowed_trial_images (t:test)" in message


def test_a_run_conf_cannot_widen_the_image_allowlist():
    from ml_pipeline.settings import SettingsError, for_run

    with pytest.raises(SettingsError, match="allowed_trial_images"):
        for_run(PipelineSettings(), {"allowed_trial_images": ["evil/miner:latest"]})


def test_a_trial_may_ask_for_a_mig_profile_the_pipeline_allows():
    mig = "nvidia.com/mig-1g.5gb"
    trial = {"learning_rate": 0.1, "gpu_resource": mig}
    assert pop_gpu_resource(dict(trial), "nvidia.com/gpu", (mig,), 0) == mig
    plain = {"learning_rate": 0.1}
    assert pop_gpu_resource(plain, "nvidia.com/gpu", (), 0) == "nvidia.com/gpu"
    taken = dict(trial)
    pop_gpu_resource(taken, "nvidia.com/gpu", (mig,), 0)
    assert taken == plain  # not a hyperparameter the trainer would be given
    with pytest.raises(ValueError) as refused:
        pop_gpu_resource(dict(trial), "nvidia.com/gpu", (), 2)
    message = str(refused.value)
    assert message.startswith("trial 2: gpu_resource 'nvidia.com/mig-1g.5gb' is not allowed")
    assert "allowed_gpu_resources (none)" in message


def test_a_mig_trial_asks_for_its_profile_in_requests_and_limits():
    from ml_pipeline import pods

    resources = pods.trial_resources(PipelineSettings(), 1, "nvidia.com/mig-1g.5gb")
    for side in ("requests", "limits"):
        assert resources[side]["nvidia.com/mig-1g.5gb"] == "1"
        assert "nvidia.com/gpu" not in resources[side]


def test_a_run_conf_cannot_widen_the_gpu_resource_allowlist():
    from ml_pipeline.settings import SettingsError, for_run

    with pytest.raises(SettingsError, match="allowed_gpu_resources"):
        for_run(PipelineSettings(), {"allowed_gpu_resources": ["nvidia.com/mig-7g.80gb"]})
