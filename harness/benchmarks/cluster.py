"""Bring-up times and memory of the test cluster: ``python -m harness.benchmarks.cluster``.

Prints figures, asserts nothing. ``--cold`` removes the cached Kubernetes binaries and images
first (a cold bring-up includes the Kubernetes build: about 10-15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import subprocess
import time

from harness import cluster
from harness.benchmarks.memory import owned_memory_mib
from harness.cluster.config import ClusterConfig
from harness.cluster.kubernetes_build import binaries_dir
from harness.paths import cache_dir, remove_owned, state_dir


def _timed_up(config: ClusterConfig, provider: str | None) -> float:
    started = time.monotonic()
    cluster.up(config, provider)
    return time.monotonic() - started


def main() -> None:
    """Runs the measurements and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="rebuild Kubernetes and images first")
    parser.add_argument("--provider", choices=cluster.PROVIDERS)
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
    rows.append(("warm bring-up (all cached)", _timed_up(config, args.provider)))
    rows.append(("reuse of a running cluster", _timed_up(config, args.provider)))
    memory = owned_memory_mib(state_dir(config.name))
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
