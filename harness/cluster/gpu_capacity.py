"""The simulated GPU: an extended resource on the GPU nodes' status, kept there.

Without NVIDIA's device plugin nothing advertises ``nvidia.com/gpu``; patching the node status
makes the scheduler account for it exactly as for real GPUs. A kubelet restart may zero it again
(upstream documents this), so ``python -m harness.cluster.gpu_capacity`` watches the nodes and
re-applies it when a node comes back Ready; the provider runs that as one of its processes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from harness.waiting import wait_until


def _escaped(resource: str) -> str:
    # JSON-patch paths escape "/" as "~1".
    return resource.replace("~", "~0").replace("/", "~1")


def patch_capacity(api: k8s.CoreV1Api, node: str, resource: str, count: int) -> None:
    """Sets ``resource`` capacity ``count`` in ``node``'s status."""
    patch = [{"op": "add", "path": f"/status/capacity/{_escaped(resource)}", "value": str(count)}]
    api.patch_node_status(node, patch)


def allocatable(api: k8s.CoreV1Api, node: str, resource: str) -> int:
    """What the scheduler may hand out of ``resource`` on ``node`` now."""
    return counts(api, node, resource)[1]


def counts(api: k8s.CoreV1Api, node: str, resource: str) -> tuple[str | None, int]:
    """``node``'s capacity of ``resource`` as its status has it (None: absent) and its
    allocatable count."""
    status = api.read_node(node).status
    capacity = (status.capacity or {}).get(resource)
    return capacity, int((status.allocatable or {}).get(resource, "0"))


def ensure_capacity(
    api: k8s.CoreV1Api, nodes: Iterable[str], resource: str, count: int, timeout: float = 60
) -> None:
    """Patches every node and waits until allocatable shows it (the kubelet's next update)."""
    nodes = list(nodes)
    for node in nodes:
        patch_capacity(api, node, resource, count)

    def shown() -> bool:
        return all(allocatable(api, node, resource) == count for node in nodes)

    def seen() -> str:
        found = {
            node: dict(zip(("capacity", "allocatable"), counts(api, node, resource), strict=True))
            for node in nodes
        }
        return f"{resource} is {found}, expected {count} allocatable on each"

    wait_until(shown, timeout=timeout, interval=1, timed_out=seen, error=RuntimeError)


def lacks_capacity(capacity: str | None) -> bool:
    """Whether a node's capacity is missing or zeroed (a new node, or a kubelet that restarted),
    as opposed to a count someone set: the stack's, or another a replay holds for its length."""
    return capacity in (None, "0")


def give_missing_capacity(
    api: k8s.CoreV1Api, nodes: Iterable[str], resource: str, count: int
) -> None:
    """``count`` on each of ``nodes`` that lacks a capacity (see ``lacks_capacity``); a count
    already there stays."""
    missing = [node for node in nodes if lacks_capacity(counts(api, node, resource)[0])]
    if missing:
        ensure_capacity(api, missing, resource, count)


def is_ready(node: k8s.V1Node) -> bool:
    """Whether the node's Ready condition is True now."""
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def keep_capacity(kubeconfig: str, nodes: list[str], resource: str, count: int) -> None:
    """Forever: re-applies the capacity whenever one of ``nodes`` is Ready without any."""
    api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=kubeconfig))
    while True:
        try:
            for event in watch.Watch().stream(api.list_node, timeout_seconds=300):
                node = event["object"]
                name = node.metadata.name
                have = (node.status.capacity or {}).get(resource)
                # Only a missing or zeroed value is put back: a test may set another on purpose.
                if name in nodes and is_ready(node) and lacks_capacity(have):
                    patch_capacity(api, name, resource, count)
                    print(f"re-applied {resource}={count} on {name} (had {have})", flush=True)
        except (ApiException, OSError) as error:
            # The apiserver restarting is no reason to stop; try again shortly.
            print(f"watch interrupted: {error}", flush=True)
            time.sleep(2)


def main() -> None:
    """``python -m harness.cluster.gpu_capacity --kubeconfig K --resource R --count N NODE...``"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--resource", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    keep_capacity(args.kubeconfig, args.nodes, args.resource, args.count)


if __name__ == "__main__":
    main()
