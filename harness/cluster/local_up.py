"""The ``local-up`` provider: real Kubernetes as host processes, where kind cannot run.

kind needs its node image from a registry; this provider needs none. It builds Kubernetes from
Debian's source package once (harness.cluster.kubernetes_build), then runs etcd, the control plane
and two kubelets (a CPU node and a GPU node, each on its own Docker daemon) on this host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness import processes
from harness.cluster import gpus
from harness.cluster import local_up_control_plane as control_plane
from harness.cluster import local_up_nodes as nodes
from harness.cluster.config import ClusterConfig
from harness.cluster.engine import keep_only, transfer_image
from harness.cluster.images import ensure_images, pause_image
from harness.cluster.kubernetes_build import binaries_dir, ensure_binaries
from harness.cluster.provider import (
    DEVICE_PLUGIN,
    ClusterInfo,
    NodeLossUnsupported,
    wait_node_ready,
)
from harness.host import apt_install, can_install_packages
from harness.paths import cache_dir, remove_owned, state_dir
from harness.pipeline_settings import REPO_ROOT
from harness.steps import say, step, tail
from harness.waiting import wait_until

HOST_BRIDGE = "docker0"


def local_up_usable() -> tuple[bool, str]:
    """Whether this host can run the local-up cluster, and why not."""
    if not sys.platform.startswith("linux"):
        return False, "local-up runs Kubernetes as Linux host processes"
    if os.geteuid() != 0:
        return False, "local-up must run as root (kubelets, bridges, cgroups)"
    if not (can_install_packages() or shutil.which("dockerd")):
        return False, "no Docker engine here and no apt to install one"
    return True, "root on Linux with Docker (or apt to install it)"


def host_bridge_address() -> str:
    """The address of docker0 on this host: the apiserver's and the services' address for pods."""
    output = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", HOST_BRIDGE], capture_output=True, text=True
    ).stdout.split()
    if "inet" not in output:
        raise RuntimeError(f"{HOST_BRIDGE} has no IPv4 address: is the Docker daemon running?")
    return output[output.index("inet") + 1].split("/")[0]


class LocalUpProvider:
    """Kubernetes v1.20 built from Debian's source, run as host processes on Docker."""

    name = "local-up"

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.state = state_dir(config.name)
        self.cache = cache_dir()
        # Both kubelets run on this host, so a host folder is shared by every node.
        self.shared_data_path = str(self.state / "shared-data")

    def _node_specs(self, host_ip: str) -> tuple[nodes.NodeSpec, nodes.NodeSpec]:
        cpu = nodes.NodeSpec(f"{self.config.name}-worker", host_ip, 10250, 10248, nodes.HOST_DOCKER)
        gpu = nodes.NodeSpec(
            f"{self.config.name}-gpu-worker",
            nodes.GPU_BRIDGE_ADDRESS.split("/")[0],
            10260,
            10258,
            nodes.gpu_docker_host(),
            labels=self.config.gpu_labels,
            taints=(self.config.gpu_taint,),
            cgroup_root=f"/{nodes.GPU_CGROUP_ROOT}",
            device_plugins=True,
            namespace_of=nodes.GPU_RUNTIME_PROCESS,
        )
        return cpu, gpu

    def _running_plane(self, host_ip: str) -> control_plane.ControlPlane | None:
        """The control plane when it and the GPU node's runtime run and the apiserver is ready
        (the kubelets aside)."""
        expected = [*control_plane.CONTROL_PLANE, nodes.GPU_RUNTIME_PROCESS]
        if any(processes.running_pid(self.state, name) is None for name in expected):
            return None
        plane = control_plane.prepare(self.state, host_ip, self.config.name)
        return plane if control_plane.apiserver_ready(plane) else None

    def info(self) -> ClusterInfo | None:
        """The cluster when every process of it runs and the apiserver is ready."""
        if not (self.state / "admin.kubeconfig").exists():
            return None
        host_ip = host_bridge_address()
        cpu, gpu = self._node_specs(host_ip)
        if any(processes.running_pid(self.state, node.process) is None for node in (cpu, gpu)):
            return None
        if self._running_plane(host_ip) is None:
            return None
        return ClusterInfo(
            name=self.config.name,
            provider=self.name,
            admin_kubeconfig=self.state / "admin.kubeconfig",
            cpu_nodes=(cpu.name,),
            gpu_nodes=(gpu.name,),
            host_address_for_pods=host_ip,
            gpus=DEVICE_PLUGIN,
        )

    def create(self) -> ClusterInfo:
        """Starts what is not running; a half-dead cluster from a crash is removed first."""
        running = self.info() or self._restart_lost_kubelets()
        if running:
            say(f"    reusing the running local-up cluster {self.config.name!r}")
            self._start_device_plugin()
            return running
        self._refuse_a_second_cluster()
        if self.state.exists():
            with step("remove the remains of an earlier cluster"):
                self.delete()
        with step("Kubernetes binaries"):
            bin_dir = ensure_binaries(self.cache)
        with step("etcd"):
            apt_install(["etcd-server"], why="the local-up cluster's etcd")
        with step("cluster images"):
            images = ensure_images(REPO_ROOT)
        host_ip = host_bridge_address()
        cpu, gpu = self._node_specs(host_ip)
        with step("control plane (etcd, apiserver, controller-manager, scheduler)"):
            plane = control_plane.prepare(self.state, host_ip, self.config.name)
            control_plane.start(plane, bin_dir)
        with step("GPU node's container runtime"):
            nodes.start_gpu_runtime(self.state, self.cache)
            transfer_image(images.pause, nodes.gpu_docker_host())
        with step("kubelets"):
            nodes.remove_device_checkpoint()
            for node in (cpu, gpu):
                nodes.start_kubelet(node, plane, bin_dir, images.pause)
        with step("nodes Ready"):
            self._wait_ready(plane, (cpu, gpu))
        with step("GPU device plugin"):
            self._start_device_plugin()
        info = self.info()
        if info is None:
            raise RuntimeError(f"the cluster did not stay up; logs in {self.state / 'logs'}")
        return info

    def _start_device_plugin(self) -> None:
        """The simulated GPUs of the GPU node, served to its kubelet (registration: a second)."""
        gpu = self._node_specs(host_bridge_address())[1]
        gpus.start_device_plugin(
            self.config.name, gpu.name, self.config.gpu_resource, self.config.gpu_capacity
        )

    def _restart_lost_kubelets(self) -> ClusterInfo | None:
        """Where only kubelets are gone (a node taken away by a replay that was then killed, or
        a kubelet crash), starts them again rather than rebuilding the whole cluster."""
        if not (self.state / "admin.kubeconfig").exists():
            return None
        host_ip = host_bridge_address()
        if self._running_plane(host_ip) is None:
            return None
        for node in self._node_specs(host_ip):
            if processes.running_pid(self.state, node.process) is None:
                say(f"    the kubelet of {node.name} was not running: starting it again")
                self.start_node(node.name)
        return self.info()

    def _refuse_a_second_cluster(self) -> None:
        # The control plane and kubelets use fixed host ports and one GPU bridge: one per host.
        for other in self.state.parent.glob("*"):
            if other != self.state and processes.running_pid(other, "kube-apiserver"):
                raise RuntimeError(
                    f"another local-up cluster ({other.name!r}) is running on this host and only "
                    f"one can: remove it with `python -m harness cluster down --name {other.name}`"
                )

    def _wait_ready(
        self,
        plane: control_plane.ControlPlane,
        specs: tuple[nodes.NodeSpec, ...],
        timeout: float = 90,
    ) -> None:
        config_file = str(plane.admin_kubeconfig)
        api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=config_file))
        missing = list(specs)
        started = time.monotonic()
        restarted: set[str] = set()

        def all_ready() -> bool:
            ready = {
                node.metadata.name
                for node in api.list_node().items
                if any(
                    c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
                )
            }
            missing[:] = [spec for spec in specs if spec.name not in ready]
            for spec in missing:
                if processes.running_pid(self.state, spec.process) is None:
                    raise RuntimeError(
                        f"kubelet of {spec.name} exited; see "
                        f"{processes.log_path(self.state, spec.process)}"
                    )
                if time.monotonic() - started > timeout / 2 and spec.name not in restarted:
                    # Seen once in CI: the CPU node's kubelet ran for 90 s and never
                    # registered (cause unknown, its log was gone). One restart, said aloud.
                    say(
                        f"    {spec.name} is not Ready after {timeout / 2:.0f} s: its kubelet "
                        f"starts again once (log: {processes.log_path(self.state, spec.process)})"
                    )
                    restarted.add(spec.name)
                    nodes.stop_kubelet(spec, self.state)
                    nodes.start_kubelet(spec, plane, binaries_dir(self.cache), pause_image())
            return not missing

        def not_ready() -> str:
            logs = "\n".join(
                f"end of {processes.log_path(self.state, s.process)}:\n"
                f"{tail(processes.log_path(self.state, s.process))}"
                for s in missing
            )
            names = ", ".join(s.name for s in missing)
            return f"nodes not Ready after {timeout:.0f} s: {names}\n{logs}"

        wait_until(all_ready, timeout=timeout, interval=1, timed_out=not_ready, error=RuntimeError)

    def delete(self) -> None:
        """Stops every process, removes pod containers, the GPU runtime and the state folder."""
        # Kubelets first, so that nothing restarts the pods being removed.
        for name in processes.names(self.state):
            if name.startswith(("kubelet-", "gpu-capacity", gpus.PLUGIN_PROCESS)):
                processes.stop(self.state, name)
        nodes.remove_pod_containers(nodes.HOST_DOCKER)
        nodes.remove_device_checkpoint()
        nodes.stop_gpu_runtime(self.state)
        control_plane.stop(self.state)
        for name in processes.names(self.state):
            processes.stop(self.state, name)
        nodes.unmount_below(self.state)
        remove_owned(self.state)
        remove_owned(nodes.GPU_RUNTIME_DIR)

    def stop_node(self, node: str) -> None:
        """SIGKILL to the node's kubelet, then to its pods' containers: a power loss.

        Only the GPU node can go: the CPU node's runtime is the host's Docker daemon, which
        also runs the services.
        """
        gpu = self._node_specs(host_bridge_address())[1]
        if node != gpu.name:
            raise NodeLossUnsupported(
                f"local-up can take only its GPU node ({gpu.name}) away, not {node}: the CPU "
                "node shares the host's Docker daemon with the services"
            )
        processes.kill(self.state, gpu.process)
        # The node's device plugin goes with it, as its DaemonSet pod would.
        processes.kill(self.state, gpus.PLUGIN_PROCESS)
        nodes.kill_pod_containers(gpu.docker_host)

    def kill_container(self, node: str, pod_uid: str, container: str) -> bool:
        """SIGKILL to ``container`` of the pod ``pod_uid`` on ``node``; False if it was not
        running there."""
        [spec] = [s for s in self._node_specs(host_bridge_address()) if s.name == node]
        return nodes.kill_pod_container(spec.docker_host, pod_uid, container)

    def start_node(self, node: str) -> None:
        """Starts the node's kubelet again and waits until the node is Ready."""
        since = time.time()
        host_ip = host_bridge_address()
        [spec] = [spec for spec in self._node_specs(host_ip) if spec.name == node]
        plane = control_plane.prepare(self.state, host_ip, self.config.name)
        # The cluster runs, so its binaries and pause image are there already.
        nodes.start_kubelet(spec, plane, binaries_dir(self.cache), pause_image())
        wait_node_ready(plane.admin_kubeconfig, node, since)
        if spec.device_plugins:
            # On a real node the plugin is a DaemonSet pod, which the kubelet starts again only
            # once it is back: pods already bound to the node are admitted before the plugin
            # has registered (UnexpectedAdmissionError while the node still advertises its old
            # count), and this order keeps that reachable.
            self._start_device_plugin()
            config_file = str(plane.admin_kubeconfig)
            api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=config_file))
            gpus.wait_devices(api, self.config.name, node)

    def serve_gpus(self, image: str) -> None:
        """Nothing: the device plugin is a host process of the cluster, started with its GPU
        node (``create``, ``start_node``)."""

    def load_images(self, images: list[str]) -> None:
        """Built in the host's daemon (the CPU node's); copied into the GPU node's daemon, which
        then keeps these alone (its kubelet's image GC is off, see local_up_nodes)."""
        for image in images:
            transfer_image(image, nodes.gpu_docker_host())
        removed = keep_only(images, nodes.gpu_docker_host())
        if removed:
            say(f"    removed {removed} older image(s) from the GPU node")
