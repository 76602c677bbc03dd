"""moto and MLflow as containers of a stack, started with testcontainers.

testcontainers' reaper (ryuk) cannot be pulled where no registry answers, so it is off and the
harness owns cleanup: every container carries the stack's labels and ``remove`` finds them by
label, also after the process that started them was killed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import boto3
import docker
import requests
from testcontainers.core.container import DockerContainer

from harness.services import config

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def labels(stack: str, component: str) -> dict[str, str]:
    """The labels that make a container ours."""
    return {config.LABEL_STACK: stack, config.LABEL_COMPONENT: component}


def find(stack: str, component: str | None = None) -> list:
    """Our running or stopped containers of ``stack`` (optionally one component)."""
    wanted = [f"{config.LABEL_STACK}={stack}"]
    if component:
        wanted.append(f"{config.LABEL_COMPONENT}={component}")
    return docker.from_env().containers.list(all=True, filters={"label": wanted})


def published_port(container, port: int) -> int:
    """The host port ``port`` of a running container is published on."""
    container.reload()
    return int(container.ports[f"{port}/tcp"][0]["HostPort"])


def start(
    stack: str,
    component: str,
    image: str,
    command: list[str],
    port: int,
    host_address: str,
    env: dict[str, str] | None = None,
) -> int:
    """Starts ``component`` published on a free port of ``host_address``; returns that port."""
    container = (
        DockerContainer(image)
        .with_command(command)
        .with_envs(**(env or {}))
        .with_name(f"{stack}-{component}")
        .with_kwargs(labels=labels(stack, component))
    )
    # A free port on the pods' address only, as docker-py's (address, None); with_bind_ports
    # accepts no address, so the mapping it would hold is set directly.
    container.ports[port] = (host_address, None)
    container.start()
    return published_port(container.get_wrapped_container(), port)


def wait_healthy(check: Callable[[], bool], what: str, stack: str, timeout: float = 90) -> None:
    """Waits for ``check``; on failure shows the container's log tail."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            (container,) = find(stack, what) or [None]
            logs = container.logs(tail=30).decode(errors="replace") if container else "(gone)"
            raise RuntimeError(f"{what} not healthy after {timeout:.0f} s; its log ends:\n{logs}")
        time.sleep(0.5)


def moto_healthy(endpoint: str) -> bool:
    """moto answers ListBuckets."""
    try:
        return requests.get(f"{endpoint}/moto-api/", timeout=2).ok
    except requests.RequestException:
        return False


def mlflow_healthy(uri: str) -> bool:
    """MLflow's /health answers OK."""
    try:
        return requests.get(f"{uri}/health", timeout=2).ok
    except requests.RequestException:
        return False


def create_buckets(endpoint: str) -> None:
    """The pipeline's buckets on moto (existing ones are kept)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=config.REGION,
        aws_access_key_id=config.ACCESS_KEY_ID,
        aws_secret_access_key=config.SECRET_ACCESS_KEY,
    )
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in config.BUCKETS:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


def remove(stack: str) -> int:
    """Removes every container of ``stack``; returns how many there were."""
    containers = find(stack)
    for container in containers:
        container.remove(force=True, v=True)
    return len(containers)
