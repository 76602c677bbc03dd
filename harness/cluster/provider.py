"""The one interface every cluster provider offers, and what a running cluster looks like."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


class Provider(Protocol):
    """Makes (or reuses), describes and deletes one cluster."""

    name: str

    def create(self) -> ClusterInfo:
        """Brings the cluster up, or reuses it when it already runs; idempotent."""
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
