"""A simulated GPU device plugin: what NVIDIA's plugin does for the kubelet, for devices that are
data (a topology file, see topology.py).

It serves the kubelet's device-plugin API (v1beta1) on a unix socket in the kubelet's plugin
directory and registers that socket with the kubelet. ListAndWatch sends the device list, and
again whenever the topology file changes (a device turns Unhealthy, devices come or go); Allocate
answers each container with NVIDIA_VISIBLE_DEVICES, the UUIDs of the GPUs it was given, and
appends the allocation to a record beside the topology. A kubelet that restarts empties the plugin
directory (its own socket is made anew): the plugin then serves and registers again, as real
plugins do.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from harness.cluster.device_plugin import deviceplugin_pb2 as api
from harness.cluster.device_plugin import deviceplugin_pb2_grpc as api_grpc
from harness.cluster.device_plugin.topology import Topology

API_VERSION = "v1beta1"
# Fixed by the kubelet, whatever its --root-dir says.
PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
ENDPOINT = "ml-testbed-gpu.sock"
VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
# How often the topology file and the kubelet's socket are looked at.
POLL_SECONDS = 0.5


def allocations_file(topology_file: Path) -> Path:
    """Where the plugin records each Allocate (JSON lines), beside its topology."""
    return topology_file.with_name(f"{topology_file.stem}.allocations.jsonl")


class DevicePluginService(api_grpc.DevicePluginServicer):
    """The plugin's side of the API, over the topology in ``topology_file``."""

    def __init__(self, topology_file: Path) -> None:
        self.topology_file = topology_file
        self.topology = Topology.read(topology_file)
        self._changed = threading.Condition()
        self._generation = 0
        self._stopping = False

    def reload(self, topology: Topology) -> None:
        """Takes ``topology`` and sends it to every ListAndWatch stream."""
        with self._changed:
            self.topology = topology
            self._generation += 1
            self._changed.notify_all()

    def stop(self) -> None:
        """Ends the ListAndWatch streams."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def GetDevicePluginOptions(self, request, context) -> api.DevicePluginOptions:
        return api.DevicePluginOptions()

    def ListAndWatch(self, request, context) -> Iterator[api.ListAndWatchResponse]:
        sent = None
        while context.is_active():
            with self._changed:
                if self._generation == sent and not self._stopping:
                    self._changed.wait(POLL_SECONDS)
                if self._stopping:
                    return
                if self._generation == sent:
                    continue
                sent, topology = self._generation, self.topology
            yield api.ListAndWatchResponse(
                devices=[api.Device(ID=d.id, health=d.health) for d in topology.devices]
            )

    def GetPreferredAllocation(self, request, context) -> api.PreferredAllocationResponse:
        return api.PreferredAllocationResponse()

    def Allocate(self, request, context) -> api.AllocateResponse:
        by_id = {d.id: d for d in self.topology.devices}
        answers = []
        for container in request.container_requests:
            ids = list(container.devices_ids)
            unknown = [i for i in ids if i not in by_id]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices {unknown}")
            # Time-slices of one GPU show that GPU once.
            visible = list(dict.fromkeys(by_id[i].visible for i in ids))
            self._record(ids, visible)
            answers.append(api.ContainerAllocateResponse(envs={VISIBLE_DEVICES: ",".join(visible)}))
        return api.AllocateResponse(container_responses=answers)

    def PreStartContainer(self, request, context) -> api.PreStartContainerResponse:
        return api.PreStartContainerResponse()

    def _record(self, ids: list[str], visible: list[str]) -> None:
        entry = {"time": time.time(), "devices": ids, "visible": visible}
        with allocations_file(self.topology_file).open("a") as record:
            record.write(json.dumps(entry) + "\n")


@dataclass
class _Serving:
    """One registration: the server on our socket, the kubelet's socket as it was then, and the
    version of the topology file the service read."""

    server: grpc.Server
    service: DevicePluginService
    kubelet: Path
    kubelet_inode: int
    topology_version: tuple[int, int] | None


class DevicePlugin:
    """Serves ``topology_file``'s devices to the kubelet whose socket is in ``plugin_dir``,
    registering again whenever that kubelet restarts; ``run`` until ``stop``."""

    def __init__(
        self, topology_file: Path, plugin_dir: Path = PLUGIN_DIR, endpoint: str = ENDPOINT
    ) -> None:
        self.topology_file = topology_file
        self.plugin_dir = plugin_dir
        self.endpoint = endpoint
        self.registrations = 0
        self._stop = threading.Event()
        self._registered = threading.Event()

    @property
    def socket(self) -> Path:
        """The plugin's own socket."""
        return self.plugin_dir / self.endpoint

    def stop(self) -> None:
        """Makes ``run`` return (from any thread)."""
        self._stop.set()

    def wait_registered(self, timeout: float) -> bool:
        """Whether the plugin has registered (at least once) within ``timeout`` seconds."""
        return self._registered.wait(timeout)

    def run(self) -> None:
        """Registers, serves, and registers again after each kubelet restart, until ``stop``."""
        while not self._stop.is_set():
            serving = self._serve_and_register(self.plugin_dir / KUBELET_SOCKET)
            if serving is None:
                self._stop.wait(POLL_SECONDS)
                continue
            try:
                self._watch(serving)
            finally:
                serving.service.stop()
                # gRPC unlinks the socket's path as it stops: wait, or it may remove the next one.
                serving.server.stop(grace=None).wait()
        # A plugin's socket left behind would look like a plugin to the kubelet's next start.
        self.socket.unlink(missing_ok=True)

    def _serve_and_register(self, kubelet: Path) -> _Serving | None:
        """Our server on our socket, registered with the kubelet; None to try again shortly (no
        kubelet yet, a topology not readable now, a registration refused)."""
        inode = _inode(kubelet)
        if inode is None:
            return None
        # The version first: a change written while registering is then passed on after.
        version = _version(self.topology_file)
        try:
            service = DevicePluginService(self.topology_file)
        except ValueError as error:
            print(f"topology not taken: {error}", flush=True)
            return None
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        api_grpc.add_DevicePluginServicer_to_server(service, server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        try:
            register(kubelet, self.endpoint, service.topology.resource)
        except grpc.RpcError as error:
            print(f"registration with {kubelet} failed: {error.details()}", flush=True)
            server.stop(grace=None).wait()
            return None
        self.registrations += 1
        self._registered.set()
        devices = len(service.topology.devices)
        print(
            f"registered {service.topology.resource} ({devices} devices) with {kubelet}",
            flush=True,
        )
        return _Serving(server, service, kubelet, inode, version)

    def _watch(self, serving: _Serving) -> None:
        """Until the kubelet restarts (or the resource's name changes): passes topology changes
        on to the kubelet."""
        seen = serving.topology_version
        while not self._stop.wait(POLL_SECONDS):
            if not self.socket.exists() or _inode(serving.kubelet) != serving.kubelet_inode:
                print("the kubelet restarted: registering again", flush=True)
                return
            version = _version(self.topology_file)
            if version == seen:
                continue
            seen = version
            try:
                topology = Topology.read(self.topology_file)
            except ValueError as error:  # the old devices stay until the file is right again
                print(f"topology not taken: {error}", flush=True)
                continue
            if topology.resource != serving.service.topology.resource:
                return
            serving.service.reload(topology)


def register(kubelet: Path, endpoint: str, resource: str, timeout: float = 10) -> None:
    """Registers the plugin socket ``endpoint`` for ``resource`` with the kubelet."""
    with grpc.insecure_channel(f"unix://{kubelet}") as channel:
        api_grpc.RegistrationStub(channel).Register(
            api.RegisterRequest(version=API_VERSION, endpoint=endpoint, resource_name=resource),
            timeout=timeout,
        )


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _version(path: Path) -> tuple[int, int] | None:
    # Topology.write replaces the file: a new inode, even where two writes share an mtime.
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns
