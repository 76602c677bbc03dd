"""The cluster images: built locally, rebuilt only when their inputs change, and each one works.

The first run builds everything (several minutes: debootstrap, pip inside the trainer build);
later runs find the images by their content tags.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults

from harness.cluster import image_builds
from harness.cluster.engine import NoContainerEngine, docker, ensure_docker, image_id
from harness.cluster.images import ClusterImages, ensure_images, trainer_tag
from harness.pipeline_settings import REPO_ROOT
from tests.requirements import unavailable

# The KubernetesPodOperator's fallback for sidecars without pgrep (PodManager.extract_xcom_kill).
XCOM_SIDECAR_KILL = (
    "for f in /proc/[0-9]*/comm; do "
    '[ -O $f ] && read c < $f && [ "$c" = "sh" ] && pid=${f%/comm} && kill -2 ${pid##*/}; '
    "done"
)


@pytest.fixture(scope="module")
def images() -> ClusterImages:
    """Every cluster image, built where missing."""
    try:
        ensure_docker()
    except NoContainerEngine as error:
        unavailable("stack", f"no container engine can be had here: {error}")
    return ensure_images(REPO_ROOT)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not seen within {timeout} s"
        time.sleep(0.2)


def _exit_code(container: str) -> int:
    return int(docker("inspect", "-f", "{{.State.ExitCode}}", container).strip())


def test_every_image_exists(images: ClusterImages) -> None:
    for name in [*images.all(), images.python_base]:
        assert image_id(name), f"{name} is missing after ensure_images"
    assert images.sidecar in images.all() and images.trainer in images.all()


def test_a_second_call_builds_nothing_and_answers_at_once(images: ClusterImages) -> None:
    names = [*images.all(), images.python_base]
    ids_before = {name: image_id(name) for name in names}
    started = time.monotonic()
    again = ensure_images(REPO_ROOT)
    elapsed = time.monotonic() - started
    assert again.built == ()
    assert again == images
    assert {name: image_id(name) for name in names} == ids_before
    assert elapsed < 2, f"the up-to-date check took {elapsed:.1f} s"


def test_the_trainer_tag_follows_its_inputs_only(tmp_path: Path) -> None:
    for relative in image_builds.trainer_inputs(REPO_ROOT):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, tmp_path / relative)
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"wheel")
    tag = trainer_tag(tmp_path, "python-base:1", wheel)

    (tmp_path / "README.md").write_text("not an input")
    assert trainer_tag(tmp_path, "python-base:1", wheel) == tag
    assert trainer_tag(tmp_path, "python-base:2", wheel) != tag
    wheel.write_bytes(b"another wheel")
    assert trainer_tag(tmp_path, "python-base:1", wheel) != tag
    wheel.write_bytes(b"wheel")
    with (tmp_path / "trainer" / "cli.py").open("a") as source:
        source.write("\n# changed\n")
    assert trainer_tag(tmp_path, "python-base:1", wheel) != tag


def test_the_trainer_image_runs_the_trainer_cli(images: ClusterImages) -> None:
    usage = docker("run", "--rm", "--network=none", images.trainer, "--help")
    for command in ("validate", "preprocess", "train", "evaluate", "deploy"):
        assert command in usage


def test_the_trainer_image_has_the_local_cpu_torch_and_the_pipeline_libraries(
    images: ClusterImages,
) -> None:
    program = "import torch, mlflow, pandas, pyarrow, boto3; print(torch.__version__)"
    version = docker(
        "run", "--rm", "--network=none", "--entrypoint", "python", images.trainer, "-c", program
    )
    assert version.strip() == "2.13.0+cpu"


def test_the_pause_image_runs_until_sigterm_then_exits_0(images: ClusterImages) -> None:
    container = docker("run", "-d", "--network=none", images.pause).strip()
    try:
        time.sleep(1)
        assert docker("inspect", "-f", "{{.State.Running}}", container).strip() == "true"
        started = time.monotonic()
        docker("stop", "-t", "10", container)  # SIGTERM, then SIGKILL after 10 s
        assert time.monotonic() - started < 5, "pause ignored SIGTERM"
        assert _exit_code(container) == 0
    finally:
        docker("rm", "-f", container)


def test_the_sidecar_image_runs_the_xcom_sidecar_until_airflow_stops_it(
    images: ClusterImages,
) -> None:
    for tool in ("sh", "cat", "kill", "sleep"):
        docker("run", "--rm", "--network=none", images.sidecar, "sh", "-c", f"command -v {tool}")
    sidecar = PodDefaults.SIDECAR_CONTAINER
    container = docker(
        "run", "-d", "--network=none", images.sidecar, *sidecar.command, *(sidecar.args or [])
    ).strip()
    try:
        # Its loop runs (so the INT trap is set) once a sleep appears.
        _wait_for(
            lambda: "sleep" in docker("exec", container, "sh", "-c", "cat /proc/[0-9]*/comm"),
            "the sidecar's sleep loop",
        )
        # The kill loop also interrupts its own shell: its exit status says nothing.
        subprocess.run(
            ["docker", "exec", container, "sh", "-c", XCOM_SIDECAR_KILL], capture_output=True
        )
        _wait_for(
            lambda: docker("inspect", "-f", "{{.State.Running}}", container).strip() == "false",
            "the sidecar's exit",
        )
        assert _exit_code(container) == 0
    finally:
        docker("rm", "-f", container)
