"""The simulated GPU device plugin against a stand-in kubelet: real gRPC over unix sockets, the
kubelet's side of the v1beta1 API played by the test (the real kubelet: tests/cluster)."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest

from harness.cluster import gpus, images
from harness.cluster.device_plugin import deviceplugin_pb2 as api
from harness.cluster.device_plugin import deviceplugin_pb2_grpc as api_grpc
from harness.cluster.device_plugin.plugin import (
    API_VERSION,
    KUBELET_SOCKET,
    VISIBLE_DEVICES,
    DevicePlugin,
    allocations_file,
)
from harness.cluster.device_plugin.topology import HEALTHY, UNHEALTHY, Topology, simulated


class _Kubelet(api_grpc.RegistrationServicer):
    """The kubelet's Registration service on ``kubelet.sock``; requests land in ``requests``."""

    def __init__(self, plugin_dir) -> None:
        self.plugin_dir = plugin_dir
        self.requests: queue.Queue[api.RegisterRequest] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{plugin_dir / KUBELET_SOCKET}")
        self.server.start()

    def Register(self, request, context):
        self.requests.put(request)
        return api.Empty()

    def restart(self) -> _Kubelet:
        """As a kubelet starting does: its socket made anew, every plugin socket removed."""
        self.server.stop(grace=None)
        for socket in self.plugin_dir.iterdir():
            socket.unlink(missing_ok=True)
        return _Kubelet(self.plugin_dir)

    def plugin(self, request: api.RegisterRequest) -> api_grpc.DevicePluginStub:
        channel = grpc.insecure_channel(f"unix://{self.plugin_dir / request.endpoint}")
        return api_grpc.DevicePluginStub(channel)


@pytest.fixture
def topology_file(tmp_path):
    path = tmp_path / "state" / "gpu-node.json"
    simulated("gpu-node", 2).write(path)
    return path


@pytest.fixture
def plugin_dir(tmp_path):
    path = tmp_path / "dp"
    path.mkdir()
    return path


@pytest.fixture
def running(topology_file, plugin_dir):
    kubelet = _Kubelet(plugin_dir)
    plugin = DevicePlugin(topology_file, plugin_dir)
    thread = threading.Thread(target=plugin.run, daemon=True)
    thread.start()
    yield kubelet, plugin
    plugin.stop()
    thread.join(10)
    assert not thread.is_alive(), "the plugin did not stop"


def _lists(stub: api_grpc.DevicePluginStub):
    """The ListAndWatch stream as lists of (id, health)."""
    stream = stub.ListAndWatch(api.Empty(), timeout=30)
    return stream, ([(d.ID, d.health) for d in answer.devices] for answer in stream)


def test_registers_its_resource_and_lists_stable_devices(running, topology_file):
    kubelet, _ = running
    request = kubelet.requests.get(timeout=10)
    assert (request.version, request.resource_name) == (API_VERSION, "nvidia.com/gpu")
    stream, lists = _lists(kubelet.plugin(request))
    devices = next(lists)
    stream.cancel()
    assert devices == [(d.id, HEALTHY) for d in Topology.read(topology_file).devices]
    assert devices == [(d.id, HEALTHY) for d in simulated("gpu-node", 2).devices]
    assert len({device for device, _ in devices}) == 2
    assert simulated("other-node", 2).devices[0].id not in dict(devices)


def test_allocate_gives_each_container_its_gpus_and_records_them(running, topology_file):
    kubelet, _ = running
    stub = kubelet.plugin(kubelet.requests.get(timeout=10))
    first, second = (d.id for d in Topology.read(topology_file).devices)
    answer = stub.Allocate(
        api.AllocateRequest(
            container_requests=[
                api.ContainerAllocateRequest(devices_ids=[first]),
                api.ContainerAllocateRequest(devices_ids=[second, first]),
            ]
        ),
        timeout=10,
    )
    envs = [dict(c.envs)[VISIBLE_DEVICES] for c in answer.container_responses]
    assert envs == [first, f"{second},{first}"]
    lines = allocations_file(topology_file).read_text().splitlines()
    recorded = [json.loads(line) for line in lines]
    assert [entry["devices"] for entry in recorded] == [[first], [second, first]]


def test_allocate_refuses_a_device_it_does_not_have(running):
    kubelet, _ = running
    stub = kubelet.plugin(kubelet.requests.get(timeout=10))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Allocate(
            api.AllocateRequest(
                container_requests=[api.ContainerAllocateRequest(devices_ids=["GPU-none"])]
            ),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_health_change_reaches_the_kubelet_through_list_and_watch(running, topology_file):
    kubelet, _ = running
    stream, lists = _lists(kubelet.plugin(kubelet.requests.get(timeout=10)))
    before = next(lists)
    failing = before[0][0]
    Topology.read(topology_file).with_health({failing}, UNHEALTHY).write(topology_file)
    after = next(lists)
    Topology.read(topology_file).with_health({failing}, HEALTHY).write(topology_file)
    again = next(lists)
    stream.cancel()
    assert after == [(failing, UNHEALTHY), before[1]]
    assert again == before


def test_registers_again_after_the_kubelet_restarts(running):
    kubelet, plugin = running
    kubelet.requests.get(timeout=10)
    restarted = kubelet.restart()
    try:
        request = restarted.requests.get(timeout=10)
        stream, lists = _lists(restarted.plugin(request))
        assert len(next(lists)) == 2
        stream.cancel()
        # The kubelet has the request before the plugin has the answer and counts it.
        deadline = time.monotonic() + 10
        while plugin.registrations < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plugin.registrations == 2
    finally:
        restarted.server.stop(grace=None)


def test_time_slices_show_the_gpu_they_share_and_mig_devices_have_their_own_names():
    sliced = simulated("n", 2, replicas=3)
    assert len(sliced.devices) == 6
    assert len({d.visible for d in sliced.devices}) == 2
    assert all(d.id.startswith(f"{d.visible}::") for d in sliced.devices)
    mig = simulated("n", 2, resource="nvidia.com/mig-1g.10gb")
    assert mig.resource == "nvidia.com/mig-1g.10gb"
    assert all(d.id.startswith("MIG-") and len(d.id) <= 63 for d in mig.devices)


def test_a_broken_topology_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text('{"resource": "nvidia.com/gpu", "devices": [{"id": "x"}]}')
    with pytest.raises(ValueError, match=r"gpu\.json: not a device topology"):
        Topology.read(path)
    with pytest.raises(ValueError, match="no such device"):
        simulated("n", 1).with_health({"GPU-none"}, UNHEALTHY)


def test_the_daemonset_serves_each_gpu_node_its_own_topology_through_the_plugin_directory():
    labels = {"gpu-type": "nvidia-a100", "node-pool": "gpu-training"}
    daemonset = gpus.plugin_daemonset("ml-testbed/device-plugin:abc", labels)
    spec = daemonset.spec.template.spec
    (container,) = spec.containers
    assert spec.node_selector == labels
    assert [t.operator for t in spec.tolerations] == ["Exists"]  # the GPU taint too
    assert container.image_pull_policy == "Never"
    assert container.args == ["--topology=/ml-testbed/gpus/$(NODE_NAME).json"]
    assert container.env[0].value_from.field_ref.field_path == "spec.nodeName"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    paths = {v.name: v.host_path.path for v in spec.volumes}
    assert (
        mounts
        == paths
        == {
            "device-plugins": "/var/lib/kubelet/device-plugins",
            "topology": "/ml-testbed/gpus",
        }
    )
    assert daemonset.spec.selector.match_labels == daemonset.spec.template.metadata.labels


def test_the_plugin_image_holds_the_package_alone_and_the_locked_grpc(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("grpcio==1.85.3\nmlflow==3.0.0\nprotobuf==7.36.2\n")
    dockerfile, files = images.device_plugin_recipe("ml-testbed/python-base:x", lock)
    assert files["requirements.txt"] == b"grpcio==1.85.3\nprotobuf==7.36.2\n"
    assert {"plugin.py", "topology.py", "__main__.py", "deviceplugin_pb2.py"} <= set(files)
    assert "generate.py" not in files  # needs grpcio-tools, which the image lacks
    assert dockerfile.startswith("FROM ml-testbed/python-base:x\n")
    assert '"-m", "harness.cluster.device_plugin"' in dockerfile
    # Nothing of the harness but the package: it imports only itself, grpc and protobuf.
    for name, content in files.items():
        imported = {
            line.split()[1].split(".")[0]
            for line in content.decode().splitlines()
            if line.startswith(("import ", "from ")) and name.endswith(".py")
        }
        # The standard library, and what the image installs.
        assert imported - sys.stdlib_module_names <= {"grpc", "google", "harness"}, name
        harness_imports = [
            line for line in content.decode().splitlines() if line.startswith("from harness")
        ]
        assert all(
            line.startswith("from harness.cluster.device_plugin") for line in harness_imports
        )
    lock.write_text("grpcio==1.85.3\n")
    with pytest.raises(RuntimeError, match="must pin grpcio, protobuf"):
        images.device_plugin_recipe("b", lock)
