"""The ``kind`` provider: Kubernetes in Docker, what users have on laptops and CI runners.

Three nodes: the control plane, a CPU worker, and a GPU worker labelled and tainted like a GPU node
pool. The shared-data folder is mounted into both workers at the same path. The GPU worker's GPUs
come from the harness's device plugin as a DaemonSet (harness.cluster.gpus): its topology folder
is mounted into the GPU worker, which the DaemonSet's pod reads through a hostPath volume.

Where a registry answers, the nodes run kind's own ``kindest/node``. Where none does (the
project's machine), they run a node image built here from Debian's packages and the project's
Kubernetes build (harness.cluster.kind_image), and kind itself comes from Debian trixie's package
when it is not on PATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness.cluster import gpus
from harness.cluster.config import GPU_TAINT_VALUE, ClusterConfig
from harness.cluster.engine import (
    docker_answers,
    image_id,
    privileged_containers_work,
)
from harness.cluster.provider import DEVICE_PLUGIN, ClusterInfo, wait_node_ready
from harness.host import can_install_packages
from harness.paths import cache_dir, private_dir, remove_owned, state_dir, write_private
from harness.pipeline_settings import PIPELINE
from harness.steps import run, say, step

SHARED_DATA_IN_NODE = "/mnt/ml-testbed-shared"
# kind as Debian packages it: trixie's 0.27 still makes clusters of Kubernetes < 1.23 (kubeadm's
# v1beta2 configuration), which the local node image (v1.20.2) needs.
KIND_SUITE = "trixie"
KIND_PACKAGE = "kind"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
CGROUP_V2_MARKER = Path("/sys/fs/cgroup/cgroup.controllers")
REGISTRY_PROBE_IMAGE = "kindest/node:v1.32.0"
REGISTRY_PROBE_TIMEOUT_S = 20
CREATE_WAIT = "180s"
KIND_NETWORK = "kind"
# In the state folder: the docker network was made by this cluster's creation.
NETWORK_MARKER = "kind-network-made-here"


def cached_kind() -> Path:
    """Where the harness keeps the kind binary it unpacked from Debian's package."""
    return cache_dir() / "kind" / "usr" / "bin" / "kind"


def kind_binary() -> str | None:
    """The kind binary: the one on PATH, else the harness's own, else None."""
    on_path = shutil.which("kind")
    if on_path:
        return on_path
    return str(cached_kind()) if cached_kind().is_file() else None


