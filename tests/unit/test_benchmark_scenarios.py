"""The scenario benchmark's arithmetic: pod compute per task, the critical path, the phases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from harness.benchmarks.scenarios import (
    Replayed,
    compute_by_task,
    covered_seconds,
    critical_path,
    pod_tasks,
    scenario_table,
)
from harness.scenarios.pods import PodRecord

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pod(task_id: str, start: float, end: float, map_index: int = -1, try_number: int = 1):
    return PodRecord(
        name=f"{task_id}-{map_index}-{try_number}",
        namespace="ml",
        task_id=task_id,
        map_index=map_index,
        try_number=try_number,
        gpus=0,
        created=at(start - 3),
        scheduled=at(start - 2),
        started=at(start),
        finished=at(end),
        deletion_seen=at(end + 1.5),
    )


# The pipeline's shape: two pod tasks in a row, mapped trials, then tasks without pods; a side
# branch (notify) that runs no pod.
TASKS = [
    {"task_id": "sensor", "downstream_task_ids": ["validate"]},
    {"task_id": "validate", "downstream_task_ids": ["preprocess", "notify"]},
    {"task_id": "preprocess", "downstream_task_ids": ["trial"]},
    {"task_id": "trial", "downstream_task_ids": ["select"]},
    {"task_id": "select", "downstream_task_ids": ["notify"]},
    {"task_id": "notify", "downstream_task_ids": []},
]


def test_overlapping_intervals_count_once_and_gaps_not_at_all():
    spans = [(at(0), at(10)), (at(5), at(12)), (at(20), at(21)), (at(6), at(7))]
    assert covered_seconds(spans) == 13.0
    assert covered_seconds([]) == 0.0


def test_mapped_trials_running_together_weigh_their_overlap_once_and_queued_ones_add_up():
    together = [pod("trial", 10, 20, 0), pod("trial", 11, 21, 1)]
    one_after_the_other = [pod("trial", 10, 20, 0), pod("trial", 20, 30, 1)]
    assert compute_by_task(together) == {"trial": 11.0}
    assert compute_by_task(one_after_the_other) == {"trial": 20.0}


def test_a_pod_that_never_ran_weighs_nothing():
    never = PodRecord("p", "ml", "trial", 0, 1, 1, created=at(0))
    assert compute_by_task([never]) == {}


def test_the_critical_path_is_the_heaviest_chain_of_pod_tasks():
    compute = {"validate": 2.0, "preprocess": 3.0, "trial": 11.0}
    seconds, path = critical_path(TASKS, compute)
    assert seconds == 16.0
    assert path == ["validate", "preprocess", "trial"]


def test_a_heavier_side_branch_is_the_critical_path():
    tasks = [
        {"task_id": "a", "downstream_task_ids": ["b", "c"]},
        {"task_id": "b", "downstream_task_ids": []},
        {"task_id": "c", "downstream_task_ids": []},
    ]
    assert critical_path(tasks, {"a": 1.0, "b": 2.0, "c": 5.0}) == (6.0, ["a", "c"])


def test_phases_run_from_queued_through_the_pod_to_the_task_end_for_the_last_try():
    pods = [pod("validate", 10, 12, try_number=1), pod("validate", 40, 45, try_number=2)]
    tis = [
        {
            "task_id": "validate",
            "map_index": -1,
            "try_number": 2,
            "queued_when": at(30).isoformat(),
            "start_date": at(33).isoformat(),
            "end_date": at(48).isoformat(),
        },
        {"task_id": "select", "map_index": -1, "try_number": 1, "start_date": at(50).isoformat()},
    ]
    (task,) = pod_tasks(tis, pods)
    assert task.key == "validate"
    assert task.try_number == 2
    # queued 3, task start 4 (to pod created at 37), 1 to scheduled, 2 to running, 5 running,
    # 1.5 from the end to its deletion, 1.5 from there to the task's end.
    assert task.phases() == [3.0, 4.0, 1.0, 2.0, 5.0, 1.5, 1.5]


def test_a_phase_whose_moment_is_unknown_is_none_not_zero():
    unseen = pod("trial", 10, 20, map_index=0)
    unseen.deletion_seen = None
    tis = [{"task_id": "trial", "map_index": 0, "try_number": 1, "start_date": at(5).isoformat()}]
    (task,) = pod_tasks(tis, [unseen])
    assert task.key == "trial[0]"
    phases = task.phases()
    assert phases[0] is None  # never queued_when
    assert phases[5] is None and phases[6] is None
    assert phases[4] == 10.0


def test_a_pytest_runs_report_gives_the_same_figures_as_the_replay_itself(tmp_path):
    pods = [pod("validate", 10, 12)]
    tis = [
        {
            "task_id": "validate",
            "map_index": -1,
            "try_number": 1,
            "queued_when": at(5).isoformat(),
            "start_date": at(6).isoformat(),
            "end_date": at(14).isoformat(),
        }
    ]
    outcome = {
        "run_dates": {"start_date": at(0).isoformat(), "end_date": at(20).isoformat()},
        "task_instances": tis,
        "pods": [record.as_json() for record in pods],
    }
    report = tmp_path / "scenario__late_data__0a1b2c3d" / "outcome.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"seconds": 25.0, "steps": [{"step": "run", "outcome": outcome}]}))
    replayed = Replayed.read(report)
    assert replayed.scenario == "late_data"  # from the folder, where the report has no name
    assert replayed.seconds == 25.0
    (run,) = replayed.runs
    assert pod_tasks(run.task_instances, run.pods)[0].phases() == pod_tasks(tis, pods)[0].phases()
    row = scenario_table([replayed], TASKS).splitlines()[1]
    assert row.split() == ["late_data", "25.0", "20.0", "2.0", "10.00x", "validate"]
