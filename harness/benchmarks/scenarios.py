"""Where a scenario's time goes: ``python -m harness.benchmarks.scenarios [SCENARIO ...]``.

Prints figures, asserts nothing. Brings the stack up (or reuses it), replays the scenarios
(``happy_path`` when none is named) as ``python -m harness replay -j N`` does, and prints:

- per scenario and run: the replay's wall time, the DAG run's time (start to end), the critical
  path of pod compute (the longest path through the DAG's tasks, each task weighing the time its
  pods' containers ran, overlapping pods counted once) and the ratio of the two;
- per pod task (its last try): where its time went, from queued to ended.

``--serial`` first replays the same scenarios one at a time, for the serial-to-parallel ratio of
``-j N``. The stack is left as it was found.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.replay import default_jobs, replay_all
from harness.scenarios import REPORTS_DIR, ScenarioResult
from harness.scenarios.pods import PodRecord
from harness.stack import PIPELINE_DAG_ID, Stack, StackConfig

# A pod task's phases, in order: (label, where it starts, where it ends).
PHASES = (
    ("queued", "queued", "task_started"),
    ("task start", "task_started", "pod_created"),
    ("to scheduled", "pod_created", "pod_scheduled"),
    ("to running", "pod_scheduled", "pod_running"),
    ("running", "pod_running", "pod_finished"),
    ("logs, xcom", "pod_finished", "pod_deleted"),
    ("deletion", "pod_deleted", "task_ended"),
)


def moment(value: str | datetime | None) -> datetime | None:
    """An API's ISO time (or a datetime) as an aware datetime; None stays None."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds; None when either is unknown."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def covered_seconds(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    """How long at least one of the intervals was going (overlaps counted once)."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += (end - start).total_seconds()
            reach = end
        elif end > reach:
            total += (end - reach).total_seconds()
            reach = end
    return total


def compute_by_task(pods: Iterable[PodRecord]) -> dict[str, float]:
    """Per task id, the time its pods' containers ran (every try and map index; concurrent
    pods, such as mapped trials on several GPUs, counted once)."""
    intervals: dict[str, list[tuple[datetime, datetime]]] = {}
    for pod in pods:
        if pod.started and pod.finished and pod.finished >= pod.started:
            intervals.setdefault(pod.task_id, []).append((pod.started, pod.finished))
    return {task: covered_seconds(spans) for task, spans in intervals.items()}


def critical_path(
    tasks: Iterable[Mapping[str, Any]], compute: Mapping[str, float]
) -> tuple[float, list[str]]:
    """The longest path through the DAG (``tasks`` as Airflow's API lists them, with their
    ``downstream_task_ids``) weighted by ``compute``: its seconds and its tasks that ran pods."""
    downstream = {task["task_id"]: list(task.get("downstream_task_ids") or []) for task in tasks}
    best: dict[str, tuple[float, list[str]]] = {}

    def longest_from(task_id: str) -> tuple[float, list[str]]:
        if task_id not in best:
            after = [longest_from(child) for child in downstream.get(task_id, [])]
            tail = max(after, key=lambda found: found[0], default=(0.0, []))
            weight = compute.get(task_id, 0.0)
            best[task_id] = (weight + tail[0], ([task_id] if weight else []) + tail[1])
        return best[task_id]

    return max((longest_from(task) for task in downstream), key=lambda found: found[0])


@dataclass(frozen=True)
class PodTask:
    """One pod task's last try and the moments its phases begin and end."""

    key: str
    try_number: int
    moments: dict[str, datetime | None]

    def phases(self) -> list[float | None]:
        """Each phase's seconds (PHASES' order); None where a moment is unknown."""
        return [seconds_between(self.moments[a], self.moments[b]) for _, a, b in PHASES]


