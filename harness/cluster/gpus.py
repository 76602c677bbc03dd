"""The simulated GPUs of a cluster the harness owns, whichever way its provider makes them.

A device plugin (harness.cluster.device_plugin) serves each GPU node's devices to its kubelet,
which allocates them to pods as on a real GPU node; the devices are data, a topology file per node
in the cluster's state. On local-up the plugin is a host process of the cluster; on kind it is a
DaemonSet on the GPU worker (the node's plugin directory and the topology folder as hostPath
volumes), as NVIDIA's plugin is. An existing cluster's GPUs come from its own plugin, which the
harness neither changes nor reads.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s

from harness import processes
from harness.cluster.device_plugin.checkpoint import CHECKPOINT, devices_in
from harness.cluster.device_plugin.plugin import PLUGIN_DIR
from harness.cluster.device_plugin.topology import Topology, simulated
from harness.cluster.gpu_capacity import allocatable
from harness.cluster.provider import DEVICE_PLUGIN, ClusterInfo
from harness.locks import held
from harness.paths import state_dir, state_root
from harness.waiting import wait_until

PLUGIN_PROCESS = "device-plugin"
# The DaemonSet of a cluster whose nodes are containers (kind), and where it finds the topology
# folder inside its node (an extraMount of the state's gpus folder).
PLUGIN_DAEMONSET = "ml-testbed-device-plugin"
PLUGIN_NAMESPACE = "kube-system"
TOPOLOGY_IN_NODE = "/ml-testbed/gpus"


def topology_file(cluster: str, node: str) -> Path:
    """Where the devices of ``node`` in ``cluster`` are kept."""
    return state_dir(cluster) / "gpus" / f"{node}.json"


def ensure_topology(cluster: str, node: str, resource: str, count: int) -> Path:
    """``node``'s topology file, written with ``count`` devices only where none is: a running
    cluster keeps the devices it has (a replay may hold another count)."""
    topology = topology_file(cluster, node)
    if not topology.exists():
        simulated(node, count, resource).write(topology)
    return topology


def start_device_plugin(cluster: str, node: str, resource: str, count: int) -> None:
    """The device plugin of ``node`` as a host process (idempotent)."""
    state = state_dir(cluster)
    # Two processes bringing the same cluster up must not start two plugins.
    with held(state_root() / f"{cluster}.device-plugin.lock"):
        topology = ensure_topology(cluster, node, resource, count)
        if processes.running_pid(state, PLUGIN_PROCESS) is None:
            argv = [sys.executable, "-m", "harness.cluster.device_plugin", f"--topology={topology}"]
            processes.start(PLUGIN_PROCESS, argv, state=state)


def plugin_daemonset(image: str, node_labels: dict[str, str]) -> k8s.V1DaemonSet:
    """The DaemonSet that runs the device plugin on the nodes with ``node_labels``: each pod
    serves the topology named after its node, through the node's plugin directory."""
    labels = {"app.kubernetes.io/name": PLUGIN_DAEMONSET}

    def host_path(name: str, path: str) -> k8s.V1Volume:
        source = k8s.V1HostPathVolumeSource(path=path, type="Directory")
        return k8s.V1Volume(name=name, host_path=source)

    container = k8s.V1Container(
        name="device-plugin",
        image=image,
        image_pull_policy="Never",  # loaded into the nodes, as every image of the harness
        args=[f"--topology={TOPOLOGY_IN_NODE}/$(NODE_NAME).json"],
        env=[
            k8s.V1EnvVar(
                name="NODE_NAME",
                value_from=k8s.V1EnvVarSource(
                    field_ref=k8s.V1ObjectFieldSelector(field_path="spec.nodeName")
                ),
            )
        ],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "10m", "memory": "64Mi"}, limits={"memory": "256Mi"}
        ),
        volume_mounts=[
            k8s.V1VolumeMount(name="device-plugins", mount_path=str(PLUGIN_DIR)),
            k8s.V1VolumeMount(name="topology", mount_path=TOPOLOGY_IN_NODE),
        ],
    )
    spec = k8s.V1PodSpec(
        containers=[container],
        node_selector=dict(node_labels),
        # On every GPU node, whatever its taints (NVIDIA's plugin does the same).
        tolerations=[k8s.V1Toleration(operator="Exists")],
        priority_class_name="system-node-critical",
        termination_grace_period_seconds=5,
        volumes=[
            host_path("device-plugins", str(PLUGIN_DIR)),
            host_path("topology", TOPOLOGY_IN_NODE),
        ],
    )
    return k8s.V1DaemonSet(
        metadata=k8s.V1ObjectMeta(name=PLUGIN_DAEMONSET, namespace=PLUGIN_NAMESPACE),
        spec=k8s.V1DaemonSetSpec(
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=spec),
        ),
    )


def apply_plugin_daemonset(apps: k8s.AppsV1Api, daemonset: k8s.V1DaemonSet) -> None:
    """Creates the DaemonSet, or replaces it where one runs (a rebuilt image)."""
    try:
        apps.create_namespaced_daemon_set(PLUGIN_NAMESPACE, daemonset)
    except k8s.ApiException as error:
        if error.status != 409:
            raise
        apps.replace_namespaced_daemon_set(PLUGIN_DAEMONSET, PLUGIN_NAMESPACE, daemonset)


def plugin_log(info: ClusterInfo, api: k8s.CoreV1Api, node: str) -> str:
    """What ``node``'s device plugin has logged: its process's log on local-up, its DaemonSet
    pod's on kind ("" where neither can be read now, e.g. while its kubelet restarts)."""
    path = processes.log_path(state_dir(info.name), PLUGIN_PROCESS)
    if info.provider != "kind":
        return path.read_text() if path.exists() else ""
    selector = f"app.kubernetes.io/name={PLUGIN_DAEMONSET}"
    pods = api.list_namespaced_pod(
        PLUGIN_NAMESPACE, label_selector=selector, field_selector=f"spec.nodeName={node}"
    ).items
    if not pods:
        return ""
    try:
        text = api.read_namespaced_pod_log(pods[0].metadata.name, PLUGIN_NAMESPACE)
    except k8s.ApiException:
        return ""
    # The client may hand back the log's bytes as their repr.
    return text[2:-1].encode().decode("unicode_escape") if text.startswith("b'") else text


def set_health(info: ClusterInfo, node: str, devices: set[str], health: str) -> None:
    """Turns ``devices`` (ids or UUIDs) of ``node`` ``health``; its plugin tells the kubelet."""
    path = topology_file(info.name, node)
    Topology.read(path).with_health(devices, health).write(path)


def describe(info: ClusterInfo) -> list[str]:
    """Lines naming each GPU node's devices, where the device plugin is ours."""
    if info.gpus != DEVICE_PLUGIN:
        return []
    lines = []
    for node in info.gpu_nodes:
        topology = Topology.read(topology_file(info.name, node))
        lines.append(f"GPUs of {node} ({topology.resource}, from its device plugin):")
        lines += [f"  {device.id} {device.health}" for device in topology.devices]
    return lines


def pod_devices(info: ClusterInfo, resource: str) -> Callable[[str], list[str]] | None:
    """How to find the GPUs (UUIDs) a pod, by UID, was given, or None where the plugin is not
    ours (an existing cluster's devices are not read). The GPU kubelets' checkpoints say; a
    time-slice is named by the GPU it is a slice of, so two pods on one GPU show it."""
    if info.gpus != DEVICE_PLUGIN:
        return None

    def devices_of(uid: str) -> list[str]:
        visible = {}
        for node in info.gpu_nodes:
            with contextlib.suppress(ValueError):  # unreadable: the ids stand for themselves
                devices = Topology.read(topology_file(info.name, node)).devices
                visible.update({device.id: device.visible for device in devices})
        return [visible.get(i, i) for i in held_devices(info, resource).get(uid, [])]

    return devices_of


def held_devices(info: ClusterInfo, resource: str) -> dict[str, list[str]]:
    """Pod UID -> the ``resource`` devices it holds, from every GPU kubelet's checkpoint: a file
    of this host on local-up, inside the node's container on kind."""
    held: dict[str, list[str]] = {}
    for node in info.gpu_nodes:
        held.update(devices_in(_checkpoint_text(info, node), resource))
    return held


