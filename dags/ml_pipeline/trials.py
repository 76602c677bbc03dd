"""Turns trial hyperparameters into the trainer's command line, fully rendered.

Values returned by a task and mapped into a templated field are not template-rendered, so every
argument here is concrete: no ``{{ ds }}`` may reach a pod literally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A trial's key that is its pod's GPU count, not a hyperparameter (default: gpus_per_trial).
GPUS_KEY = "gpus"
# A trial's key naming the extended resource its GPUs are asked as (default: gpu_resource_name),
# e.g. a MIG profile (nvidia.com/mig-1g.10gb) for a trial that needs a slice of a GPU.
GPU_RESOURCE_KEY = "gpu_resource"
# A trial's key that is its pod's image, e.g. a trainer build under test (default: trainer_image).
IMAGE_KEY = "image"
# A trial's key saying whether its packaged model imputes missing features (default true);
# false packages one that expects complete rows, which deploy's canary refuses.
IMPUTE_KEY = "impute_missing"
# The trainer's flag for each hyperparameter (trainer/cli.py defines them).
HYPERPARAMETER_FLAGS = {
    "learning_rate": "--learning-rate",
    "batch_size": "--batch-size",
    "optimizer": "--optimizer",
    "epochs": "--epochs",
    "hidden_width": "--hidden-width",
    "depth": "--depth",
    "seed": "--seed",
}


def split_pod_keys(
    trial: Mapping[str, Any],
    default_gpus: int,
    default_image: str,
    trial_id: int,
    allowed_images: tuple[str, ...] = (),
) -> tuple[dict[str, Any], int, str]:
    """A trial's hyperparameters without its pod's keys, and its GPU count and image.

    The image is ``default_image`` or one of ``allowed_images``: the pod runs with the
    pipeline's credentials, whoever wrote the run's conf.
    """
    hyperparameters = dict(trial)
    gpus = hyperparameters.pop(GPUS_KEY, default_gpus)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(
            f"trial {trial_id}: {GPUS_KEY} must be a whole number of GPUs (0 or more), got {gpus!r}"
        )
    image = hyperparameters.pop(IMAGE_KEY, default_image)
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"trial {trial_id}: {IMAGE_KEY} must be an image reference, got {image!r}")
    if image != default_image and image not in allowed_images:
        raise ValueError(
            f"trial {trial_id}: {IMAGE_KEY} {image!r} is not allowed: a trial runs trainer_image "
            f"({default_image}) or an image listed in the setting allowed_trial_images "
            f"({', '.join(allowed_images) or 'none'}); add it there, in the pipeline's Variable"
        )
    return hyperparameters, gpus, image


def pop_gpu_resource(
    hyperparameters: dict[str, Any], default: str, allowed: tuple[str, ...], trial_id: int
) -> str:
    """Removes the trial's ``gpu_resource`` from ``hyperparameters``; returns it (``default``
    without one), which must be ``default`` or one of ``allowed``."""
    resource = hyperparameters.pop(GPU_RESOURCE_KEY, default)
    if resource != default and resource not in allowed:
        raise ValueError(
            f"trial {trial_id}: {GPU_RESOURCE_KEY} {resource!r} is not allowed: a trial asks for "
            f"gpu_resource_name ({default}) or a resource listed in the setting "
            f"allowed_gpu_resources ({', '.join(allowed) or 'none'}), e.g. a MIG profile its "
            "nodes advertise; add it there, in the pipeline's Variable"
        )
    return resource


def trial_arguments(
    hyperparameters: Mapping[str, Any],
    *,
    trial_id: int,
    processed: Mapping[str, Any],
    experiment: str,
    cache_dir: str,
    require_cuda: bool,
    tags: Mapping[str, str],
) -> list[str]:
    """The ``train`` command of one trial; ``processed`` is preprocess_data's xcom."""
    hyperparameters = dict(hyperparameters)
    impute = hyperparameters.pop(IMPUTE_KEY, True)
    if not isinstance(impute, bool):
        raise ValueError(f"trial {trial_id}: {IMPUTE_KEY} must be true or false, got {impute!r}")
    unknown = sorted(set(hyperparameters) - set(HYPERPARAMETER_FLAGS))
    missing = sorted(set(HYPERPARAMETER_FLAGS) - set(hyperparameters))
    if unknown or missing:
        raise ValueError(
            f"trial {trial_id} hyperparameters are wrong: unknown {unknown or 'none'}, "
            f"missing {missing or 'none'}. Known: {', '.join(HYPERPARAMETER_FLAGS)}; "
            "set them in trial_grid, trial_defaults or trials."
        )
    arguments = [
        "train",
        "--train-uri",
        str(processed["train_uri"]),
        "--test-uri",
        str(processed["test_uri"]),
        "--scaler-uri",
        str(processed["scaler_uri"]),
        "--trial-id",
        str(trial_id),
        "--experiment",
        experiment,
        "--device",
        "auto",
        "--cache-dir",
        cache_dir,
    ]
    for name, flag in HYPERPARAMETER_FLAGS.items():
        arguments += [flag, str(hyperparameters[name])]
    if require_cuda:
        arguments.append("--require-cuda")
    if not impute:
        arguments.append("--no-impute-missing")
    for key, value in sorted(tags.items()):
        arguments += ["--tag", f"{key}={value}"]
    return arguments