def pod_tasks(task_instances: list[dict[str, Any]], pods: list[PodRecord]) -> list[PodTask]:
    """The task instances that ran a pod, with their last try's pod, in start order."""
    by_try = {(p.task_id, p.map_index, p.try_number): p for p in pods}
    found = []
    for ti in task_instances:
        map_index = ti.get("map_index", -1)
        if map_index is None:
            map_index = -1
        pod = by_try.get((ti["task_id"], map_index, ti.get("try_number") or 0))
        if pod is None:
            continue
        key = ti["task_id"] if map_index < 0 else f"{ti['task_id']}[{map_index}]"
        found.append(
            PodTask(
                key=key,
                try_number=ti.get("try_number") or 0,
                moments={
                    "queued": moment(ti.get("queued_when")),
                    "task_started": moment(ti.get("start_date")),
                    "pod_created": pod.created,
                    "pod_scheduled": pod.scheduled,
                    "pod_running": pod.started,
                    "pod_finished": pod.finished,
                    "pod_deleted": pod.deletion_seen,
                    "task_ended": moment(ti.get("end_date")),
                },
            )
        )
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda task: task.moments["task_started"] or never)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass(frozen=True)
class ReplayedRun:
    """One DAG run of a replayed scenario, as the figures need it."""

    label: str
    run_dates: dict[str, Any]
    task_instances: list[dict[str, Any]]
    pods: list[PodRecord]


@dataclass(frozen=True)
class Replayed:
    """A replayed scenario: its name, its wall time, its runs."""

    scenario: str
    seconds: float
    runs: list[ReplayedRun]

    @classmethod
    def of(cls, result: ScenarioResult) -> Replayed:
        """From a replay of this process."""
        runs = [
            ReplayedRun(s.label, s.outcome.run_dates, s.outcome.task_instances, s.outcome.pods)
            for s in result.steps
        ]
        return cls(result.scenario.name, result.seconds, runs)

    @classmethod
    def read(cls, path: Path) -> Replayed:
        """From a replay's ``outcome.json`` (a pytest run's, say)."""
        report = json.loads(path.read_text())
        runs = []
        for step in report["steps"]:
            outcome = step["outcome"]
            pods = [_pod_record(pod) for pod in outcome["pods"]]
            runs.append(
                ReplayedRun(
                    step["step"], outcome.get("run_dates") or {}, outcome["task_instances"], pods
                )
            )
        name = report.get("scenario")
        if name is None:  # an older report: its folder is scenario__NAME__HASH
            name = path.parent.name.removeprefix("scenario__").rsplit("__", 1)[0]
        return cls(name, report.get("seconds") or 0.0, runs)


def _pod_record(values: dict[str, Any]) -> PodRecord:
    known = {f.name for f in fields(PodRecord)}
    record = PodRecord(**{key: value for key, value in values.items() if key in known})
    for name in ("created", "scheduled", "started", "finished", "deletion_seen"):
        setattr(record, name, moment(getattr(record, name)))
    return record


def scenario_table(replays: list[Replayed], tasks: list[dict[str, Any]]) -> str:
    """Per scenario and run: wall, DAG run, critical path of pod compute, their ratio."""
    header = ("scenario / run", "wall s", "DAG run s", "pod path s", "ratio", "path")
    rows = [header]
    for replayed in replays:
        wall = _figure(replayed.seconds)
        for run in replayed.runs:
            dates = run.run_dates
            took = seconds_between(moment(dates.get("start_date")), moment(dates.get("end_date")))
            path, on_path = critical_path(tasks, compute_by_task(run.pods))
            ratio = f"{took / path:.2f}x" if took is not None and path else "-"
            label = replayed.scenario
            if len(replayed.runs) > 1:
                label = f"{label} / {run.label}"
            short = " > ".join(task.rsplit(".", 1)[-1] for task in on_path) or "-"
            rows.append((label, wall, _figure(took), _figure(path), ratio, short))
            wall = ""
    return _aligned(rows)


