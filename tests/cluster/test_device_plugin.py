"""The GPU node's kubelet hands out the simulated GPUs through the device plugin: registration,
allocation into the container, a kubelet restart and a device's health, on the real kubelet."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from harness import cluster, processes
from harness.cluster import gpus
from harness.cluster.config import ClusterConfig
from harness.cluster.device_plugin.plugin import allocations_file
from harness.cluster.device_plugin.topology import UNHEALTHY, Topology
from harness.cluster.gpu_capacity import counts
from harness.cluster.provider import DEVICE_PLUGIN
from harness.paths import state_dir
from tests.cluster.test_cluster import GPU, NAMESPACE, phase, pod, wait_for


@pytest.fixture
def gpu_node(test_cluster):
    """The GPU node, where its GPUs come from the harness's device plugin."""
    info = test_cluster.info
    if info.gpus != DEVICE_PLUGIN:
        pytest.skip(f"the {info.provider} cluster's GPUs come from its own device plugin")
    return info.gpu_nodes[0]


def _topology(test_cluster, node) -> Topology:
    return Topology.read(gpus.topology_file(test_cluster.info.name, node))


def _allocatable(core, node) -> int:
    return counts(core, node, GPU)[1]


def _plugin_log(test_cluster, core, node) -> str:
    return gpus.plugin_log(test_cluster.info, core, node)


def _restart_kubelet(test_cluster, node) -> None:
    """SIGKILL to the node's kubelet, which comes back: systemd in a kind node, the harness's
    bring-up on local-up."""
    info = test_cluster.info
    if info.provider == "kind":
        subprocess.run(["docker", "exec", node, "pkill", "-KILL", "-x", "kubelet"], check=True)
    else:
        processes.kill(state_dir(info.name), f"kubelet-{node}")
        cluster.up(ClusterConfig(name=info.name, gpu_capacity=4), info.provider)


def test_the_kubelet_offers_the_devices_the_plugin_registered(test_cluster, core, gpu_node):
    topology = _topology(test_cluster, gpu_node)
    assert len(topology.healthy()) == 4
    assert counts(core, gpu_node, GPU) == ("4", 4)
    assert f"registered {GPU} (4 devices)" in _plugin_log(test_cluster, core, gpu_node)


def test_pods_running_at_once_are_given_distinct_devices(test_cluster, core, created, gpu_node):
    command = 'echo "devices=$NVIDIA_VISIBLE_DEVICES"; sleep 3'
    names = [created(pod(test_cluster, "device", command, gpus=1)) for _ in range(2)]
    pair = created(pod(test_cluster, "devices", command, gpus=2))
    for name in (*names, pair):
        wait_for(lambda name=name: phase(core, name) == "Succeeded", what=f"{name} Succeeded")
    seen = {}
    for name in (*names, pair):
        # The client may hand back the log's bytes as their repr: read the UUIDs alone.
        found = wait_for(
            lambda name=name: re.search(
                r"devices=([\w,:-]*)", core.read_namespaced_pod_log(name, NAMESPACE)
            ),
            timeout=20,
            what=f"{name}'s log",
        )
        seen[name] = found.group(1).split(",")
    uuids = {device.visible for device in _topology(test_cluster, gpu_node).devices}
    given = [device for devices in seen.values() for device in devices]
    assert set(given) <= uuids
    assert [len(seen[name]) for name in (*names, pair)] == [1, 1, 2]
    # Four GPUs, four devices asked for at once: each one handed out once.
    assert len(set(given)) == 4
    record = allocations_file(gpus.topology_file(test_cluster.info.name, gpu_node))
    recorded = [json.loads(line)["visible"] for line in record.read_text().splitlines()]
    assert all(devices in recorded for devices in seen.values())


def test_a_device_turning_unhealthy_leaves_the_allocatable_count(test_cluster, core, gpu_node):
    path = gpus.topology_file(test_cluster.info.name, gpu_node)
    before = Topology.read(path)
    failing = before.devices[0]
    try:
        before.with_health({failing.id}, UNHEALTHY).write(path)
        wait_for(lambda: _allocatable(core, gpu_node) == 3, timeout=30, what="allocatable 3")
        assert counts(core, gpu_node, GPU)[0] == "4"  # still there, no longer handed out
    finally:
        before.write(path)
    wait_for(lambda: _allocatable(core, gpu_node) == 4, timeout=30, what="allocatable 4 again")


def test_the_plugin_registers_again_after_the_kubelet_restarts(test_cluster, core, gpu_node):
    # Only what the plugin writes from now on: a kept cluster's log has earlier restarts.
    offset = len(_plugin_log(test_cluster, core, gpu_node))

    def since() -> str:
        return _plugin_log(test_cluster, core, gpu_node)[offset:]

    started = time.monotonic()
    _restart_kubelet(test_cluster, gpu_node)
    wait_for(lambda: f"registered {GPU}" in since(), timeout=30, what="a second registration")
    print(f"registered again {time.monotonic() - started:.1f} s after the kubelet's start")
    wait_for(lambda: _allocatable(core, gpu_node) == 4, timeout=60, what="allocatable 4 again")
    assert "the kubelet restarted: registering again" in since()
