"""What of a stack is still there: containers, pod containers, processes, folders.

``down`` must leave none of it, also after the harness was killed (``kill -9``) at any point;
the cleanup test and the reliability benchmark both ask this module.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import scratch, services
from harness.cluster.kind import node_containers
from harness.cluster.local_up_nodes import GPU_RUNTIME_DIR, HOST_DOCKER
from harness.paths import state_dir, state_root


@dataclass
class Leftovers:
    """Everything found; empty lists mean a clean host."""

    containers: list[str] = field(default_factory=list)
    pod_containers: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.containers, self.pod_containers, self.processes, self.folders))

    def describe(self) -> str:
        """One line per kind of leftover, or "nothing left"."""
        kinds = {
            "containers": self.containers,
            "pod containers": self.pod_containers,
            "processes": self.processes,
            "folders": self.folders,
        }
        lines = [f"{kind}: {', '.join(items)}" for kind, items in kinds.items() if items]
        return "\n".join(lines) or "nothing left"


def _pod_containers() -> list[str]:
    """Containers dockershim made for pods on the host's daemon (a local-up CPU node's)."""
    listed = subprocess.run(
        [
            *("docker", "-H", HOST_DOCKER, "ps", "-a", "--format", "{{.Names}}"),
            *("--filter", "label=io.kubernetes.docker.type"),
        ],
        capture_output=True,
        text=True,
    )
    return listed.stdout.split() if listed.returncode == 0 else []


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _our_processes() -> list[str]:
    """Processes whose command line, AIRFLOW_HOME or output points into the harness's folders.

    Every process ``harness.processes`` starts writes to a log in the state folder; the output
    link is the one mark setproctitle (Airflow's api-server) does not overwrite.
    """
    marks = (str(state_root()), str(GPU_RUNTIME_DIR))
    found, skip = [], _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        home = next((v for v in environ if v.startswith(b"AIRFLOW_HOME=")), b"").decode()
        output = _output(entry)
        if command and any(mark in f"{command} {home} {output}" for mark in marks):
            found.append(f"{entry.name} {command[:120]}")
    return found


def _output(process: Path) -> str:
    try:
        return os.readlink(process / "fd" / "1")
    except OSError:
        return ""


def find(stack: str) -> Leftovers:
    """What of stack ``stack`` (and of any harness process) is left on this host."""
    folders = [str(path) for path in scratch.leftovers()]
    if state_dir(stack).exists():
        folders.insert(0, str(state_dir(stack)))
    return Leftovers(
        containers=[
            *(container.name for container in services.containers.find(stack)),
            *node_containers(stack),
        ],
        pod_containers=_pod_containers(),
        processes=_our_processes(),
        folders=folders,
    )
