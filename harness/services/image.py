"""The services image: moto's server and MLflow, at the versions this environment tests with."""

from __future__ import annotations

from importlib.metadata import version

from harness.cluster import image_builds
from harness.cluster.engine import docker
from harness.cluster.images import content_tag, ensure_images, local_images
from harness.pipeline_settings import REPO_ROOT
from harness.steps import step

REPOSITORY = "ml-testbed/services"
LATEST = f"{REPOSITORY}:latest"


def _dockerfile(python_base: str) -> str:
    moto, mlflow = version("moto"), version("mlflow")
    return (
        f"FROM {python_base}\n"
        "RUN python3 -m venv /opt/services \\\n"
        " && /opt/services/bin/pip install --no-cache-dir \\\n"
        f"    'moto[server]=={moto}' 'mlflow=={mlflow}'\n"
        "ENV PATH=/opt/services/bin:$PATH PYTHONUNBUFFERED=1\n"
        "WORKDIR /data\n"
    )


def ensure_services_image() -> str:
    """The services image's name, built only when its recipe changed."""
    python_base = ensure_images(REPO_ROOT).python_base
    dockerfile = _dockerfile(python_base)
    name = f"{REPOSITORY}:{content_tag([dockerfile.encode()])}"
    if name not in local_images():
        with step(f"build the services image {name}"):
            image_builds.build_with_context(name, dockerfile, {})
    # docker-compose.test.yml names the image by this stable tag.
    docker("tag", name, LATEST)
    return name


if __name__ == "__main__":
    print(ensure_services_image())
