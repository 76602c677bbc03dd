"""The one interface every cluster provider offers, and what a running cluster looks like."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness.waiting import wait_until

# Where a cluster's GPUs come from: the harness's simulated device plugin (a cluster it made,
# harness.cluster.gpus), or the cluster's own (an existing cluster's, never read or changed).
DEVICE_PLUGIN = "device plugin"
ITS_OWN_PLUGIN = "its own device plugin"


@dataclass(frozen=True)
class ClusterInfo:
    """A running cluster as the rest of the harness sees it."""

    name: str
    provider: str
    admin_kubeconfig: Path
    cpu_nodes: tuple[str, ...]
    gpu_nodes: tuple[str, ...]
    # An address of this host that pods on every node reach (where services must listen).
    host_address_for_pods: str
    # True where the harness made the cluster and may delete it.
    owned: bool = True
    # DEVICE_PLUGIN or ITS_OWN_PLUGIN.
    gpus: str = ITS_OWN_PLUGIN


class NodeLossUnsupported(RuntimeError):
    """The provider cannot take one of its nodes away (a cluster the harness does not own)."""


class Provider(Protocol):
    """Makes (or reuses), describes and deletes one cluster."""

    name: str

    def create(self) -> ClusterInfo:
        """Brings the cluster up, or reuses it when it already runs; idempotent. Docker answers
        already (``cluster.up`` sees to it before calling this)."""
        ...

    def delete(self) -> None:
        """Removes everything ``create`` made (processes, containers, files outside the cache)."""
        ...

    def info(self) -> ClusterInfo | None:
        """The running cluster, or None when it is not up."""
        ...

    def load_images(self, images: list[str]) -> None:
        """Makes locally built images available to every node."""
        ...

    def serve_gpus(self, image: str) -> None:
        """Starts what serves the GPU nodes' devices where it runs as pods (the device plugin's
        ``image``, loaded into the nodes); nothing where it runs otherwise or is not ours."""
        ...

    def stop_node(self, node: str) -> None:
        """Takes ``node`` away as a power loss does: its kubelet and its pods' containers die."""
        ...

    def start_node(self, node: str) -> None:
        """Brings a node ``stop_node`` took away back and waits until it is Ready."""
        ...


def wait_node_ready(kubeconfig: Path, node: str, since: float, timeout: float = 120) -> None:
    """Waits until ``node`` reports Ready in a heartbeat sent after ``since`` (epoch seconds).

    A node that was just taken away may still show its last, stale Ready condition.
    """
    api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
    after = datetime.fromtimestamp(int(since), UTC)  # heartbeats have whole seconds

    def ready() -> bool:
        conditions = api.read_node(node).status.conditions or []
        return any(
            c.type == "Ready" and c.status == "True" and c.last_heartbeat_time >= after
            for c in conditions
        )

    wait_until(
        ready,
        timeout=timeout,
        interval=1,
        timed_out=f"node {node} did not report Ready within {timeout:.0f} s of its restart",
        error=RuntimeError,
    )
