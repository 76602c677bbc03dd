"""Host processes the harness owns: started in their own session, tracked by pid files.

A pid file holds the pid and the process's start time, so a recycled pid is never mistaken for
ours after a crash; ``stop`` signals the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness import waiting
from harness.paths import private_dir
from harness.steps import tail


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        # Field 22 of /proc/PID/stat (after the parenthesised command name).
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def start(
    name: str,
    argv: Sequence[str],
    *,
    state: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Starts ``argv`` in the background, logging to ``state/logs/NAME.log``; returns its pid."""
    private_dir(state / "logs")
    private_dir(state / "pids")
    with (state / "logs" / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    (state / "pids" / f"{name}.pid").write_text(f"{process.pid} {start_time(process.pid)}\n")
    return process.pid


def log_path(state: Path, name: str) -> Path:
    """Where the process ``name`` logs."""
    return state / "logs" / f"{name}.log"


def running_pid(state: Path, name: str) -> int | None:
    """The pid of our process ``name`` if it is still alive."""
    pidfile = state / "pids" / f"{name}.pid"
    try:
        pid_text, started = pidfile.read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    return pid if start_time(pid) == started else None


def stop(
    state: Path, name: str, timeout: float = 15, first: signal.Signals = signal.SIGTERM
) -> None:
    """Stops our process ``name`` and its process group: ``first`` (SIGTERM), then SIGKILL."""
    pid = running_pid(state, name)
    if pid is not None:
        for sig in (first, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break

            def gone() -> bool:
                _reap(pid)
                return running_pid(state, name) is None

            if waiting.waited(gone, timeout=timeout, interval=0.1):
                break
    (state / "pids" / f"{name}.pid").unlink(missing_ok=True)


def kill(state: Path, name: str) -> None:
    """SIGKILL at once to our process ``name`` and its group, as a crash or power loss would."""
    pid = running_pid(state, name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        waiting.waited(lambda: _state(pid) in (None, "Z"), timeout=5, interval=0.05)
        _reap(pid)
    (state / "pids" / f"{name}.pid").unlink(missing_ok=True)


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z for a zombie, ...), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _reap(pid: int) -> None:
    # A child of this process stays a zombie (and "running") until waited for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def names(state: Path) -> list[str]:
    """The processes that have pid files in ``state``."""
    return sorted(p.stem for p in (state / "pids").glob("*.pid"))


def wait_until(
    check: Callable[[], bool], *, state: Path, name: str | Sequence[str], timeout: float
) -> None:
    """Waits for ``check`` while our processes ``name`` live; fails with the culprit's log tail."""
    watched = [name] if isinstance(name, str) else list(name)

    def ready() -> bool:
        if check():
            return True
        dead = [each for each in watched if running_pid(state, each) is None]
        if dead:
            raise RuntimeError(
                f"{dead[0]} exited; end of its log:\n{tail(log_path(state, dead[0]))}"
            )
        return False

    waiting.wait_until(
        ready,
        timeout=timeout,
        timed_out=lambda: (
            f"{watched[0]} not ready after {timeout:.0f} s; end of its log:\n"
            f"{tail(log_path(state, watched[0]))}"
        ),
        error=RuntimeError,
    )
