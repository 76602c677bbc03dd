"""Bring-up times and memory of the test cluster: ``python -m harness.benchmarks.cluster``.

Prints figures, asserts nothing. ``--cold`` removes the cached Kubernetes binaries and images
first (a cold bring-up includes the Kubernetes build: about 5-15 minutes on 2 cores).
``--cold-node-image`` (kind) removes only the kind node image and times its build.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from harness import cluster, processes
from harness.benchmarks.memory import owned_memory_mib
from harness.cluster.config import ClusterConfig
from harness.cluster.device_plugin.plugin import ENDPOINT, KUBELET_SOCKET, PLUGIN_DIR
from harness.cluster.kubernetes_build import binaries_dir
from harness.cluster.provider import DEVICE_PLUGIN
from harness.paths import cache_dir, remove_owned, state_dir


def _timed_up(config: ClusterConfig, provider: str | None) -> float:
    started = time.monotonic()
    cluster.up(config, provider)
    return time.monotonic() - started


def _timed_node_image() -> float:
    from harness.cluster.kind_image import NODE_REPOSITORY, ensure_node_image

    subprocess.run(
        ["sh", "-c", f"docker rmi -f $(docker images -q '{NODE_REPOSITORY}')"], capture_output=True
    )
    started = time.monotonic()
    ensure_node_image()
    return time.monotonic() - started


def _timed_registration(config: ClusterConfig, provider: str | None) -> list[tuple[str, float]]:
    """On local-up (the plugin a host process, its sockets in this host's plugin directory): the
    GPU kubelet killed and started again; how long until the plugin's socket was bound after the
    kubelet's, and until the GPUs were allocatable again. Nothing on kind, whose kubelet and
    sockets are inside its node containers (the cluster suite times its restart there)."""
    info = cluster.status(config, provider)
    if info is None or info.gpus != DEVICE_PLUGIN or info.provider != "local-up":
        return []
    processes.kill(state_dir(config.name), f"kubelet-{info.gpu_nodes[0]}")
    started = time.monotonic()
    cluster.up(config, provider)  # starts the lost kubelet, waits for its devices
    back = time.monotonic() - started
    kubelet = (PLUGIN_DIR / KUBELET_SOCKET).stat().st_mtime
    plugin = (PLUGIN_DIR / ENDPOINT).stat().st_mtime
    return [
        ("plugin registered after the kubelet's socket", plugin - kubelet),
        ("GPUs allocatable again after a kubelet kill", back),
    ]


def _node_container_memory_mib(name: str) -> dict[str, float]:
    """kind's node containers (what runs in them is not among the harness's processes)."""
    listing = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"],
        capture_output=True,
        text=True,
    ).stdout
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    found = {}
    for line in listing.splitlines():
        container, usage = line.split(" ", 1)
        node = container.removeprefix(f"{name}-")
        if node != container and (node == "control-plane" or node.startswith("worker")):
            amount = usage.split("/")[0].strip()
            for unit, factor in units.items():
                if amount.endswith(unit):
                    found[f"node container {container}"] = float(amount[: -len(unit)]) * factor
    return found


def main() -> None:
    """Runs the measurements and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="rebuild Kubernetes and images first")
    parser.add_argument("--provider", choices=cluster.PROVIDERS)
    parser.add_argument(
        "--cold-node-image", action="store_true", help="kind: rebuild its node image first"
    )
    args = parser.parse_args()
    # The default name: local-up runs one cluster per host, so a kept test cluster is replaced.
    config = ClusterConfig()
    cluster.down(config, args.provider)
    rows = []
    if args.cold:
        remove_owned(binaries_dir(cache_dir()).parent)
        subprocess.run(
            ["sh", "-c", "docker rmi -f $(docker images -q 'ml-testbed/*')"], capture_output=True
        )
        rows.append(("cold bring-up (Kubernetes build, images)", _timed_up(config, args.provider)))
        cluster.down(config, args.provider)
    if args.cold_node_image:
        rows.append(("kind node image build (base, Kubernetes cached)", _timed_node_image()))
    rows.append(("warm bring-up (all cached)", _timed_up(config, args.provider)))
    rows.append(("reuse of a running cluster", _timed_up(config, args.provider)))
    rows += _timed_registration(config, args.provider)
    memory = owned_memory_mib(state_dir(config.name))
    memory.update(_node_container_memory_mib(config.name))
    started = time.monotonic()
    cluster.down(config, args.provider)
    rows.append(("down", time.monotonic() - started))
    print(f"{'measurement':<45} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:<45} {seconds:>8.1f}")
    print(f"\n{'process':<45} {'PSS MiB':>8}")
    for name, mib in sorted(memory.items()):
        print(f"{name:<45} {mib:>8.0f}")
    print(f"{'total':<45} {sum(memory.values()):>8.0f}")


if __name__ == "__main__":
    main()
