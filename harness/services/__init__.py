"""The stack's services: a moto S3 server and a throwaway MLflow, as labelled containers.

Each publishes one free port on the host address pods reach (never on every interface), so the
host, Airflow and pods on every node use the same URLs. MLflow stores its artifacts in moto
(reached over the stack's own network), so MLflow clients need no S3 credentials.

``up(stack_name, host_address)`` starts them or reuses them, ``down(stack_name)`` removes every
container and network labelled with the stack (also after a ``kill -9`` of whoever started
them), ``status(stack_name)`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from docker.models.containers import Container

from harness.cluster.engine import docker_answers, ensure_docker
from harness.services import config, containers
from harness.steps import say

# component -> its health check and how long it may take to pass. MLflow needs about 11 s on
# two cores with one worker; more on a busy machine.
HEALTH: dict[str, tuple[Callable[[str], bool], float]] = {
    "moto": (containers.moto_healthy, 60),
    "mlflow": (containers.mlflow_healthy, 180),
}

COMMANDS: dict[str, Callable[[], list[str]]] = {
    "moto": config.moto_command,
    "mlflow": config.mlflow_command,
}


@dataclass(frozen=True)
class Services:
    """Where the running services are: the same URLs from the host and from pods."""

    s3_endpoint: str
    mlflow_uri: str
    host_address: str
    stack_name: str
    moto_container_id: str
    mlflow_container_id: str

    def pod_credentials(self) -> dict[str, str]:
        """What the pods' credentials Secret holds."""
        return config.aws_environment()


@dataclass(frozen=True)
class ServiceContainer:
    """One container of a stack, as ``status`` reports it."""

    component: str
    name: str
    container_id: str
    # Docker's word: running, exited, created, ...
    state: str
    url: str | None


def up(stack_name: str, host_address: str) -> Services:
    """moto and MLflow for ``stack_name``, published on ``host_address``.

    Reuses the stack's containers when both run healthy on that address; otherwise removes
    whatever is left of them and starts both afresh (moto first: MLflow stores into it).
    """
    ensure_docker()
    reusable = _reusable(stack_name, host_address)
    if isinstance(reusable, Services):
        say(f"    reusing the services of stack {stack_name!r}")
        return reusable
    if reusable:
        say(f"    not reusing the services of stack {stack_name!r}: {reusable}")
    containers.remove(stack_name)
    # Imported here: `python -m harness.services.image` would otherwise find it already loaded.
    from harness.services.image import ensure_services_image

    image = ensure_services_image()
    moto, s3_endpoint = _start(stack_name, "moto", image, host_address, config.aws_environment())
    containers.create_buckets(s3_endpoint)
    # MLflow reaches moto by its container name on the stack's network.
    s3_inside = f"http://{containers.container_name(stack_name, 'moto')}:{config.MOTO_PORT}"
    mlflow_env = config.mlflow_environment(s3_inside)
    mlflow, mlflow_uri = _start(stack_name, "mlflow", image, host_address, mlflow_env)
    return Services(s3_endpoint, mlflow_uri, host_address, stack_name, moto.id, mlflow.id)


def _start(
    stack_name: str, component: str, image: str, host_address: str, env: dict[str, str]
) -> tuple[Container, str]:
    """Starts one component and waits until it answers; returns it and its URL."""
    port = config.PORTS[component]
    command = COMMANDS[component]()
    container = containers.start(stack_name, component, image, command, port, host_address, env)
    url = _published_url(container, port)
    healthy, timeout = HEALTH[component]
    containers.wait_healthy(container, lambda: healthy(url), timeout)
    return container, url


def _published_url(container: Container, port: int) -> str:
    found = containers.url(container, port)
    if found is None:
        raise RuntimeError(f"container {container.name} started without publishing port {port}")
    return found


def _reusable(stack_name: str, host_address: str) -> Services | str:
    """The running services, or why they cannot be reused ("" when there are none)."""
    found = {c.labels[config.LABEL_COMPONENT]: c for c in containers.find(stack_name)}
    if not found:
        return ""
    urls = {}
    for component, port in config.PORTS.items():
        container = found.get(component)
        if container is None:
            return f"{component} is missing"
        published = containers.url(container, port)
        if published is None:
            return f"{component} is {container.status}"
        if not published.startswith(f"http://{host_address}:"):
            return f"{component} is published on {published}, not on {host_address}"
        urls[component] = published
    for component, published in urls.items():
        healthy, _ = HEALTH[component]
        if not healthy(published):
            return f"{component} does not answer at {published}"
    return Services(
        urls["moto"], urls["mlflow"], host_address, stack_name, found["moto"].id, found["mlflow"].id
    )


def down(stack_name: str) -> None:
    """Removes every container and network of ``stack_name``, whoever started them."""
    if not docker_answers():
        say(
            f"    no Docker daemon answers, so no service container of stack {stack_name!r} "
            "runs; start Docker and run `down` again to remove stopped ones"
        )
        return
    removed = containers.remove(stack_name)
    say(f"    removed {', '.join(removed) or 'nothing'} (services of stack {stack_name!r})")


def status(stack_name: str) -> list[ServiceContainer]:
    """The containers of ``stack_name``, running or not (empty without a Docker daemon)."""
    if not docker_answers():
        return []
    return [
        ServiceContainer(
            component=c.labels[config.LABEL_COMPONENT],
            name=c.name,
            container_id=c.id,
            state=c.status,
            url=containers.url(c, config.PORTS.get(c.labels[config.LABEL_COMPONENT], 0)),
        )
        for c in containers.find(stack_name)
    ]
