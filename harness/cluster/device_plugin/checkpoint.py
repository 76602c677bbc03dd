"""Which pod holds which device, as the kubelet's device manager keeps it.

The kubelet writes its allocations to ``kubelet_internal_checkpoint`` in the device-plugin
directory (JSON: ``Data.PodDeviceEntries``, one entry per pod, container and resource). An entry
lasts while its pod is active on the node; that is what DCGM's exporter and ``nvidia-smi``-less
tools read too.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.cluster.device_plugin.plugin import PLUGIN_DIR

CHECKPOINT = PLUGIN_DIR / "kubelet_internal_checkpoint"


def devices_by_pod(resource: str, path: Path = CHECKPOINT) -> dict[str, list[str]]:
    """Pod UID -> the ids of the ``resource`` devices its containers hold ({} without a file)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}  # not written yet
    return devices_in(text, resource)


def devices_in(text: str, resource: str) -> dict[str, list[str]]:
    """Pod UID -> the ids of the ``resource`` devices, from a checkpoint's text ({} if it is
    caught mid-write or empty: the next read has it)."""
    try:
        entries = json.loads(text)["Data"]["PodDeviceEntries"] or []
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}
    held: dict[str, list[str]] = {}
    for entry in entries:
        if entry.get("ResourceName") != resource:
            continue
        ids = entry.get("DeviceIDs") or []
        # 1.20 keeps them per NUMA node ({"0": [...]}); older kubelets as one list.
        found = [i for group in ids.values() for i in group] if isinstance(ids, dict) else ids
        held.setdefault(entry["PodUID"], []).extend(found)
    return held
