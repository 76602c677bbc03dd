"""Named, timed steps and the commands they run, with failures that show the log's tail."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

LOG_TAIL_LINES = 30


class StepFailed(RuntimeError):
    """A harness step failed; the message names the step and shows what went wrong."""


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message holds the end of its output."""


def say(message: str) -> None:
    """Progress for people, on stderr so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Runs a named step, printing its duration; failures are re-raised naming the step."""
    started = time.monotonic()
    say(f"==> {name}")
    try:
        yield
    except StepFailed:
        raise
    except Exception as error:  # every failure inside a step is reported with the step's name
        raise StepFailed(f"step '{name}' failed: {error}") from error
    say(f"    {name}: done in {time.monotonic() - started:.1f} s")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or a note that there is none."""
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in text)


def run(
    command: Sequence[str],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> str:
    """Runs a command to completion; returns its stdout, or raises with the output's tail.

    With ``log``, output is appended there (long builds) and the failure shows the log's tail.
    """
    full_env = {**os.environ, **(env or {})}
    if log is None:
        done = subprocess.run(
            list(command), env=full_env, cwd=cwd, input=input_text, capture_output=True, text=True
        )
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip().splitlines()[-LOG_TAIL_LINES:]
            raise CommandFailed(
                f"{' '.join(command)} exited {done.returncode}:\n" + "\n".join(output)
            )
        return done.stdout
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        done = subprocess.run(
            list(command),
            env=full_env,
            cwd=cwd,
            input=input_text,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    if done.returncode != 0:
        raise CommandFailed(
            f"{' '.join(command)} exited {done.returncode}; end of {log}:\n{tail(log)}"
        )
    return ""
