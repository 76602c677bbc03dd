"""Memory of the processes the harness owns, read from /proc."""

from __future__ import annotations

from pathlib import Path

from harness import processes


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` and its children in KiB (0 when unreadable)."""
    total = 0
    for member in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    try:
        direct = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return children
    for child in map(int, direct):
        children += [child, *_descendants(child)]
    return children


def owned_memory_mib(state: Path) -> dict[str, float]:
    """MiB of PSS per process the harness started for ``state`` (with their children)."""
    figures = {}
    for name in processes.names(state):
        pid = processes.running_pid(state, name)
        if pid is not None:
            figures[name] = pss_kib(pid) / 1024
    return figures
