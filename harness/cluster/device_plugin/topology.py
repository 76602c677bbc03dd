"""The simulated GPUs of one node as data: which devices there are, under which resource, and
which are healthy. The harness writes it; the device plugin serves it to the kubelet.

Devices have stable UUIDs (derived from the node's name and the GPU's index), as a real node's do
across reboots. Time-slicing (``replicas`` > 1) advertises each GPU that many times, as NVIDIA's
plugin does (``GPU-...::0``, ``GPU-...::1``); a container given a replica sees the GPU's UUID.
A MIG-style resource (``nvidia.com/mig-1g.10gb``) advertises ``MIG-...`` devices.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
GPU_RESOURCE = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"
# The MIG profiles the harness partitions its GPUs into (an A100 40GB's smallest and its half).
MIG_RESOURCES = ("nvidia.com/mig-1g.5gb", "nvidia.com/mig-3g.20gb")
# Any fixed namespace: the same node and index give the same UUID on every machine.
_UUID_NAMESPACE = uuid.UUID("5f1d3a52-6c1e-4a39-9d0e-7a4f6b2c8e11")


@dataclass(frozen=True)
class Device:
    """One device the kubelet may hand out: ``id`` (at most 63 characters), its health, and the
    GPU a container given it sees (``visible``: a UUID for NVIDIA_VISIBLE_DEVICES)."""

    id: str
    health: str
    visible: str


@dataclass(frozen=True)
class Topology:
    """The devices of ``resource`` on one node."""

    resource: str
    devices: tuple[Device, ...]

    def healthy(self) -> list[Device]:
        """The devices the kubelet may allocate now."""
        return [device for device in self.devices if device.health == HEALTHY]

    def with_health(self, ids: set[str], health: str) -> Topology:
        """The same devices with ``ids`` (device ids or the UUIDs they show) set to ``health``."""
        unknown = ids - {d.id for d in self.devices} - {d.visible for d in self.devices}
        if unknown:
            raise ValueError(f"no such device on this node: {', '.join(sorted(unknown))}")
        devices = tuple(
            Device(d.id, health, d.visible) if {d.id, d.visible} & ids else d for d in self.devices
        )
        return Topology(self.resource, devices)

    def write(self, path: Path) -> None:
        """Replaces ``path`` whole (a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        body = {"resource": self.resource, "devices": [asdict(d) for d in self.devices]}
        partial.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(partial, path)

    @classmethod
    def read(cls, path: Path) -> Topology:
        """The topology in ``path``; ValueError naming the file and what is wrong."""
        try:
            body = json.loads(path.read_text())
            devices = tuple(Device(d["id"], d["health"], d["visible"]) for d in body["devices"])
            topology = cls(str(body["resource"]), devices)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a device topology ({error!r})") from error
        bad = [d.id for d in devices if d.health not in (HEALTHY, UNHEALTHY) or len(d.id) > 63]
        if bad:
            raise ValueError(f"{path}: devices {bad}: health must be {HEALTHY} or {UNHEALTHY}")
        return topology


def gpu_uuid(node: str, index: int) -> str:
    """The stable UUID of GPU ``index`` on ``node``, in nvidia-smi's form."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node}/{index}')}"


def simulated(node: str, count: int, resource: str = GPU_RESOURCE, replicas: int = 1) -> Topology:
    """``count`` healthy GPUs on ``node``: whole GPUs, ``replicas`` time-slices of each, or
    MIG instances where ``resource`` is a MIG profile."""
    if count < 0 or replicas < 1:
        raise ValueError(f"count must be 0 or more and replicas 1 or more, got {count}, {replicas}")
    uuids = [gpu_uuid(node, index) for index in range(count)]
    if resource.startswith(MIG_PREFIX):
        devices = [Device(f"MIG-{u[len('GPU-') :]}", HEALTHY, f"MIG-{u[4:]}") for u in uuids]
    elif replicas > 1:
        devices = [Device(f"{u}::{r}", HEALTHY, u) for u in uuids for r in range(replicas)]
    else:
        devices = [Device(u, HEALTHY, u) for u in uuids]
    return Topology(resource, tuple(devices))