def _checkpoint_text(info: ClusterInfo, node: str) -> str:
    if info.provider == "kind":
        done = subprocess.run(
            ["docker", "exec", node, "cat", str(CHECKPOINT)], capture_output=True, text=True
        )
        return done.stdout if done.returncode == 0 else ""
    try:
        return CHECKPOINT.read_text()
    except FileNotFoundError:
        return ""


def holders(info: ClusterInfo, api: k8s.CoreV1Api, resource: str) -> list[str]:
    """Lines for ``cluster status``: each GPU node's allocatable count, and on a device-plugin
    cluster each device's health and the pod holding it (from the kubelet's checkpoint)."""
    lines = []
    held = held_devices(info, resource) if info.gpus == DEVICE_PLUGIN else {}
    for node in info.gpu_nodes:
        lines.append(f"{node}: {allocatable(api, node, resource)} {resource} allocatable")
        if info.gpus != DEVICE_PLUGIN:
            continue
        pods = api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        # The kubelet keeps a finished pod's entry until its next allocation: not a holder.
        names = {
            p.metadata.uid: f"{p.metadata.namespace}/{p.metadata.name}"
            for p in pods
            if p.status.phase not in ("Succeeded", "Failed")
        }
        holder = {d: names[uid] for uid, ids in held.items() if uid in names for d in ids}
        for device in Topology.read(topology_file(info.name, node)).devices:
            lines.append(f"  {device.id} {device.health} {holder.get(device.id, 'free')}")
    return lines


def provide(info: ClusterInfo, api: k8s.CoreV1Api) -> None:
    """Waits until the GPU nodes of a cluster whose device plugin is ours offer their devices
    (a running cluster keeps the devices it has: a replay may hold another count)."""
    if info.gpus == DEVICE_PLUGIN:
        for node in info.gpu_nodes:
            wait_devices(api, info.name, node)


@contextmanager
def count_held(
    info: ClusterInfo, api: k8s.CoreV1Api, resource: str, count: int, replicas: int = 1
) -> Iterator[None]:
    """``count`` healthy GPUs on every GPU node for the block, each handed out ``replicas``
    times (time-slicing); what was there before afterwards (on a device-plugin cluster the very
    devices, with their health). Only where the device plugin is ours."""
    nodes = info.gpu_nodes
    if info.gpus != DEVICE_PLUGIN:
        raise RuntimeError(
            f"cluster {info.name}: its GPUs come from its own device plugin; the harness can "
            "set the GPUs only of a cluster it made (local-up or kind)"
        )
    saved = {node: Topology.read(topology_file(info.name, node)) for node in nodes}
    try:
        for node in nodes:
            simulated(node, count, resource, replicas).write(topology_file(info.name, node))
        for node in nodes:
            wait_devices(api, info.name, node)
        yield
    finally:
        for node, topology in saved.items():
            topology.write(topology_file(info.name, node))
        for node in nodes:
            wait_devices(api, info.name, node)


def wait_devices(api: k8s.CoreV1Api, cluster: str, node: str, timeout: float = 60) -> None:
    """Waits until ``node``'s allocatable count of its topology's resource is the topology's
    healthy devices (the plugin registered them, or passed a change on, and the kubelet
    reported it)."""
    topology = Topology.read(topology_file(cluster, node))
    resource, wanted = topology.resource, len(topology.healthy())
    log = processes.log_path(state_dir(cluster), PLUGIN_PROCESS)
    if not log.exists():  # a DaemonSet's pod
        log = f"kubectl -n {PLUGIN_NAMESPACE} logs ds/{PLUGIN_DAEMONSET}"
    wait_until(
        lambda: allocatable(api, node, resource) == wanted,
        timeout=timeout,
        interval=0.5,
        timed_out=lambda: (
            f"{node}: {resource} allocatable is {allocatable(api, node, resource)}, expected "
            f"{wanted} from its device plugin (log: {log})"
        ),
        error=RuntimeError,
    )