def ensure_kind() -> str:
    """The kind binary, unpacked from Debian trixie's package into the cache where none is here.

    Nothing is installed on the host: apt downloads the .deb with its own lists in the cache.
    """
    found = kind_binary()
    if found:
        return found
    if not can_install_packages():
        raise RuntimeError(
            "kind is not on PATH and this host cannot fetch Debian's kind package (that needs "
            "root with apt); install kind (https://kind.sigs.k8s.io) and run again"
        )
    home = cache_dir() / "kind"
    apt_home = cache_dir() / "apt-trixie"
    with step(f"fetch kind from Debian {KIND_SUITE}'s package (into {home})"):
        remove_owned(home)
        (apt_home / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (apt_home / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        sources = apt_home / "sources.list"
        if not DEBIAN_KEYRING.is_file():
            raise RuntimeError(
                f"{DEBIAN_KEYRING} is missing: Debian's package lists are checked against it "
                "(apt-get install debian-archive-keyring), or install kind yourself"
            )
        sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {KIND_SUITE} main\n")
        options = [
            f"-oDir::Etc::SourceList={sources}",
            "-oDir::Etc::SourceParts=-",
            f"-oDir::State::Lists={apt_home / 'lists'}",
            f"-oDir::Cache={apt_home}",
            "-oAPT::Sandbox::User=root",
        ]
        run(["apt-get", *options, "update"])
        download = apt_home / "download"
        remove_owned(download)
        download.mkdir()
        run(["apt-get", *options, "download", KIND_PACKAGE], cwd=download)
        found = list(download.glob(f"{KIND_PACKAGE}_*.deb"))
        if len(found) != 1:
            raise RuntimeError(f"apt-get download {KIND_PACKAGE} left {found} in {download}")
        (deb,) = found
        run(["dpkg-deb", "-x", str(deb), str(home)])
        remove_owned(download)
    say(f"    {run([str(cached_kind()), 'version']).strip()}")
    return str(cached_kind())


@cache
def registry_answers() -> bool:
    """Whether kind's node image can be pulled here (asked once per process)."""
    try:
        probe = subprocess.run(
            ["docker", "manifest", "inspect", REGISTRY_PROBE_IMAGE],
            capture_output=True,
            timeout=REGISTRY_PROBE_TIMEOUT_S,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):  # no docker CLI yet, or no answer
        return False
    return probe.returncode == 0


class KindProvider:
    """A kind cluster named after the config."""

    name = "kind"
    shared_data_path = SHARED_DATA_IN_NODE

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.state = state_dir(config.name)
        self.kubeconfig = self.state / "admin.kubeconfig"

    @property
    def control_plane(self) -> str:
        """The control plane node's name (and its container's)."""
        return f"{self.config.name}-control-plane"

    @property
    def cpu_nodes(self) -> tuple[str, ...]:
        """The CPU worker's name."""
        return (f"{self.config.name}-worker",)

    @property
    def gpu_nodes(self) -> tuple[str, ...]:
        """The GPU worker's name."""
        return (f"{self.config.name}-worker2",)

    def kind_config(self, local_image: bool) -> dict:
        """The kind Cluster document; ``local_image``: the node image built here, which has a
        bridge network of its own in place of kind's default CNI."""
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
        topology = {
            "hostPath": str(gpus.topology_file(self.config.name, "-").parent),
            "containerPath": gpus.TOPOLOGY_IN_NODE,
        }
        # As local-up's kubelets: a capacity a scenario sets shows in allocatable within
        # seconds (the default is 10 s).
        kubelet = {
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "nodeStatusUpdateFrequency": "4s",
        }
        document: dict = {
            "kind": "Cluster",
            "apiVersion": "kind.x-k8s.io/v1alpha4",
            "kubeadmConfigPatches": [yaml.safe_dump(kubelet)],
        }
        if local_image:
            document["networking"] = {"disableDefaultCNI": True}
        document["nodes"] = [
            {"role": "control-plane"},
            {"role": "worker", "extraMounts": [mount]},
            {
                "role": "worker",
                "extraMounts": [mount, topology],
                "kubeadmConfigPatches": [yaml.safe_dump(join)],
            },
        ]
        return document

    def _exists(self, kind: str) -> bool:
        clusters = subprocess.run([kind, "get", "clusters"], capture_output=True, text=True)
        return self.config.name in clusters.stdout.split()

    def info(self) -> ClusterInfo | None:
        """The kind cluster if it exists."""
        kind = kind_binary()
        if kind is None or not docker_answers() or not self._exists(kind):
            return None
        private_dir(self.state)
        write_private(self.kubeconfig, run([kind, "get", "kubeconfig", "--name", self.config.name]))
        return ClusterInfo(
            name=self.config.name,
            provider=self.name,
            admin_kubeconfig=self.kubeconfig,
            cpu_nodes=self.cpu_nodes,
            gpu_nodes=self.gpu_nodes,
            host_address_for_pods=_kind_network_gateway(),
            gpus=DEVICE_PLUGIN,
        )

    def node_image(self) -> str | None:
        """The node image to ask kind for: None (kind's default, pulled) where a registry
        answers, else the one built here."""
        if registry_answers():
            return None
        unusable = local_node_image_unusable()
        if unusable:
            raise RuntimeError(unusable)
        from harness.cluster.kind_image import ensure_node_image  # builds Kubernetes if needed

        return ensure_node_image()

    def create(self) -> ClusterInfo:
        """``kind create cluster`` unless it exists (cluster.up has made Docker answer)."""
        usable, why = privileged_containers_work()
        if not usable:
            raise RuntimeError(f"kind cannot make its nodes here: {why}")
        existing = self.info()
        if existing:
            self._check_topology_mounts()
            say(f"    reusing kind cluster {self.config.name!r}")
            return existing
        kind = ensure_kind()
        image = self.node_image()
        private_dir(self.state)
        (self.state / "shared-data").mkdir(parents=True, exist_ok=True)
        gpus.topology_file(self.config.name, "-").parent.mkdir(exist_ok=True)
        config_file = self.state / "kind-config.yaml"
        config_file.write_text(yaml.safe_dump(self.kind_config(image is not None), sort_keys=False))
        if not _network_exists():
            # kind makes its docker network and never removes it; this one is ours to remove.
            (self.state / NETWORK_MARKER).write_text(KIND_NETWORK)
        with step(f"kind create cluster {self.config.name!r} ({image or 'kind default image'})"):
            # Without --retain, kind removes the nodes of a creation that failed.
            run(
                [
                    kind,
                    "create",
                    "cluster",
                    "--name",
                    self.config.name,
                    "--config",
                    str(config_file),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--wait",
                    CREATE_WAIT,
                    *(["--image", image] if image else []),
                ]
            )
        info = self.info()
        if info is None:
            raise RuntimeError(f"kind reported success but cluster {self.config.name!r} is missing")
        if image is not None:
            self._without_cluster_dns()
        return info

    def _check_topology_mounts(self) -> None:
        """A GPU worker made by an older harness lacks the topology folder's mount, so the
        device plugin's pod could never start there: say what to do rather than wait."""
        destinations = "{{range .Mounts}}{{.Destination}} {{end}}"
        for node in self.gpu_nodes:
            listed = subprocess.run(
                ["docker", "inspect", "--format", destinations, node],
                capture_output=True,
                text=True,
            )
            if listed.returncode == 0 and gpus.TOPOLOGY_IN_NODE not in listed.stdout.split():
                raise RuntimeError(
                    f"kind cluster {self.config.name!r} was made by an older harness: its GPU "
                    f"worker {node} lacks the device plugin's topology mount "
                    f"({gpus.TOPOLOGY_IN_NODE}); take it down (python -m harness down) and bring "
                    "it up again"
                )

    def _without_cluster_dns(self) -> None:
        """kubeadm deploys CoreDNS, whose image the local node image does not have (no source
        reachable): no replicas, rather than pods failing to pull for ever."""
        apps = k8s.AppsV1Api(k8s_config.new_client_from_config(config_file=str(self.kubeconfig)))
        apps.patch_namespaced_deployment_scale("coredns", "kube-system", {"spec": {"replicas": 0}})

    def delete(self) -> None:
        """``kind delete cluster`` and the state folder."""
        kind = kind_binary()
        if docker_answers():
            if kind and self._exists(kind):
                run([kind, "delete", "cluster", "--name", self.config.name])
            # Without kind (its binary gone from the cache): the containers it labelled.
            nodes = node_containers(self.config.name)
            if nodes:
                run(["docker", "rm", "-f", "-v", *nodes])
            # Any container on the network keeps it, stopped ones (a lost node) too.
            made_here = (self.state / NETWORK_MARKER).exists()
            if made_here and _network_exists() and not _containers(f"network={KIND_NETWORK}"):
                run(["docker", "network", "rm", KIND_NETWORK])
        remove_owned(self.state)

    def load_images(self, images: list[str]) -> None:
        """``kind load docker-image`` into the workers (pods run nowhere else) that lack them.

        kind's own check needs crictl, which Debian does not package, so it would load every
        image every time: the harness asks each node's containerd itself.
        """
        workers = [*self.cpu_nodes, *self.gpu_nodes]
        missing: dict[str, list[str]] = {}
        for image in images:
            wanted = image_id(image)
            if wanted is None:
                raise RuntimeError(f"cannot load {image!r} into kind: the local daemon lacks it")
            for node in workers:
                if _node_image_id(node, image) != wanted:
                    missing.setdefault(image, []).append(node)
        if not missing:
            say("    every image is already in the kind workers")
            return
        nodes = sorted({node for needing in missing.values() for node in needing})
        started = time.monotonic()
        run(
            [
                ensure_kind(),
                "load",
                "docker-image",
                *missing,
                "--name",
                self.config.name,
                "--nodes",
                ",".join(nodes),
            ]
        )
        took = time.monotonic() - started
        say(f"    loaded {', '.join(missing)} into {', '.join(nodes)} in {took:.1f} s")

    def serve_gpus(self, image: str) -> None:
        """The device plugin's DaemonSet on the GPU worker (``image``, loaded into the nodes),
        serving each GPU node's topology, written with the configured count where none is."""
        for node in self.gpu_nodes:
            gpus.ensure_topology(
                self.config.name, node, self.config.gpu_resource, self.config.gpu_capacity
            )
        api_client = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        daemonset = gpus.plugin_daemonset(image, self.config.gpu_labels)
        gpus.apply_plugin_daemonset(k8s.AppsV1Api(api_client), daemonset)

    def stop_node(self, node: str) -> None:
        """``docker kill`` of the node's container: its kubelet and containers die at once."""
        run(["docker", "kill", node])

    def start_node(self, node: str) -> None:
        """``docker start`` of the node's container (kind nodes survive a restart), then Ready,
        then its GPUs: the kubelet starts the device plugin's pod again, as on a real node."""
        since = time.time()
        run(["docker", "start", node])
        wait_node_ready(self.kubeconfig, node, since)
        if node in self.gpu_nodes:
            api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(self.kubeconfig)))
            gpus.wait_devices(api, self.config.name, node, timeout=120)

    def kill_container(self, node: str, pod_uid: str, container: str) -> bool:
        """SIGKILL to ``container`` of the pod ``pod_uid`` on ``node`` (the node's containerd);
        False if it was not running there."""
        labels = (
            f'labels."io.kubernetes.pod.uid"=={pod_uid},'
            f'labels."io.kubernetes.container.name"=={container}'
        )
        ctr = ["docker", "exec", node, "ctr", "--namespace=k8s.io"]
        listed = subprocess.run([*ctr, "containers", "ls", "-q", labels], capture_output=True)
        killed = False
        for container_id in listed.stdout.decode().split():
            kill = [*ctr, "tasks", "kill", "--signal", "SIGKILL", container_id]
            killed = subprocess.run(kill, capture_output=True).returncode == 0 or killed
        return killed


