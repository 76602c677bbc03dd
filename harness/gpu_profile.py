"""The harness's GPU profile: ``ML_TESTBED_PROFILE=gpu``, read here and nowhere else.

In the GPU profile the stack runs on a real GPU cluster (the kubeconfig provider, nodes with
NVIDIA's device plugin), the trainer image carries a CUDA build of torch, and every trial passes
``--require-cuda``, so a trial that lands without a GPU fails at once instead of training on the
CPU. ``python -m harness.gpu_profile scenarios [PYTEST ARGS]`` runs the scenario suite that
way where ``ML_TESTBED_KUBECONFIG`` names a cluster, and says in one line why not elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from harness.requirements import is_required, why_required

PROFILE_ENV = "ML_TESTBED_PROFILE"
PROFILES = ("default", "gpu")
# Where the trainer image's torch comes from; set, it replaces the local CPU wheel.
TORCH_INDEX_ENV = "ML_TESTBED_TORCH_INDEX_URL"
# PyPI's torch for Linux x86_64 is the CUDA build; a PyTorch index such as
# https://download.pytorch.org/whl/cu128 picks another CUDA version.
DEFAULT_CUDA_TORCH_INDEX = "https://pypi.org/simple"
KUBECONFIG_ENV = "ML_TESTBED_KUBECONFIG"
# The pipeline's own environment layer (dags/ml_pipeline/settings.py): Airflow's processes
# inherit the harness's environment, so this reaches the DAG over the harness's Variable.
REQUIRE_CUDA_SETTING_ENV = "ML_PIPELINE_REQUIRE_CUDA"


def profile(environ: Mapping[str, str] | None = None) -> str:
    """The active profile, "default" when unset; ValueError for an unknown one."""
    name = (os.environ if environ is None else environ).get(PROFILE_ENV) or "default"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; choose one of {PROFILES}")
    return name


def is_gpu(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the GPU profile is active."""
    return profile(environ) == "gpu"


def torch_index_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The package index of the trainer image's CUDA torch, or None for the local CPU wheel."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(TORCH_INDEX_ENV)
    if explicit:
        return explicit
    return DEFAULT_CUDA_TORCH_INDEX if is_gpu(environ) else None


def pipeline_overrides(environ: Mapping[str, str] | None = None) -> dict[str, bool]:
    """Pipeline settings the profile changes in the harness's profile (harness_profile)."""
    return {"require_cuda": True} if is_gpu(environ) else {}


def scenario_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for the scenario suite in the GPU profile on the configured cluster."""
    return {
        **environ,
        PROFILE_ENV: "gpu",
        "ML_TESTBED_CLUSTER_PROVIDER": "kubeconfig",
        REQUIRE_CUDA_SETTING_ENV: "true",
    }


def run_scenarios(pytest_args: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """The scenario suite in the GPU profile. Where no GPU cluster is configured
    (``ML_TESTBED_KUBECONFIG`` unset): 0 with a one-line reason, or 1 where the GPU is required."""
    environ = dict(os.environ if environ is None else environ)
    if not environ.get(KUBECONFIG_ENV):
        reason = f"{KUBECONFIG_ENV} is unset (no GPU cluster configured)"
        if is_required("gpu_cluster", environ):
            required = why_required("gpu_cluster", environ)
            print(f"GPU scenarios cannot run: {reason}; {required} requires it")
            return 1
        print(f"GPU scenarios skipped: {reason}")
        return 0
    command = [sys.executable, "-m", "pytest", "tests/scenarios", "-p", "no:cacheprovider"]
    command += ["-rs", *pytest_args]
    print(f"GPU scenarios on the cluster of {environ[KUBECONFIG_ENV]}: {' '.join(command[2:])}")
    return subprocess.run(command, env=scenario_environment(environ)).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.gpu_profile scenarios [PYTEST ARGS]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "scenarios":
        print("usage: python -m harness.gpu_profile scenarios [PYTEST ARGS]", file=sys.stderr)
        return 2
    return run_scenarios(args[1:])


if __name__ == "__main__":
    sys.exit(main())
