"""The simulated GPUs of a cluster the harness owns, whichever way its provider makes them.

On local-up a device plugin (harness.cluster.device_plugin) serves each GPU node's devices to its
kubelet, which allocates them to pods as on a real GPU node; the devices are data, a topology file
per node in the cluster's state. Elsewhere (kind, for now) the count is patched into the node's
status (harness.cluster.gpu_capacity): the scheduler counts, nothing is allocated.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s

from harness import processes
from harness.cluster.device_plugin.checkpoint import devices_by_pod
from harness.cluster.device_plugin.topology import Topology, simulated
from harness.cluster.gpu_capacity import allocatable, ensure_capacity, give_missing_capacity
from harness.cluster.provider import DEVICE_PLUGIN, ClusterInfo
from harness.locks import held
from harness.paths import state_dir, state_root
from harness.waiting import wait_until

PLUGIN_PROCESS = "device-plugin"


def topology_file(cluster: str, node: str) -> Path:
    """Where the devices of ``node`` in ``cluster`` are kept."""
    return state_dir(cluster) / "gpus" / f"{node}.json"


def start_device_plugin(cluster: str, node: str, resource: str, count: int) -> None:
    """The device plugin of ``node`` (idempotent). Its topology is written only where none is:
    a running cluster keeps the devices it has (a replay may hold another count)."""
    state = state_dir(cluster)
    topology = topology_file(cluster, node)
    # Two processes bringing the same cluster up must not start two plugins.
    with held(state_root() / f"{cluster}.device-plugin.lock"):
        if not topology.exists():
            simulated(node, count, resource).write(topology)
        if processes.running_pid(state, PLUGIN_PROCESS) is None:
            argv = [sys.executable, "-m", "harness.cluster.device_plugin", f"--topology={topology}"]
            processes.start(PLUGIN_PROCESS, argv, state=state)


def set_health(info: ClusterInfo, node: str, devices: set[str], health: str) -> None:
    """Turns ``devices`` (ids or UUIDs) of ``node`` ``health``; its plugin tells the kubelet."""
    path = topology_file(info.name, node)
    Topology.read(path).with_health(devices, health).write(path)


def describe(info: ClusterInfo) -> list[str]:
    """Lines naming each GPU node's devices (device plugin) or how its count is made."""
    if info.gpus != DEVICE_PLUGIN:
        return [f"GPUs: a count in the GPU nodes' status ({info.gpus})"] if info.owned else []
    lines = []
    for node in info.gpu_nodes:
        topology = Topology.read(topology_file(info.name, node))
        lines.append(f"GPUs of {node} ({topology.resource}, from its device plugin):")
        lines += [f"  {device.id} {device.health}" for device in topology.devices]
    return lines


def pod_devices(info: ClusterInfo, resource: str) -> Callable[[str], list[str]] | None:
    """How to find the GPUs (UUIDs) a pod, by UID, was given, or None where nothing is allocated
    (a patched count). On local-up the GPU kubelet's checkpoint is a file on this host; a
    time-slice is named by the GPU it is a slice of, so two pods on one GPU show it."""
    if info.gpus != DEVICE_PLUGIN:
        return None

    def devices_of(uid: str) -> list[str]:
        visible = {}
        for node in info.gpu_nodes:
            with contextlib.suppress(ValueError):  # unreadable: the ids stand for themselves
                devices = Topology.read(topology_file(info.name, node)).devices
                visible.update({device.id: device.visible for device in devices})
        return [visible.get(i, i) for i in devices_by_pod(resource).get(uid, [])]

    return devices_of


def holders(info: ClusterInfo, api: k8s.CoreV1Api, resource: str) -> list[str]:
    """Lines for ``cluster status``: each GPU node's allocatable count, and on a device-plugin
    cluster each device's health and the pod holding it (from the kubelet's checkpoint)."""
    lines = []
    held = devices_by_pod(resource) if info.gpus == DEVICE_PLUGIN else {}
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


def provide(info: ClusterInfo, api: k8s.CoreV1Api, resource: str, count: int) -> None:
    """Makes sure the GPU nodes offer GPUs: each node's devices registered (device plugin), or
    ``count`` patched where a node has none (a count there stays: see give_missing_capacity)."""
    if info.gpus == DEVICE_PLUGIN:
        for node in info.gpu_nodes:
            wait_devices(api, info.name, node, resource)
    else:
        give_missing_capacity(api, info.gpu_nodes, resource, count)


@contextmanager
def count_held(
    info: ClusterInfo, api: k8s.CoreV1Api, resource: str, count: int, replicas: int = 1
) -> Iterator[None]:
    """``count`` healthy GPUs on every GPU node for the block, each handed out ``replicas``
    times (time-slicing); what was there before afterwards (on a device-plugin cluster the very
    devices, with their health)."""
    nodes = info.gpu_nodes
    if info.gpus != DEVICE_PLUGIN:
        before = {node: allocatable(api, node, resource) for node in nodes}
        ensure_capacity(api, nodes, resource, count * replicas)
        try:
            yield
        finally:
            for node, had in before.items():
                ensure_capacity(api, [node], resource, had)
        return
    saved = {node: Topology.read(topology_file(info.name, node)) for node in nodes}
    try:
        for node in nodes:
            simulated(node, count, resource, replicas).write(topology_file(info.name, node))
        for node in nodes:
            wait_devices(api, info.name, node, resource)
        yield
    finally:
        for node, topology in saved.items():
            topology.write(topology_file(info.name, node))
        for node in nodes:
            wait_devices(api, info.name, node, resource)


def wait_devices(
    api: k8s.CoreV1Api, cluster: str, node: str, resource: str, timeout: float = 60
) -> None:
    """Waits until ``node``'s allocatable count is its topology's healthy devices (the plugin
    registered them, or passed a change on, and the kubelet reported it)."""
    wanted = len(Topology.read(topology_file(cluster, node)).healthy())
    log = processes.log_path(state_dir(cluster), PLUGIN_PROCESS)
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