def phase_table(replays: list[Replayed]) -> str:
    """Per pod task (last try) of every run: each phase's seconds and the whole; then each
    phase's sum over them all."""
    header = ("scenario", "pod task", "try", *(label for label, _, _ in PHASES), "total")
    rows = [header]
    sums = [0.0] * (len(PHASES) + 1)
    for replayed in replays:
        for run in replayed.runs:
            for task in pod_tasks(run.task_instances, run.pods):
                total = seconds_between(task.moments["queued"], task.moments["task_ended"])
                seconds = [*task.phases(), total]
                sums = [a + (b or 0.0) for a, b in zip(sums, seconds, strict=True)]
                short = task.key.rsplit(".", 1)[-1]
                figures = [_figure(value) for value in seconds]
                rows.append((replayed.scenario, short, str(task.try_number), *figures))
    rows.append(("all", f"{len(rows) - 1} pod tasks", "", *(_figure(value) for value in sums)))
    return _aligned(rows)


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _timed(
    selected: list[str], config: StackConfig, jobs: int
) -> tuple[list[ScenarioResult], float]:
    """The selected scenarios replayed ``jobs`` at a time (reports in their own folder), and the
    seconds it took."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    started = time.monotonic()
    results, _ = replay_all(
        selected, config, keep=True, reports_dir=REPORTS_DIR.parent / f"bench-{stamp}", jobs=jobs
    )
    return results, time.monotonic() - started


def _print_figures(replays: list[Replayed], tasks: list[dict[str, Any]]) -> None:
    print(scenario_table(replays, tasks))
    print()
    print(phase_table(replays))


def _reports(folder: Path, running_stack: Stack) -> int:
    """The figures of replays already made (their ``outcome.json`` under ``folder``)."""
    paths = sorted(folder.glob("*/outcome.json"))
    if not paths:
        print(f"no replay reports (*/outcome.json) under {folder}: replay scenarios first")
        return 2
    if not running_stack.is_running():
        print("the stack is not running: its api-server gives the DAG's task graph (harness up)")
        return 2
    tasks = running_stack.up().client().tasks(PIPELINE_DAG_ID)
    replays = sorted((Replayed.read(path) for path in paths), key=lambda r: r.scenario)
    total = sum(r.seconds for r in replays)
    print(f"## {len(replays)} replay(s) under {folder}: {total:.1f} s of replays in all\n")
    _print_figures(replays, tasks)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Replays, then the tables; 1 when a replay did not match (its figures still print)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", help="scenario names (default: happy_path)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="replays at once")
    parser.add_argument(
        "--serial", action="store_true", help="also replay them one at a time first"
    )
    parser.add_argument("--all", action="store_true", help="every scenario file")
    parser.add_argument(
        "--reports",
        type=Path,
        metavar="DIR",
        help="replay nothing: the figures of the replays under DIR (reports/scenarios after a "
        "pytest run); the stack must be running",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"-j/--jobs must be at least 1, not {args.jobs} (default {default_jobs()})")
    config = StackConfig()
    stack = Stack(config, keep=True)
    if args.reports is not None:
        return _reports(args.reports, stack)
    selected = [] if args.all else (args.scenarios or ["happy_path"])
    stack.hold()
    was_running = stack.is_running()
    try:
        started = time.monotonic()
        running = stack.up()
        up_seconds = time.monotonic() - started
        tasks = running.client().tasks(PIPELINE_DAG_ID)
        modes = ([1] if args.serial and args.jobs > 1 else []) + [args.jobs]
        walls, failed = {}, 0
        for jobs in modes:
            results, walls[jobs] = _timed(selected, config, jobs)
            failed += sum(not r.passed for r in results)
            print(f"\n## -j {jobs}: {len(results)} replay(s) in {walls[jobs]:.1f} s\n")
            _print_figures([Replayed.of(result) for result in results], tasks)
    finally:
        if not was_running:
            stack.down()
        stack.release()
    print(f"\nstack up (or reused): {up_seconds:.1f} s")
    if len(walls) == 2:
        print(
            f"serial {walls[1]:.1f} s, -j {args.jobs} {walls[args.jobs]:.1f} s: "
            f"{100 * walls[args.jobs] / walls[1]:.0f} % of serial"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
