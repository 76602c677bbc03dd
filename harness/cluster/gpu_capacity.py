"""What a node offers of an extended resource (``nvidia.com/gpu``), as its status says.

The harness's device plugin (harness.cluster.gpus) makes the GPU nodes advertise their GPUs; an
earlier harness patched a count into the node status instead, and a watcher put it back after
each kubelet restart. Both are gone: the kubelet's count is now what the plugin registered.
"""

from __future__ import annotations

from kubernetes import client as k8s


def allocatable(api: k8s.CoreV1Api, node: str, resource: str) -> int:
    """What the scheduler may hand out of ``resource`` on ``node`` now."""
    return counts(api, node, resource)[1]


def counts(api: k8s.CoreV1Api, node: str, resource: str) -> tuple[str | None, int]:
    """``node``'s capacity of ``resource`` as its status has it (None: absent) and its
    allocatable count."""
    status = api.read_node(node).status
    capacity = (status.capacity or {}).get(resource)
    return capacity, int((status.allocatable or {}).get(resource, "0"))


def is_ready(node: k8s.V1Node) -> bool:
    """Whether the node's Ready condition is True now."""
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
