"""The stack's images, built in a process of their own beside the cluster's creation.

On a new machine the cluster's creation spends about 9 minutes compiling Kubernetes, which needs
no image, while the images wait behind it: a debootstrap, then apt and pip installs, mostly
downloads and unpacking rather than compiling. Started beside the creation they are mostly built
when it ends. The images' build lock (``images.one_build_at_a_time``) keeps the creation's own
``ensure_images`` from building them twice: it waits for the lock, then finds them built.

``python -m harness.head_start PARENT_PID`` is that process. It stops itself (and the builds it
started) when its parent is gone, so that a ``kill -9`` of the harness leaves no build running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from harness.paths import cache_dir
from harness.steps import say, step

STOP_TIMEOUT_S = 15
PARENT_POLL_S = 1.0


def log_path(stack_name: str) -> Path:
    """Where the images built beside ``stack_name``'s cluster log (the builds' own logs are
    beside it)."""
    return cache_dir() / "logs" / f"images-beside-{stack_name}.log"


@contextmanager
def images_beside_creation(stack_name: str) -> Iterator[None]:
    """Builds the cluster's and the services' images beside the ``with`` body (the creation of
    ``stack_name``'s cluster). A failure there is only a warning: the images are then built in
    order, after it, where their error stops the bring-up."""
    command = [sys.executable, "-m", "harness.head_start", str(os.getpid())]
    log = log_path(stack_name)
    with running_beside(command, log) as finished:
        yield
        code = finished()
    if code != 0:
        say(
            f"    warning: building the images beside the cluster failed (exit {code}, log "
            f"{log}); they are built in order now"
        )


@contextmanager
def running_beside(command: Sequence[str], log: Path) -> Iterator[Callable[[], int]]:
    """Runs ``command`` in its own process group, output to ``log``, beside the ``with`` body.

    Yields a function that waits for the command and returns its exit code. When the body
    raises (Ctrl-C too, also while it waits), the command's whole group is stopped before the
    error goes on.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(command),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def finished() -> int:
        if process.poll() is None:
            with step("images built beside the cluster"):
                process.wait()
        return process.returncode

    try:
        say(f"    building the images beside it (pid {process.pid}, log {log})")
        yield finished
    except BaseException:
        stop_group(process)
        raise


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to ``process``'s group; once ``process`` has cleaned up and exited (at most
    STOP_TIMEOUT_S), SIGKILL to what is left of the group; reaps ``process``."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop_when_orphaned(parent: int) -> None:
    """A daemon thread that stops this process's group once ``parent`` is no longer its parent
    (it died: the process was handed to init or a subreaper): SIGTERM, and SIGKILL after
    STOP_TIMEOUT_S if the cleanup hangs."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.killpg(0, signal.SIGTERM)
        time.sleep(STOP_TIMEOUT_S)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit runs the finally blocks: scratch folders removed, builds' clients killed.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    """Builds every image the stack needs; the parent's pid is the one argument."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    stop_when_orphaned(int(argv[0]))
    # Imported here: the parent imports this module only for the context manager above.
    from harness.cluster.images import ensure_images
    from harness.pipeline_settings import REPO_ROOT
    from harness.services.image import ensure_services_image

    ensure_images(REPO_ROOT)
    ensure_services_image()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
