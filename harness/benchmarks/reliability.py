"""The scenario suite N times in a row: ``python -m harness.benchmarks.reliability --runs 10``.

Prints figures, asserts nothing. Each run is the suite as CI runs it (``pytest tests/scenarios``
on pytest-xdist workers), starting from a stopped stack, so every run also brings the stack up
and takes it down. After each run it counts what is left of the stack (containers, pod
containers, processes, folders: the target is none) and samples the host's memory in use while
the run goes. At the end: failures per scenario over all runs (the target is 0) and the table.

Each run is appended to the record as soon as it ends (with the commit it ran on and the
machine's cores and memory), and the table covers every run recorded there, so runs split over
several invocations (a suite run takes 13 to 28 min on 2 cores) add up; ``--summary`` prints the
table without running, ``--fresh`` starts a new record. The project's record,
``docs/reliability/runs.jsonl``, is tracked in git: sessions rarely get the same machine twice,
so a record on the machine alone would never reach ten runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import leftovers
from harness.pipeline_settings import REPO_ROOT
from harness.stack import Stack


@dataclass
class RunFigures:
    """One run of the suite."""

    seconds: float
    passed: int
    failed: list[str]
    leftovers: leftovers.Leftovers
    peak_memory_mib: float
    exit_code: int
    tests: list[str] = field(default_factory=list)
    commit: str = ""
    date: str = ""
    host: str = ""

    def to_json(self) -> str:
        """One line of the record."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> RunFigures:
        """A run from its line in the record."""
        fields = json.loads(line)
        fields["leftovers"] = leftovers.Leftovers(**fields["leftovers"])
        return cls(**fields)


RECORD_FOLDER = "docs/reliability"
RECORD = REPO_ROOT / RECORD_FOLDER / "runs.jsonl"


def _host() -> str:
    """The machine a run ran on, in the figures that bound it: cores and memory."""
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} cores, {memory_kib / 2**20:.0f} GiB"


def _commit() -> str:
    """The last commit of the code, with "+changes" when the tree differs from it.

    The record's own folder is left out of both: the runs it holds are not code a run ran, so
    committing the record between runs does not change what the next run says it ran.
    """
    code = ["--", ".", f":!{RECORD_FOLDER}"]
    head = subprocess.run(
        ["git", "log", "-1", "--format=%h", *code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", *code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    commit = head.stdout.strip() or "unknown"
    return commit + ("+changes" if dirty.stdout.strip() else "")


def read_record(record: Path) -> list[RunFigures]:
    """The runs recorded so far; a line that cannot be read is an error naming the file."""
    if not record.exists():
        return []
    runs = []
    for number, line in enumerate(record.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            runs.append(RunFigures.from_json(line))
        except (ValueError, TypeError, KeyError) as error:
            raise SystemExit(
                f"{record}:{number}: not a recorded run ({error}); remove the line or start "
                "a new record with --fresh"
            ) from error
    return runs


def _memory_in_use_mib() -> float:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024


class _PeakMemory:
    """The most memory in use on the host while the block runs (sampled every second)."""

    def __init__(self) -> None:
        self.peak = _memory_in_use_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.peak = max(self.peak, _memory_in_use_mib())

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _results(junit: Path) -> tuple[list[str], list[str]]:
    """Names of the passed and the failed (or errored) tests in a JUnit XML report."""
    passed, failed = [], []
    if not junit.exists():
        return passed, failed
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is None:
            passed.append(name)
    return passed, failed


def run_suite(workers: int, junit: Path, selection: list[str]) -> RunFigures:
    """One suite run from a stopped stack; what it left behind afterwards.

    The commit and date are the run's start: a commit made while it runs is not what it ran.
    """
    command = [sys.executable, "-m", "pytest", "tests/scenarios", "-p", "no:cacheprovider", "-q"]
    command += ["-n", str(workers), f"--junitxml={junit}", *selection]
    env = {key: value for key, value in os.environ.items() if key != "ML_TESTBED_KEEP"}
    commit, date = _commit(), time.strftime("%Y-%m-%d %H:%M")
    started = time.monotonic()
    with _PeakMemory() as memory:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    passed, failed = _results(junit)
    return RunFigures(
        seconds=time.monotonic() - started,
        passed=len(passed),
        failed=failed,
        leftovers=leftovers.find(Stack().config.name),
        peak_memory_mib=memory.peak,
        exit_code=done.returncode,
        tests=passed + failed,
        commit=commit,
        date=date,
        host=_host(),
    )


def print_table(runs: list[RunFigures]) -> None:
    """The runs, then failures per test over all of them."""
    print(
        f"{'run':>4}  {'date':<17}{'commit':<18}{'host':<18}{'seconds':>8}{'passed':>8}"
        f"{'failed':>8}{'left':>6}{'peak MiB':>10}  failed"
    )
    for number, run in enumerate(runs, 1):
        left = run.leftovers
        count = sum(map(len, (left.containers, left.pod_containers, left.processes, left.folders)))
        print(
            f"{number:>4}  {run.date:<17}{run.commit:<18}{run.host or '?':<18}"
            f"{run.seconds:>8.0f}{run.passed:>8}{len(run.failed):>8}{count:>6}"
            f"{run.peak_memory_mib:>10.0f}  {', '.join(run.failed) or '-'}"
        )
        if left:
            print("      left: " + left.describe().replace("\n", "\n            "))
    failures = Counter(name for run in runs for name in run.failed)
    tests = sorted({name for run in runs for name in run.tests})
    print(f"\nfailures per scenario over {len(runs)} run(s):")
    for name in tests:
        print(f"  {name:<50}{failures.get(name, 0):>4}")
    if runs:
        peak = max(run.peak_memory_mib for run in runs)
        left = sum(1 for run in runs if run.leftovers)
        print(f"runs that left something: {left}; peak memory in use: {peak / 1024:.1f} GiB")
        print(f"clean runs in a row, up to the latest: {clean_streak(runs)}")


def clean_streak(runs: list[RunFigures]) -> int:
    """How many of the latest runs, counted back from the last, passed whole and left nothing."""
    streak = 0
    for run in reversed(runs):
        if run.failed or run.exit_code != 0 or run.leftovers:
            break
        streak += 1
    return streak


def main() -> None:
    """Takes a running stack down first (each run starts cold), then runs and prints."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers per run")
    parser.add_argument("-k", dest="keyword", help="only the scenarios pytest -k selects")
    parser.add_argument("--summary", action="store_true", help="print the record, run nothing")
    parser.add_argument("--fresh", action="store_true", help="start a new record")
    parser.add_argument("--record", type=Path, default=RECORD, help=f"default: {RECORD}")
    args = parser.parse_args()
    reports = REPO_ROOT / "reports" / "reliability"
    record = args.record
    if args.summary:
        print_table(read_record(record))
        return
    if args.fresh and record.exists():
        record.unlink()
    runs = read_record(record)
    stack = Stack()
    if stack.is_running():
        print("taking the running stack down: each run starts from a stopped stack")
        stack.down()
    reports.mkdir(parents=True, exist_ok=True)
    record.parent.mkdir(parents=True, exist_ok=True)
    selection = ["-k", args.keyword] if args.keyword else []
    print(f"{_host()}, -n {args.workers}; record: {record}", flush=True)
    for number in range(1, args.runs + 1):
        print(f"run {number}/{args.runs} ...", flush=True)
        run = run_suite(args.workers, reports / f"run-{len(runs) + 1}.xml", selection)
        runs.append(run)
        with record.open("a") as lines:
            lines.write(run.to_json() + "\n")
        print_table(runs)
        print(flush=True)


if __name__ == "__main__":
    main()
