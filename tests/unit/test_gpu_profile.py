"""The GPU profile: its switch, the CUDA torch of the trainer image (tag and build argument,
without building), and the scenario command that skips where no GPU cluster is configured."""

from pathlib import Path

import pytest

from harness import gpu_profile
from harness.cluster import image_builds, images
from harness.pipeline_settings import REPO_ROOT

PYTORCH_CU128 = "https://download.pytorch.org/whl/cu128"


@pytest.fixture
def no_profile(monkeypatch):
    for name in (gpu_profile.PROFILE_ENV, gpu_profile.TORCH_INDEX_ENV):
        monkeypatch.delenv(name, raising=False)


def test_default_profile_keeps_the_local_cpu_wheel(no_profile, tmp_path, monkeypatch):
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"wheel")
    monkeypatch.setenv(images.TORCH_WHEEL_ENV, str(wheel))
    assert images.trainer_torch() == (wheel, None)
    assert gpu_profile.pipeline_overrides() == {}


def test_gpu_profile_takes_a_cuda_torch_and_requires_cuda(no_profile, monkeypatch):
    monkeypatch.setenv(gpu_profile.PROFILE_ENV, "gpu")
    assert images.trainer_torch() == (None, gpu_profile.DEFAULT_CUDA_TORCH_INDEX)
    assert gpu_profile.pipeline_overrides() == {"require_cuda": True}
    monkeypatch.setenv(gpu_profile.TORCH_INDEX_ENV, PYTORCH_CU128)
    assert images.trainer_torch() == (None, PYTORCH_CU128)


def test_unknown_profile_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"ML_TESTBED_PROFILE='tpu' .* \('default', 'gpu'\)"):
        gpu_profile.profile({gpu_profile.PROFILE_ENV: "tpu"})


def test_cuda_torch_changes_the_trainer_tag_and_the_cpu_tag_stays(tmp_path):
    wheel = tmp_path / "torch.whl"
    wheel.write_bytes(b"wheel")
    cpu = images.trainer_tag(REPO_ROOT, "ml-testbed/python-base:x", wheel)
    assert images.trainer_tag(REPO_ROOT, "ml-testbed/python-base:x", wheel, None) == cpu
    cuda = images.trainer_tag(REPO_ROOT, "ml-testbed/python-base:x", None, PYTORCH_CU128)
    other = images.trainer_tag(
        REPO_ROOT, "ml-testbed/python-base:x", None, "https://pypi.org/simple"
    )
    assert len({cpu, cuda, other}) == 3


@pytest.mark.parametrize(("index_url", "expected"), [(None, []), (PYTORCH_CU128, [PYTORCH_CU128])])
def test_trainer_build_passes_the_index_as_a_build_argument(
    index_url, expected, tmp_path, monkeypatch
):
    monkeypatch.setenv("ML_TESTBED_CACHE", str(tmp_path / "cache"))
    commands = []
    monkeypatch.setattr(image_builds, "run", lambda command, **_: commands.append(command))
    image_builds.build_trainer("ml-testbed/trainer:t", REPO_ROOT, "base:x", None, index_url)
    (command,) = commands
    build_args = [command[i + 1] for i, part in enumerate(command) if part == "--build-arg"]
    indexes = [arg.split("=", 1)[1] for arg in build_args if arg.startswith("TORCH_INDEX_URL=")]
    assert indexes == expected


def test_dockerfile_installs_torch_from_the_index_argument():
    dockerfile = (REPO_ROOT / "trainer" / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=\n" in dockerfile
    assert (
        '${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} "${TORCH_SPEC}"' in dockerfile
    )


def test_gpu_scenarios_skip_in_one_line_without_a_cluster(capsys):
    assert gpu_profile.run_scenarios([], environ={"PATH": "/usr/bin"}) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert (
        line == "GPU scenarios skipped: ML_TESTBED_KUBECONFIG is unset (no GPU cluster configured)"
    )


def test_gpu_scenarios_environment_names_the_profile_provider_and_require_cuda():
    environ = gpu_profile.scenario_environment({"ML_TESTBED_KUBECONFIG": str(Path("/k"))})
    assert environ["ML_TESTBED_PROFILE"] == "gpu"
    assert environ["ML_TESTBED_CLUSTER_PROVIDER"] == "kubeconfig"
    assert environ["ML_PIPELINE_REQUIRE_CUDA"] == "true"
    from ml_pipeline.settings import load_settings

    assert load_settings(variable={"require_cuda": False}, environ=environ).require_cuda is True


def test_gpu_scenarios_fail_without_a_cluster_where_a_gpu_cluster_is_required(capsys):
    environ = {"PATH": "/usr/bin", "ML_TESTBED_REQUIRE": "gpu_cluster"}
    assert gpu_profile.run_scenarios([], environ=environ) == 1
    assert "GPU scenarios cannot run: ML_TESTBED_KUBECONFIG is unset" in capsys.readouterr().out


def test_a_ci_gpu_runner_without_a_cluster_still_skips_the_gpu_scenarios(capsys):
    assert gpu_profile.run_scenarios([], environ={"PATH": "/usr/bin", "CI": "true"}) == 0
