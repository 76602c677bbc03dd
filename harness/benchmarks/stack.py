"""Bring-up time per component and memory at rest of the whole stack:
``python -m harness.benchmarks.stack``. Prints figures, asserts nothing.

Measures a warm start (binaries and images cached, nothing running), then a reuse.
"""

from __future__ import annotations

import subprocess
import time

from harness.benchmarks.memory import owned_memory_mib
from harness.services.config import LABEL_STACK
from harness.stack import Stack


def container_memory_mib(stack: str) -> dict[str, float]:
    """Memory use of the stack's containers, from ``docker stats``."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label={LABEL_STACK}={stack}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if not ids:
        return {}
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *ids],
        capture_output=True,
        text=True,
    ).stdout
    figures = {}
    for line in stats.splitlines():
        name, usage = line.split(" ", 1)
        amount = usage.split("/")[0].strip()
        scale = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
        unit = next(u for u in scale if amount.endswith(u))
        figures[name] = float(amount.removesuffix(unit)) * scale[unit]
    return figures


def main() -> None:
    """Down, warm up, reuse; then the memory table."""
    stack = Stack()
    stack.down()
    started = time.monotonic()
    running = stack.up()
    total = time.monotonic() - started
    started = time.monotonic()
    stack.up()
    reuse = time.monotonic() - started
    time.sleep(10)  # at rest: after start-up work has settled
    print(f"{'bring-up (warm)':<40} {'seconds':>8}")
    for part, seconds in running.timings.items():
        print(f"  {part:<38} {seconds:>8.1f}")
    print(f"  {'whole stack':<38} {total:>8.1f}")
    print(f"  {'reuse of a running stack':<38} {reuse:>8.1f}")
    memory = {**owned_memory_mib(stack.state), **container_memory_mib(stack.config.name)}
    print(f"\n{'memory at rest':<40} {'MiB':>8}")
    for name, mib in sorted(memory.items()):
        print(f"  {name:<38} {mib:>8.0f}")
    print(f"  {'total':<38} {sum(memory.values()):>8.0f}")
    stack.down()


if __name__ == "__main__":
    main()
