"""The stack's services: a moto S3 server and a throwaway MLflow, as labelled containers.

Both publish one port each on the host address pods reach (never on every interface), so the
host, Airflow and pods on every node use the same URLs.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.services import config, containers
from harness.services.image import ensure_services_image
from harness.steps import say


@dataclass(frozen=True)
class Services:
    """Where the running services are."""

    s3_endpoint: str
    mlflow_uri: str
    host_address: str

    def pod_credentials(self) -> dict[str, str]:
        """What the pods' credentials Secret holds."""
        return config.aws_environment()


def _running(stack: str, host_address: str) -> Services | None:
    found = {c.labels[config.LABEL_COMPONENT]: c for c in containers.find(stack)}
    if set(found) != {"moto", "mlflow"} or any(c.status != "running" for c in found.values()):
        return None
    moto_port = containers.published_port(found["moto"], config.MOTO_PORT)
    mlflow_port = containers.published_port(found["mlflow"], config.MLFLOW_PORT)
    services = Services(
        f"http://{host_address}:{moto_port}", f"http://{host_address}:{mlflow_port}", host_address
    )
    healthy = containers.moto_healthy(services.s3_endpoint) and containers.mlflow_healthy(
        services.mlflow_uri
    )
    return services if healthy else None


def up(stack: str, host_address: str) -> Services:
    """moto and MLflow for ``stack``, reused when both already run healthy."""
    running = _running(stack, host_address)
    if running:
        say(f"    reusing the services of stack {stack!r}")
        return running
    containers.remove(stack)
    image = ensure_services_image()
    moto_port = containers.start(
        stack,
        "moto",
        image,
        config.moto_command(),
        config.MOTO_PORT,
        host_address,
        config.aws_environment(),
    )
    s3_endpoint = f"http://{host_address}:{moto_port}"
    containers.wait_healthy(lambda: containers.moto_healthy(s3_endpoint), "moto", stack)
    containers.create_buckets(s3_endpoint)
    mlflow_port = containers.start(
        stack,
        "mlflow",
        image,
        config.mlflow_command(),
        config.MLFLOW_PORT,
        host_address,
        config.mlflow_environment(s3_endpoint),
    )
    mlflow_uri = f"http://{host_address}:{mlflow_port}"
    containers.wait_healthy(lambda: containers.mlflow_healthy(mlflow_uri), "mlflow", stack)
    return Services(s3_endpoint, mlflow_uri, host_address)


def down(stack: str) -> None:
    """Removes every container of ``stack``, whoever started it."""
    removed = containers.remove(stack)
    say(f"    removed {removed} service container(s) of stack {stack!r}")


def status(stack: str) -> dict[str, str]:
    """component -> container status, for the stack's containers."""
    return {c.labels[config.LABEL_COMPONENT]: c.status for c in containers.find(stack)}
