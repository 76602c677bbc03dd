"""The nodes of a local-up cluster: one kubelet per node, each with its own Docker daemon.

The CPU node's kubelet uses the host's Docker daemon. The GPU node gets a second daemon with its
own data root, socket and bridge, as kind gives each node its own runtime: each kubelet then sees
only its own pods' containers, and the scheduler really places pods on two distinct nodes.

The pods' log folders are fixed for every kubelet on a host (``/var/log/pods``, with links in
``/var/log/containers``), and each kubelet's garbage collection removes those of pods it does not
know: the CPU kubelet removed the GPU pods' logs within seconds of their start (seen here: a
finished GPU pod's log read "failed to try resolving symlinks"). So the GPU node's daemon runs in
a mount namespace of its own (a slave of the host's: the host's mounts reach it, its own stay in
it) where its own folders under the state are bound over those two, and its kubelet joins that
namespace: its volume mounts are then where its daemon looks for them, as on a real node.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness import processes
from harness.cluster import pki
from harness.cluster.device_plugin.checkpoint import CHECKPOINT as DEVICE_CHECKPOINT
from harness.cluster.kubeconfig import write_kubeconfig
from harness.cluster.local_up_control_plane import ControlPlane
from harness.paths import RUNTIME_DIR
from harness.steps import run, say

HOST_DOCKER = "unix:///var/run/docker.sock"
# Unix socket paths are limited to 108 bytes: the GPU node's runtime lives under /run.
GPU_RUNTIME_DIR = RUNTIME_DIR
GPU_BRIDGE = "mltb-gpu0"
GPU_BRIDGE_ADDRESS = "172.30.0.1/16"
GPU_CGROUP_ROOT = "gpu-worker"
GPU_RUNTIME_PROCESS = "dockerd-gpu"
# Bound over the host's in the GPU node's mount namespace (see the module's docstring).
POD_LOG_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"))


@dataclass(frozen=True)
class NodeSpec:
    """One kubelet and the runtime behind it."""

    name: str
    ip: str
    port: int
    healthz_port: int
    docker_host: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[str, ...] = ()
    cgroup_root: str = "/"
    # The device-plugin socket directory is fixed for every kubelet on a host (and each empties it
    # at start), so only one of them, the GPU node's, may serve device plugins.
    device_plugins: bool = False
    # The process whose mount namespace the kubelet joins (its runtime's), if not the host's.
    namespace_of: str | None = None

    @property
    def process(self) -> str:
        """The name of its kubelet process in the pid files."""
        return f"kubelet-{self.name}"


def gpu_docker_host() -> str:
    """The socket of the GPU node's Docker daemon."""
    return f"unix://{GPU_RUNTIME_DIR / 'docker.sock'}"


