"""Wall time of scenario replays on a warm stack: ``python -m harness.benchmarks.scenarios``.

Prints figures, asserts nothing. Brings the stack up (or reuses it) first, so every figure is
warm; then one scenario, the whole suite serially, and the whole suite on two pytest-xdist
workers, each as the pytest command people run. The stack is left as it was found.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from harness.pipeline_settings import REPO_ROOT
from harness.stack import Stack


def timed_pytest(arguments: list[str]) -> tuple[float, str]:
    """Seconds a ``pytest tests/scenarios ARGUMENTS`` run took, and its closing line."""
    started = time.monotonic()
    pytest = [sys.executable, "-m", "pytest", "tests/scenarios", "-p", "no:cacheprovider", "-q"]
    done = subprocess.run(
        [*pytest, *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, "ML_TESTBED_KEEP": "1"},
        capture_output=True,
        text=True,
    )
    closing = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return time.monotonic() - started, closing


def main() -> None:
    """Warm-up, then the three measurements as a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", default="happy_path", help="the single scenario to time")
    args = parser.parse_args()
    stack = Stack()
    was_running = stack.is_running()
    started = time.monotonic()
    stack.up()
    print(f"{'stack up (or reused)':<44} {time.monotonic() - started:8.1f} s")
    cases = {
        f"one scenario ({args.one})": ["-k", args.one, "-n", "0"],
        "full suite, serial": ["-n", "0"],
        "full suite, -n 2": ["-n", "2"],
    }
    for label, arguments in cases.items():
        seconds, closing = timed_pytest(arguments)
        print(f"{label:<44} {seconds:8.1f} s   {closing}")
    if not was_running:
        stack.down()


if __name__ == "__main__":
    main()
