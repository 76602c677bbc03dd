"""The ``kind`` provider: where Docker, kind and a registry are available (laptops, CI runners).

Three nodes: the control plane, a CPU worker, and a GPU worker labelled and tainted like a GPU node
pool. The shared-data folder is mounted into both workers at the same path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from harness.cluster.config import GPU_TAINT_VALUE, ClusterConfig
from harness.cluster.provider import ClusterInfo, wait_node_ready
from harness.paths import private_dir, remove_owned, state_dir, write_private
from harness.pipeline_settings import PIPELINE
from harness.steps import run, say

SHARED_DATA_IN_NODE = "/mnt/ml-testbed-shared"


class KindProvider:
    """A kind cluster named after the config."""

    name = "kind"
    shared_data_path = SHARED_DATA_IN_NODE

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.state = state_dir(config.name)
        self.kubeconfig = self.state / "admin.kubeconfig"

    def kind_config(self) -> dict:
        """The kind Cluster document."""
        toleration = PIPELINE.gpu_tolerations[0]
        labels = ",".join(f"{k}={v}" for k, v in self.config.gpu_labels.items())
        join = {
            "kind": "JoinConfiguration",
            "nodeRegistration": {
                "kubeletExtraArgs": {"node-labels": labels},
                "taints": [
                    {"key": toleration.key, "value": GPU_TAINT_VALUE, "effect": toleration.effect}
                ],
            },
        }
        mount = {"hostPath": str(self.state / "shared-data"), "containerPath": SHARED_DATA_IN_NODE}
        return {
            "kind": "Cluster",
            "apiVersion": "kind.x-k8s.io/v1alpha4",
            "nodes": [
                {"role": "control-plane"},
                {"role": "worker", "extraMounts": [mount]},
                {
                    "role": "worker",
                    "extraMounts": [mount],
                    "kubeadmConfigPatches": [yaml.safe_dump(join)],
                },
            ],
        }

    def _exists(self) -> bool:
        clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True)
        return self.config.name in clusters.stdout.split()

    def info(self) -> ClusterInfo | None:
        """The kind cluster if it exists."""
        if shutil.which("kind") is None or not self._exists():
            return None
        private_dir(self.state)
        write_private(
            self.kubeconfig, run(["kind", "get", "kubeconfig", "--name", self.config.name])
        )
        prefix = self.config.name
        return ClusterInfo(
            name=self.config.name,
            provider=self.name,
            admin_kubeconfig=self.kubeconfig,
            cpu_nodes=(f"{prefix}-worker",),
            gpu_nodes=(f"{prefix}-worker2",),
            host_address_for_pods=_kind_network_gateway(),
        )

    def create(self) -> ClusterInfo:
        """``kind create cluster`` unless it exists."""
        existing = self.info()
        if existing:
            say(f"    reusing kind cluster {self.config.name!r}")
            return existing
        (self.state / "shared-data").mkdir(parents=True, exist_ok=True)
        config_file = self.state / "kind-config.yaml"
        config_file.write_text(yaml.safe_dump(self.kind_config(), sort_keys=False))
        run(
            [
                "kind",
                "create",
                "cluster",
                "--name",
                self.config.name,
                "--config",
                str(config_file),
                "--kubeconfig",
                str(self.kubeconfig),
                "--wait",
                "180s",
            ]
        )
        info = self.info()
        if info is None:
            raise RuntimeError(f"kind reported success but cluster {self.config.name!r} is missing")
        return info

    def delete(self) -> None:
        """``kind delete cluster`` and the state folder."""
        if shutil.which("kind") and self._exists():
            run(["kind", "delete", "cluster", "--name", self.config.name])
        remove_owned(self.state)

    def load_images(self, images: list[str]) -> None:
        """``kind load docker-image`` into every node."""
        for image in images:
            run(["kind", "load", "docker-image", image, "--name", self.config.name])

    def stop_node(self, node: str) -> None:
        """``docker kill`` of the node's container: its kubelet and containers die at once."""
        run(["docker", "kill", node])

    def start_node(self, node: str) -> None:
        """``docker start`` of the node's container (kind nodes survive a restart), then Ready."""
        since = time.time()
        run(["docker", "start", node])
        wait_node_ready(self.kubeconfig, node, since)


def _kind_network_gateway() -> str:
    inspect = run(["docker", "network", "inspect", "kind"])
    for config in json.loads(inspect)[0]["IPAM"]["Config"]:
        if ":" not in config.get("Gateway", ":"):
            return config["Gateway"]
    raise RuntimeError("the docker network 'kind' has no IPv4 gateway")


def kind_usable() -> tuple[bool, str]:
    """Whether kind can make a cluster here, and why not."""
    if shutil.which("kind") is None:
        return False, "the kind binary is not on PATH"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return False, "no Docker engine answers"
    try:
        probe = subprocess.run(
            ["docker", "manifest", "inspect", "kindest/node:v1.32.0"],
            capture_output=True,
            timeout=20,
        )
        reachable = probe.returncode == 0
    except subprocess.TimeoutExpired:
        reachable = False
    if not reachable:
        return False, "no container registry is reachable (kind's node image cannot be pulled)"
    return True, "kind and a registry are available"


def shared_data_host_dir(config: ClusterConfig) -> Path:
    """Where the shared-data volume's files are on the host."""
    return state_dir(config.name) / "shared-data"