def start_gpu_runtime(state: Path, cache: Path, timeout: float = 30) -> None:
    """The GPU node's own bridge, cgroup root and Docker daemon (idempotent)."""
    if subprocess.run(["ip", "link", "show", GPU_BRIDGE], capture_output=True).returncode != 0:
        run(["ip", "link", "add", GPU_BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", GPU_BRIDGE_ADDRESS, "dev", GPU_BRIDGE])
    run(["ip", "link", "set", GPU_BRIDGE, "up"])
    for hierarchy in cgroup_v1_hierarchies():
        (hierarchy / GPU_CGROUP_ROOT).mkdir(exist_ok=True)
    if processes.running_pid(state, GPU_RUNTIME_PROCESS) is None:
        GPU_RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
        binds = []
        for host_dir in POD_LOG_DIRS:
            own = gpu_log_dir(state) / host_dir.name
            own.mkdir(parents=True, exist_ok=True)
            host_dir.mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {shlex.quote(str(own))} {shlex.quote(str(host_dir))}")
        processes.start(
            GPU_RUNTIME_PROCESS,
            [
                "unshare",
                "--mount",
                "--propagation=slave",
                "sh",
                "-c",
                " && ".join([*binds, 'exec "$@"']),
                "sh",
                "dockerd",
                f"--data-root={cache / 'gpu-node-docker'}",
                f"--exec-root={GPU_RUNTIME_DIR / 'exec'}",
                f"--pidfile={GPU_RUNTIME_DIR / 'dockerd.pid'}",
                f"--host={gpu_docker_host()}",
                f"--bridge={GPU_BRIDGE}",
                "--iptables=false",
                "--ip-masq=false",
            ],
            state=state,
        )
    processes.wait_until(
        lambda: _docker_ok(gpu_docker_host()),
        state=state,
        name=GPU_RUNTIME_PROCESS,
        timeout=timeout,
    )


def gpu_log_dir(state: Path) -> Path:
    """The GPU node's own pod log folders (``pods``, ``containers``)."""
    return state / "nodes" / "gpu-node-logs"


def stop_gpu_runtime(state: Path) -> None:
    """Stops the GPU node's daemon (its containers with it) and removes its bridge and cgroups."""
    remove_pod_containers(gpu_docker_host())
    processes.stop(state, GPU_RUNTIME_PROCESS, timeout=30)
    subprocess.run(["ip", "link", "delete", GPU_BRIDGE], capture_output=True)
    for hierarchy in cgroup_v1_hierarchies():
        leftover = hierarchy / GPU_CGROUP_ROOT
        if leftover.is_dir():
            subprocess.run(
                ["find", str(leftover), "-depth", "-type", "d", "-delete"], capture_output=True
            )


def cgroup_v1_hierarchies(mounts: Path = Path("/proc/self/mounts")) -> list[Path]:
    """The cgroup v1 hierarchies mounted on this host (where the GPU node's cgroup root goes).

    Only what is mounted: a folder in /sys/fs/cgroup that is not a mount (a failed container
    start can leave such empty folders in a read-only tmpfs) is not a hierarchy, and making a
    folder in it fails.
    """
    found = []
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup":
            found.append(Path(fields[1].replace("\\040", " ")))
    return found


def _pod_containers(docker_host: str, *, running_only: bool = False) -> list[str]:
    """The containers dockershim made for pods (and only those) in a daemon."""
    listing = "-q" if running_only else "-aq"
    return subprocess.run(
        ["docker", "-H", docker_host, "ps", listing, "--filter", "label=io.kubernetes.docker.type"],
        capture_output=True,
        text=True,
    ).stdout.split()


def remove_pod_containers(docker_host: str) -> None:
    """Removes the pods' containers from a daemon."""
    if not _docker_ok(docker_host):
        return
    ids = _pod_containers(docker_host)
    if ids:
        subprocess.run(["docker", "-H", docker_host, "rm", "-f", *ids], capture_output=True)


def kill_pod_containers(docker_host: str) -> None:
    """SIGKILL to the pods' running containers; the kubelet finds them exited when it returns."""
    ids = _pod_containers(docker_host, running_only=True)
    if ids:
        subprocess.run(["docker", "-H", docker_host, "kill", *ids], capture_output=True)


def kill_pod_container(docker_host: str, pod_uid: str, container: str) -> bool:
    """SIGKILL to one container of one pod, as a process dying of its GPU; False if none ran."""
    listed = subprocess.run(
        [
            "docker", "-H", docker_host, "ps", "-q",
            "--filter", f"label=io.kubernetes.pod.uid={pod_uid}",
            "--filter", f"label=io.kubernetes.container.name={container}",
        ],
        capture_output=True, text=True,
    )  # fmt: skip
    ids = listed.stdout.split()
    if ids:
        subprocess.run(["docker", "-H", docker_host, "kill", *ids], capture_output=True)
    return bool(ids)


def start_kubelet(node: NodeSpec, plane: ControlPlane, bin_dir: Path, pause_image: str) -> None:
    """Certificates, config and the kubelet process of ``node`` (idempotent)."""
    if processes.running_pid(plane.state, node.process) is not None:
        return
    home = plane.state / "nodes" / node.name
    home.mkdir(parents=True, exist_ok=True)
    cert = pki.issue(
        plane.ca,
        plane.pki_dir,
        f"kubelet-{node.name}",
        common_name=f"system:node:{node.name}",
        organizations=("system:nodes",),
        dns_names=(node.name,),
        ip_addresses=(node.ip,),
    )
    kubeconfig = write_kubeconfig(
        home / "kubelet.kubeconfig",
        cluster="ml-testbed",
        server=plane.server,
        ca_cert=plane.ca.cert,
        user=f"system:node:{node.name}",
        client_cert=cert.cert,
        client_key=cert.key,
    )
    config = home / "kubelet-config.yaml"
    config.write_text(yaml.safe_dump(_kubelet_config(node, plane, cert)))
    argv = [
        str(bin_dir / "kubelet"),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
        "--container-runtime=docker",
        f"--docker-endpoint={node.docker_host}",
        f"--container-runtime-endpoint=unix://{home / 'dockershim.sock'}",
        f"--experimental-dockershim-root-directory={home / 'dockershim'}",
        f"--pod-infra-container-image={pause_image}",
        f"--root-dir={home / 'kubelet'}",
        f"--cert-dir={home / 'pki'}",
        "--network-plugin=",
    ]
    if node.labels:
        argv.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in node.labels.items()))
    if node.taints:
        argv.append("--register-with-taints=" + ",".join(node.taints))
    if node.namespace_of is not None:
        pid = processes.running_pid(plane.state, node.namespace_of)
        if pid is None:
            raise RuntimeError(f"{node.name}: its runtime {node.namespace_of} does not run")
        namespace = Path(f"/proc/{pid}/ns/mnt")
        if os.readlink(namespace) == os.readlink("/proc/self/ns/mnt"):
            # Started by an older harness: the kubelets would remove each other's pod logs.
            raise RuntimeError(
                f"{node.name}: its runtime {node.namespace_of} (pid {pid}) runs in the host's "
                "mount namespace, as an older harness started it; take the cluster down "
                "(python -m harness down) and bring it up again"
            )
        argv = ["nsenter", f"--mount={namespace}", "--", *argv]
    processes.start(node.process, argv, state=plane.state)


