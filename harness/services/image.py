"""The services image: moto's server and MLflow, at the versions of the dependency lock.

Built locally FROM the cluster's python base (no registry needed) and tagged by the hash of its
recipe, so it is rebuilt only when the python base or a pinned version changes:
``python -m harness.services.image`` builds it and prints its name.
"""

from __future__ import annotations

from harness.cluster import image_builds
from harness.cluster.engine import docker
from harness.cluster.images import (
    content_tag,
    ensure_images,
    local_images,
    one_build_at_a_time,
)
from harness.lock import LOCK_FILE, read_lock
from harness.pipeline_settings import REPO_ROOT
from harness.services import config
from harness.steps import say, step

REPOSITORY = "ml-testbed/services"
# The stable name docker-compose.test.yml uses; it always points at the newest build.
LATEST = f"{REPOSITORY}:latest"
SERVED_PACKAGES = ("moto", "mlflow")
VENV = "/opt/services"
# The python base puts the host's CA certificates into this store; pip's own bundle lacks them.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pinned_requirements() -> list[str]:
    """``moto[server]`` and ``mlflow`` at the versions of the lock (constraints/lock.txt), the
    same the tests' own environment installs."""
    pins = read_lock()
    missing = [package for package in SERVED_PACKAGES if package not in pins]
    if missing:
        raise RuntimeError(
            f"{LOCK_FILE} pins no {', '.join(missing)}; regenerate it: python -m harness.lock"
        )
    return [
        f"{package}{'[server]' if package == 'moto' else ''}=={pins[package]}"
        for package in SERVED_PACKAGES
    ]


def dockerfile(python_base: str) -> str:
    """The image's recipe; its only other build input is the lock (constraints/lock.txt)."""
    requirements = " ".join(f"'{pin}'" for pin in pinned_requirements())
    return (
        f"FROM {python_base}\n"
        f"ENV PIP_CERT={SYSTEM_CA_BUNDLE} PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1\n"
        f"COPY {LOCK_FILE.name} /tmp/{LOCK_FILE.name}\n"
        f"RUN python3 -m venv {VENV} && {VENV}/bin/pip install "
        f"--constraint /tmp/{LOCK_FILE.name} {requirements}\n"
        f"ENV PATH={VENV}/bin:$PATH PYTHONUNBUFFERED=1\n"
        f"WORKDIR {config.MLFLOW_DATA_DIR}\n"
    )


def ensure_services_image() -> str:
    """The services image's name (``ml-testbed/services:<hash>``), built only when missing."""
    python_base = ensure_images(REPO_ROOT).python_base
    recipe = dockerfile(python_base)
    lock = LOCK_FILE.read_bytes()
    name = f"{REPOSITORY}:{content_tag([recipe.encode(), lock])}"
    # Under the images' build lock: two bring-ups at once would build it twice.
    with one_build_at_a_time():
        present = local_images()
        if name in present:
            say(f"    services image up to date ({name})")
        else:
            with step(f"build the services image {name}"):
                image_builds.build_with_context(name, recipe, {LOCK_FILE.name: lock})
            present = local_images()
        if present.get(LATEST) != present[name]:
            docker("tag", name, LATEST)
    return name


if __name__ == "__main__":
    print(ensure_services_image())
