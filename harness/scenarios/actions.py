"""An operator's actions on a run, as a scenario's timeline does them: clear tasks or the run,
mark tasks, and the waits around them (a task reaching a state, the run queued again).

Each is a call of Airflow's REST API, so a replayed action is what a person does in the UI.
"""

from __future__ import annotations

from typing import Any

from harness.airflow.client import FINISHED_RUN_STATES, AirflowApiError, AirflowClient
from harness.scenarios.model import ActionStep, split_task_key
from harness.scenarios.outcome import task_key
from harness.stack import PIPELINE_DAG_ID
from harness.waiting import wait_until, waited

# How long Airflow may take to queue a finished run again after a clear.
RESTART_SECONDS = 20.0
# How long a run whose task was marked may take to be queued again, when it is at all.
MARK_REQUEUE_SECONDS = 5.0
FINISHED_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed"})


def apply(airflow: AirflowClient, action: ActionStep, run_id: str) -> None:
    """Clears or marks what ``action`` names in run ``run_id``."""
    dag, tasks = PIPELINE_DAG_ID, [split_task_key(task) for task in action.tasks]
    if action.action == "clear_run":
        airflow.clear_run(dag, run_id)
    elif action.action == "clear_tasks":
        ids: list[Any] = [t if i is None else [t, i] for t, i in tasks]
        airflow.clear_tasks(dag, run_id, ids, action.downstream, action.only_failed)
    else:
        state = "success" if action.action == "mark_success" else "failed"
        for task_id, index in tasks:
            airflow.set_task_state(dag, run_id, task_id, state, -1 if index is None else index)


def wait_for_task(
    airflow: AirflowClient, run_id: str, task: str, state: str, timeout: float, label: str
) -> None:
    """Until ``task`` of the run is in ``state`` (``finished``: any end); the run's own step
    triggers it meanwhile, in another thread. ``label`` names the run in the timeout."""
    wanted = FINISHED_TASK_STATES if state == "finished" else {state}

    def reached() -> bool:
        try:
            tis = airflow.task_instances(PIPELINE_DAG_ID, run_id)
        except AirflowApiError as error:
            if error.status != 404:  # not triggered yet
                raise
            return False
        return any(task_key(ti) == task and ti.get("state") in wanted for ti in tis)

    wait_until(
        reached,
        timeout=timeout,
        interval=1,
        timed_out=f"{task} of run {label} was not {state} within the run's timeout",
        error=TimeoutError,
    )


def await_restart(
    airflow: AirflowClient, run_id: str, was: dict[str, Any], must_requeue: bool
) -> bool:
    """After an action on a finished run: wait until Airflow has queued it again, so the wait
    that follows does not see the old end. A clear must re-queue the run (False when it did
    not); a mark does only when it clears failed tasks after it (a short look)."""
    if was.get("state") not in FINISHED_RUN_STATES:
        return True
    seconds = RESTART_SECONDS if must_requeue else MARK_REQUEUE_SECONDS

    def requeued() -> bool:
        return airflow.dag_run(PIPELINE_DAG_ID, run_id)["state"] not in FINISHED_RUN_STATES

    return waited(requeued, timeout=seconds) or not must_requeue