def _kubelet_config(node: NodeSpec, plane: ControlPlane, cert: pki.KeyPair) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": node.port,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.healthz_port,
        "readOnlyPort": 0,
        "tlsCertFile": str(cert.cert),
        "tlsPrivateKeyFile": str(cert.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(plane.ca.cert)},
        },
        "authorization": {"mode": "Webhook"},
        "featureGates": {"DevicePlugins": node.device_plugins},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failSwapOn": False,
        # The defaults (-999 for the kubelet) need CAP_SYS_RESOURCE, which the host may lack.
        "oomScoreAdj": 0,
        "clusterDomain": "cluster.local",
        "nodeStatusUpdateFrequency": "4s",
        "serializeImagePulls": False,
        # No image GC: images are loaded, never pulled, so one the kubelet removes never comes
        # back (seen in CI: at 85% disk it removed the trainer image, and every later pod
        # failed with ErrImageNeverPull). 100 turns it off; `down` removes the images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # The host's disk is shared with everything else: evict only when it is really full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
            "nodefs.inodesFree": "2%",
        },
        "makeIPTablesUtilChains": False,
    }


def remove_device_checkpoint() -> None:
    """Removes the GPU kubelet's device checkpoint, once no kubelet of ours runs.

    A checkpoint from an earlier cluster (or one that crashed) makes a new GPU kubelet report its
    stale devices for five minutes and then zero the resource, under a running test (seen here:
    every cluster test failed, waiting for 4 GPUs with 2 stale ones reported).
    """
    if DEVICE_CHECKPOINT.exists():
        DEVICE_CHECKPOINT.unlink()
        say(f"    removed an earlier cluster's device checkpoint ({DEVICE_CHECKPOINT})")


def stop_kubelet(node: NodeSpec, state: Path) -> None:
    """Stops ``node``'s kubelet."""
    processes.stop(state, node.process)


def unmount_below(path: Path) -> None:
    """Unmounts what kubelets mounted under ``path`` (secret tmpfs volumes) so it can be removed."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


def _docker_ok(docker_host: str) -> bool:
    return (
        subprocess.run(["docker", "-H", docker_host, "info"], capture_output=True).returncode == 0
    )
