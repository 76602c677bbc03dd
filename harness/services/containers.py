"""moto and MLflow as labelled containers of a stack, started with testcontainers.

testcontainers' reaper (ryuk) cannot be pulled where no registry answers, and it would remove
the containers when the starting process exits, so it is off and the harness owns cleanup:
every container and network carries the stack's labels and ``remove`` finds them by label, also
after the process that started them was killed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import boto3
import docker
import requests
from docker.errors import DockerException
from docker.models.containers import Container
from docker.models.networks import Network
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

from harness.services import config
from harness.waiting import wait_until

HEALTH_POLL_S = 0.5
LOG_TAIL_LINES = 30


@functools.cache
def _engine() -> docker.DockerClient:
    return docker.from_env()


def labels(stack: str, component: str) -> dict[str, str]:
    """The labels that make a container or network ours."""
    return {config.LABEL_STACK: stack, config.LABEL_COMPONENT: component}


def _label_filter(stack: str, component: str | None) -> dict[str, list[str]]:
    wanted = [f"{config.LABEL_STACK}={stack}"]
    if component:
        wanted.append(f"{config.LABEL_COMPONENT}={component}")
    return {"label": wanted}


def find(stack: str, component: str | None = None) -> list[Container]:
    """The containers of ``stack`` (optionally one component), running or not."""
    return _engine().containers.list(all=True, filters=_label_filter(stack, component))


def container_name(stack: str, component: str) -> str:
    """A component's container name, also its host name on the stack's network."""
    return f"{stack}-{component}"


def ensure_network(stack: str) -> str:
    """The stack's own network (made when missing); returns its name.

    MLflow reaches moto there by container name, whichever host address the ports are on.
    """
    name = f"{stack}-services"
    if not _engine().networks.list(filters=_label_filter(stack, "network")):
        _engine().networks.create(name, driver="bridge", labels=labels(stack, "network"))
    return name


def _networks(stack: str) -> list[Network]:
    return _engine().networks.list(filters=_label_filter(stack, None))


def start(
    stack: str,
    component: str,
    image: str,
    command: list[str],
    port: int,
    host_address: str,
    env: dict[str, str],
) -> Container:
    """Starts ``component`` with ``port`` published on a free port of ``host_address`` only."""
    # Set here, not left to the caller's environment: see the module's docstring.
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    testcontainers_config.ryuk_disabled = True
    container = (
        DockerContainer(image)
        .with_command(command)
        .with_envs(**env)
        .with_name(container_name(stack, component))
        .with_kwargs(labels=labels(stack, component), network=ensure_network(stack))
    )
    # (address, None) is docker-py's "a free port on that address"; with_bind_ports takes no
    # address, so the mapping is set directly. testcontainers' get_container_host_ip is not used
    # either: this host has /.dockerenv, so it would guess the bridge gateway, not our address.
    container.ports[f"{port}/tcp"] = (host_address, None)  # type: ignore[assignment]
    try:
        container.start()
    except DockerException as error:
        raise RuntimeError(
            f"cannot start the {component} container {container_name(stack, component)!r} of "
            f"stack {stack!r} from {image} on {host_address}: {error}. Is {host_address} an "
            "address of this host? `down` removes what was left."
        ) from error
    started = _engine().containers.get(container.get_container_id())
    # testcontainers opened a client of its own for this container; it is not needed any more.
    container.get_docker_client().client.close()
    return started


def url(container: Container, port: int) -> str | None:
    """``http://address:port`` where ``port`` of a running container is published, else None."""
    bindings = (container.ports or {}).get(f"{port}/tcp") or []
    if not bindings:
        return None
    return f"http://{bindings[0]['HostIp']}:{bindings[0]['HostPort']}"


def wait_healthy(container: Container, check: Callable[[], bool], timeout: float) -> None:
    """Waits for ``check``; fails early when the container exits, showing its log's end."""

    def failed(problem: str) -> str:
        logs = container.logs(tail=LOG_TAIL_LINES).decode(errors="replace")
        return (
            f"container {container.name} {problem}; it is left for inspection "
            f"(`docker logs {container.name}`) until `down`. Its log ends:\n{logs}"
        )

    def healthy() -> bool:
        if check():
            return True
        container.reload()
        if container.status != "running":
            exit_code = container.attrs["State"]["ExitCode"]
            raise RuntimeError(failed(f"exited with code {exit_code}"))
        return False

    wait_until(
        healthy,
        timeout=timeout,
        interval=HEALTH_POLL_S,
        timed_out=lambda: failed(f"is not healthy after {timeout:.0f} s"),
        error=RuntimeError,
    )


def answers_ok(health_url: str) -> bool:
    """Whether ``health_url`` answers HTTP 200 now."""
    try:
        return requests.get(health_url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def moto_healthy(endpoint: str) -> bool:
    """moto's own API answers."""
    return answers_ok(f"{endpoint}/moto-api/")


def mlflow_healthy(uri: str) -> bool:
    """MLflow's /health answers."""
    return answers_ok(f"{uri}/health")


def create_buckets(endpoint: str) -> None:
    """The pipeline's and MLflow's buckets on moto (existing ones are kept)."""
    s3 = boto3.client("s3", endpoint_url=endpoint, **config.boto3_credentials())
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in config.BUCKETS:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


def remove(stack: str) -> list[str]:
    """Removes every container and network of ``stack``; returns their names."""
    removed = []
    for container in find(stack):
        container.remove(force=True, v=True)
        removed.append(container.name)
    for network in _networks(stack):
        network.remove()
        removed.append(network.name)
    return removed
