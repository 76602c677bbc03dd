"""What the kind provider needs from this host, checked for real: privileged containers and kind."""

from __future__ import annotations

import subprocess

import pytest

from harness.cluster import engine, kind
from harness.cluster.engine import ensure_docker
from harness.cluster.images import BASE_IMAGE, ensure_images
from harness.host import can_install_packages
from harness.pipeline_settings import REPO_ROOT


def test_a_privileged_container_runs_here_without_cap_sys_resource():
    """kind makes every node privileged; where the host lacks CAP_SYS_RESOURCE, runc alone
    fails ("unable to apply caps"), and the harness's daemon runs the wrapper instead."""
    ensure_docker()
    ensure_images(REPO_ROOT)
    usable, why = engine.privileged_containers_work()
    assert usable, why
    done = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--privileged",
            BASE_IMAGE,
            "grep",
            "CapBnd",
            "/proc/self/status",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    bounding = int(done.stdout.split()[1], 16)
    assert bool(bounding >> engine.CAP_SYS_RESOURCE & 1) == engine.grants_sys_resource()
    assert bounding >> 21 & 1  # CAP_SYS_ADMIN: still privileged


def test_kind_is_unpacked_from_debians_package_into_an_empty_cache(tmp_path, monkeypatch):
    if not can_install_packages():
        pytest.skip("fetching Debian's kind package needs root with apt")
    monkeypatch.setenv("ML_TESTBED_CACHE", str(tmp_path / "cache"))
    which = kind.shutil.which
    # As if kind were not on PATH (apt-get and dpkg-deb still are).
    monkeypatch.setattr(kind.shutil, "which", lambda name: None if name == "kind" else which(name))
    binary = kind.ensure_kind()
    assert binary == str(kind.cached_kind())
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("kind v0.27.")
    assert kind.kind_binary() == binary
