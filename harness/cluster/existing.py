"""The ``kubeconfig`` provider: an existing cluster (a real GPU cluster for the nightly job).

It is reused, never deleted, and changed only by the pipeline's own objects (namespaces, RBAC,
the shared-data claim). GPU capacity comes from the cluster's device plugin, not from a patch.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness.cluster.config import ClusterConfig
from harness.cluster.provider import ClusterInfo, NodeLossUnsupported
from harness.steps import say


class ExistingClusterProvider:
    """A cluster someone else runs, reached through a kubeconfig."""

    name = "kubeconfig"
    shared_data_path = os.environ.get("ML_TESTBED_SHARED_DATA_PATH", "/mnt/ml-testbed-shared")

    def __init__(self, config: ClusterConfig, kubeconfig: Path) -> None:
        if not kubeconfig.is_file():
            raise ValueError(f"kubeconfig {kubeconfig} does not exist; pass an existing file")
        self.config = config
        self.kubeconfig = kubeconfig

    def info(self) -> ClusterInfo | None:
        """The cluster's nodes, split by the GPU node pool's labels."""
        api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(self.kubeconfig)))
        gpu, cpu = [], []
        for node in api.list_node().items:
            labels = node.metadata.labels or {}
            matches = all(labels.get(k) == v for k, v in self.config.gpu_labels.items())
            (gpu if matches else cpu).append(node.metadata.name)
        return ClusterInfo(
            name=self.config.name,
            provider=self.name,
            admin_kubeconfig=self.kubeconfig,
            cpu_nodes=tuple(cpu),
            gpu_nodes=tuple(gpu),
            host_address_for_pods=os.environ.get("ML_TESTBED_HOST_ADDRESS", ""),
            owned=False,
        )

    def create(self) -> ClusterInfo:
        """Checks the cluster answers; makes nothing."""
        info = self.info()
        if info is None or not info.gpu_nodes:
            labels = ", ".join(f"{k}={v}" for k, v in self.config.gpu_labels.items())
            say(f"    warning: no node carries the GPU labels {labels}; trials will stay Pending")
        return info  # type: ignore[return-value]

    def delete(self) -> None:
        """Never deletes someone else's cluster."""
        say(f"    {self.kubeconfig}: an existing cluster is never deleted; nothing to do")

    def load_images(self, images: list[str]) -> None:
        """Existing clusters pull from a registry; nothing can be loaded into them."""
        say(
            "    existing cluster: push these images to a registry its nodes pull from and set "
            f"trainer_image accordingly: {', '.join(i for i in images if 'device-plugin' not in i)}"
        )

    def serve_gpus(self, image: str) -> None:
        """Its own device plugin serves its GPUs: nothing is installed."""

    def stop_node(self, node: str) -> None:
        """Never takes a node of someone else's cluster away."""
        raise NodeLossUnsupported(
            f"node {node} belongs to an existing cluster, which the harness never disrupts; "
            "replay node_lost faults on a cluster it makes (--provider local-up or kind)"
        )

    def start_node(self, node: str) -> None:
        """Nothing was taken away."""
