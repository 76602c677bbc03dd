"""The container engine under the local clusters: the host's Docker daemon and its CLI.

``ensure_docker`` makes a daemon answer (installing and starting one where the host allows);
the helpers run the docker CLI against it or against another node's daemon (``host``).
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness.host import apt_install, can_install_packages
from harness.paths import cache_dir
from harness.steps import LOG_TAIL_LINES, CommandFailed, run, say, tail
from harness.waiting import wait_until

DOCKER_PACKAGES = ["docker.io", "containerd", "runc", "iptables"]
# dockerd's default pid file: a live pid there means a daemon is starting, not missing.
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
DOCKERD_READY_TIMEOUT_S = 60
# A privileged container (kind's nodes) asks for every capability, CAP_SYS_RESOURCE among them;
# where the host does not grant it, the daemon the harness starts runs this wrapper around runc
# as its default runtime (it drops that one capability, and changes nothing else).
CAP_SYS_RESOURCE = 24
RUNTIME_NAME = "ml-testbed-runc"
RUNTIME_WRAPPER = Path(__file__).with_name("kind_node") / "runc-without-sys-resource"


class NoContainerEngine(RuntimeError):
    """No Docker daemon answers and this host cannot get one (not root on Debian/Ubuntu)."""


def dockerd_log() -> Path:
    """Where the daemon started by ``ensure_docker`` logs (it outlives every cluster)."""
    return cache_dir() / "dockerd.log"


def docker_answers(host: str | None = None) -> bool:
    """Whether a Docker daemon answers ``docker info`` (at ``host``, else the default one)."""
    command = ["docker", *(["-H", host] if host else []), "info"]
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def ensure_docker(timeout: float = DOCKERD_READY_TIMEOUT_S) -> None:
    """Makes the host's Docker daemon answer; installs and starts it where the host allows.

    Raises NoContainerEngine where no daemon answers and packages cannot be installed.
    """
    if docker_answers():
        return
    if not can_install_packages():
        raise NoContainerEngine(
            "no Docker daemon answers `docker info` and this host cannot install one (that needs "
            "root on Debian or Ubuntu); install and start Docker (Docker Engine or Debian's "
            "docker.io), make `docker info` work for this user, then run again"
        )
    # jq: the runc wrapper's (see RUNTIME_WRAPPER), where the daemon gets it.
    wrapper_needs = [] if grants_sys_resource() else ["jq"]
    apt_install([*DOCKER_PACKAGES, *wrapper_needs], why="the container engine (Docker)")
    pid = _running_dockerd_pid() or _start_dockerd(dockerd_log())
    _wait_for_dockerd(pid, dockerd_log(), timeout)


def grants_sys_resource(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this host lets a process hold CAP_SYS_RESOURCE (its bounding set has it)."""
    for line in status.read_text().splitlines():
        if line.startswith("CapBnd:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return True


def installed_runtime_wrapper() -> Path:
    """The runc wrapper where a daemon can run it for as long as it lives: the cache (a clone of
    the repository may be gone before the daemon is)."""
    target = cache_dir() / "bin" / RUNTIME_WRAPPER.name
    content = RUNTIME_WRAPPER.read_bytes()
    if not target.is_file() or target.read_bytes() != content:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_bytes(content)
        partial.chmod(0o755)
        partial.rename(target)  # atomic: a daemon never runs a half-written wrapper
    return target


def privileged_containers_work() -> tuple[bool, str]:
    """Whether the Docker daemon can run a ``--privileged`` container here, and why not."""
    if grants_sys_resource():
        return True, "this host grants every capability a privileged container asks for"
    found = subprocess.run(
        ["docker", "info", "--format", "{{.DefaultRuntime}}"], capture_output=True, text=True
    )
    if found.stdout.strip() == RUNTIME_NAME:
        return True, f"the Docker daemon's default runtime is {RUNTIME_NAME} (no CAP_SYS_RESOURCE)"
    return False, (
        "this host does not grant CAP_SYS_RESOURCE, which a privileged container (a kind node) "
        f"asks for, and the running Docker daemon's default runtime is "
        f"{found.stdout.strip() or 'unknown'}, so `docker run --privileged` fails here. Stop "
        "that daemon and let the harness start one (it registers "
        f"{RUNTIME_WRAPPER.relative_to(RUNTIME_WRAPPER.parents[3])} as runtime {RUNTIME_NAME}), "
        f"or start dockerd with --add-runtime={RUNTIME_NAME}=PATH-TO-THAT-FILE "
        f"--default-runtime={RUNTIME_NAME}"
    )


def _dockerd_arguments() -> list[str]:
    arguments = ["dockerd"]
    if not grants_sys_resource():
        wrapper = installed_runtime_wrapper()
        arguments += [
            f"--add-runtime={RUNTIME_NAME}={wrapper}",
            f"--default-runtime={RUNTIME_NAME}",
        ]
    # Containers must never ask for more open files than this host's hard limit: without
    # CAP_SYS_RESOURCE runc fails with "can't get final child's PID from pipe: EOF".
    # (dockerd's own negative oom_score_adj is refused here too; it skips that silently.)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        arguments.append(f"--default-ulimit=nofile={min(soft, hard)}:{hard}")
    return arguments


def _start_dockerd(log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"    starting dockerd (log: {log})")
    with log.open("ab") as sink:
        # A session of its own: the daemon outlives this process and its terminal.
        daemon = subprocess.Popen(
            _dockerd_arguments(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return daemon.pid


def _running_dockerd_pid() -> int | None:
    try:
        pid = int(DOCKERD_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _wait_for_dockerd(pid: int, log: Path, timeout: float) -> None:
    def answers() -> bool:
        if docker_answers():
            return True
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            raise RuntimeError(
                f"dockerd (pid {pid}) exited while starting; end of {log}:\n{tail(log)}"
            )
        return False

    wait_until(
        answers,
        timeout=timeout,
        timed_out=lambda: (
            f"dockerd (pid {pid}) did not answer `docker info` within {timeout:.0f} s; it is "
            f"left running. End of {log}:\n{tail(log)}"
        ),
        error=RuntimeError,
    )


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def docker(*args: str, host: str | None = None) -> str:
    """Runs the docker CLI (against ``host``, e.g. ``unix:///run/x.sock``); returns its stdout.

    Raises CommandFailed with the end of its stderr.
    """
    return run(["docker", *(["-H", host] if host else []), *args])


def image_id(name: str, host: str | None = None) -> str | None:
    """The id (``sha256:...``) of the image ``name`` in that daemon, or None without it."""
    command = ["docker", *(["-H", host] if host else []), "image", "inspect", "-f", "{{.Id}}", name]
    found = subprocess.run(command, capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def image_exists(name: str, host: str | None = None) -> bool:
    """Whether the daemon (at ``host``, else the default one) has the image ``name``."""
    return image_id(name, host) is not None


def transfer_image(name: str, to_host: str) -> None:
    """Copies the image ``name`` from the default daemon into the one at ``to_host``.

    Nothing is copied when the target already has that exact image id under that name; a target
    that has the id under another name only gets the tag.
    """
    source_id = image_id(name)
    if source_id is None:
        raise RuntimeError(f"cannot copy image {name!r} to {to_host}: the local daemon lacks it")
    if image_id(name, to_host) == source_id:
        return
    if image_exists(source_id, to_host):
        docker("tag", source_id, name, host=to_host)
        return
    started = time.monotonic()
    pipe(["docker", "save", name], ["docker", "-H", to_host, "load"])
    say(f"    copied {name} to {to_host} in {time.monotonic() - started:.1f} s")


def keep_only(names: Sequence[str], host: str) -> int:
    """Removes every image of the daemon at ``host`` but ``names`` (one the harness owns whole,
    such as the GPU node's: older builds only fill the disk); returns how many went. An image
    a container still uses stays."""
    keep = {image_id(name, host) for name in names}
    listed = docker("images", "-a", "-q", "--no-trunc", host=host).split()
    removed = 0
    for image in dict.fromkeys(listed):
        if image not in keep:
            gone = subprocess.run(["docker", "-H", host, "rmi", image], capture_output=True)
            removed += gone.returncode == 0
    return removed


def pipe(producer: Sequence[str], consumer: Sequence[str]) -> str:
    """Runs ``producer | consumer``; returns the consumer's stdout, raises if either fails."""
    # The producer's stderr goes to a file: a pipe nobody reads could fill up and stall it.
    with tempfile.TemporaryFile() as producer_errors:
        with subprocess.Popen(
            list(producer), stdout=subprocess.PIPE, stderr=producer_errors
        ) as source:
            assert source.stdout is not None  # stdout=PIPE above
            done = subprocess.run(
                list(consumer), stdin=source.stdout, capture_output=True, text=True
            )
            source.stdout.close()
        producer_errors.seek(0)
        producer_stderr = producer_errors.read().decode(errors="replace")
    if source.returncode == 0 and done.returncode == 0:
        return done.stdout
    # Both sides: one side failing often makes the other fail too (broken pipe, short input).
    report = ["a pipe of two commands failed:"]
    for command, code, stderr in (
        (producer, source.returncode, producer_stderr),
        (consumer, done.returncode, done.stderr),
    ):
        report.append(f"  `{' '.join(command)}` exited {code}:")
        report.extend(stderr.strip().splitlines()[-LOG_TAIL_LINES:])
    raise CommandFailed("\n".join(report))