def containerd_reference(image: str) -> str:
    """How containerd names a docker image reference (``ml-testbed/x:t`` is
    ``docker.io/ml-testbed/x:t``; ``debian:12`` is ``docker.io/library/debian:12``)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        reference = image
    elif rest:
        reference = f"docker.io/{image}"
    else:
        reference = f"docker.io/library/{image}"
    return reference if ":" in reference.rsplit("/", 1)[-1] else f"{reference}:latest"


def _node_image_id(node: str, image: str) -> str | None:
    """The image id (its config's digest, as docker names it) of ``image`` in the node's
    containerd, or None where it is not there."""

    def ctr(*args: str) -> str | None:
        done = subprocess.run(
            ["docker", "exec", node, "ctr", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
        )
        return done.stdout if done.returncode == 0 else None

    listing = ctr("images", "ls", f"name=={containerd_reference(image)}")
    rows = (listing or "").splitlines()[1:]
    if not rows:
        return None
    manifest = ctr("content", "get", rows[0].split()[2])
    if manifest is None:
        return None
    try:
        return json.loads(manifest)["config"]["digest"]
    except (ValueError, KeyError, TypeError):
        return None  # a manifest list or an unknown layout: load it again


def _containers(docker_filter: str) -> list[str]:
    """The names of the containers (running or not) that match a ``docker ps --filter``."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", docker_filter],
        capture_output=True,
        text=True,
    )
    return listed.stdout.split() if listed.returncode == 0 else []


def node_containers(cluster: str) -> list[str]:
    """The node containers of the kind cluster ``cluster`` (kind labels them)."""
    return _containers(f"label=io.x-k8s.kind.cluster={cluster}")


def _network_exists() -> bool:
    found = subprocess.run(["docker", "network", "inspect", KIND_NETWORK], capture_output=True)
    return found.returncode == 0


def _kind_network_gateway() -> str:
    inspect = run(["docker", "network", "inspect", KIND_NETWORK])
    for config in json.loads(inspect)[0]["IPAM"]["Config"]:
        if ":" not in config.get("Gateway", ":"):
            return config["Gateway"]
    raise RuntimeError("the docker network 'kind' has no IPv4 gateway")


def kind_usable() -> tuple[bool, str]:
    """Whether kind can make a cluster here, and why not."""
    if kind_binary() is None and not can_install_packages():
        return False, "the kind binary is not on PATH (and Debian's package cannot be fetched)"
    answers = docker_answers()
    if not answers and not can_install_packages():
        return False, "no Docker engine answers"
    if answers:
        usable, why = privileged_containers_work()
        if not usable:
            return False, why
    if registry_answers():
        return True, "kind, Docker and a registry for kindest/node"
    unusable = local_node_image_unusable()
    if unusable:
        return False, unusable
    return True, "kind and Docker; the node image is built here (no registry answers)"


def local_node_image_unusable() -> str | None:
    """Why the node image built here cannot serve this host, or None."""
    if CGROUP_V2_MARKER.exists():
        # Its entrypoint prepares the kubelet's cgroup root on cgroup v1 only, where it ran.
        return (
            "no registry answers for kind's node image, and the node image built here has run "
            "on cgroup v1 hosts only (this host has cgroup v2); use a registry, or local-up"
        )
    return None


def shared_data_host_dir(config: ClusterConfig) -> Path:
    """Where the shared-data volume's files are on the host."""
    return state_dir(config.name) / "shared-data"
