"""What the pipeline reports at the end of a run, and where it sends it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import requests

SUCCESS, SKIPPED, UNCHANGED = "success", "skipped", "unchanged"
FAILED_STATES = frozenset({"failed", "upstream_failed"})
_MAPPED_INDEX = re.compile(r"^(?P<task_id>.+)_(?P<index>\d+)$")


def trial_counts(task_states: Mapping[str, str | None], trial_task_id: str) -> dict[str, int]:
    """How many mapped trials succeeded and failed, from ``get_task_states``' keys."""
    states = [
        state
        for key, state in task_states.items()
        if (match := _MAPPED_INDEX.match(key)) and match["task_id"] == trial_task_id
    ]
    return {
        "total": len(states),
        "succeeded": sum(state == SUCCESS for state in states),
        "failed": sum(state in FAILED_STATES for state in states),
    }


def first_failure(task_states: Mapping[str, str | None], order: Sequence[str]) -> str | None:
    """The earliest task of ``order`` that failed (not merely upstream_failed), if any."""
    for task_id in order:
        keys = [task_id] + [k for k in task_states if k.startswith(f"{task_id}_")]
        if any(task_states.get(key) == "failed" for key in keys):
            return task_id
    return None


def build_notification(
    *,
    run: Mapping[str, Any],
    task_states: Mapping[str, str | None],
    pipeline_order: Sequence[str],
    trial_task_id: str,
    evaluation: Mapping[str, Any] | None,
    deployment: Mapping[str, Any] | None,
    failure_reasons: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The outcome of a run: ``deployed``, ``skipped``, ``unchanged`` (its candidate already was
    the champion) or ``failed``, with the figures behind it.

    ``failure_reasons`` (task id -> why) says why a failed task failed, where that is known.
    """
    trials = trial_counts(task_states, trial_task_id)
    evaluation = dict(evaluation or {})
    if task_states.get("deploy_model") == SUCCESS:
        outcome = "deployed"
        summary = (
            f"{evaluation.get('model_name')} v{evaluation.get('candidate_version')} is the new "
            f"champion: {evaluation.get('reason')}."
        )
    elif task_states.get("skip_deployment") == SUCCESS and evaluation.get("decision") == UNCHANGED:
        outcome = UNCHANGED
        summary = f"Nothing changed: {evaluation.get('model_name')} {evaluation.get('reason')}."
    elif task_states.get("skip_deployment") == SUCCESS:
        outcome = "skipped"
        summary = (
            f"{evaluation.get('model_name')} v{evaluation.get('candidate_version')} was not "
            f"deployed: {evaluation.get('reason')}."
        )
    else:
        outcome = "failed"
        failed_at = first_failure(task_states, pipeline_order) or "an unknown task"
        reason = (failure_reasons or {}).get(failed_at)
        because = f" ({reason})" if reason else ""
        summary = f"The pipeline failed at {failed_at}{because}; nothing was deployed."
    if trials["total"]:
        summary += f" Trials: {trials['succeeded']} of {trials['total']} succeeded."
    return {
        **run,
        "outcome": outcome,
        "summary": summary,
        "failed_task": first_failure(task_states, pipeline_order),
        "failure_reasons": dict(failure_reasons or {}),
        "trials": trials,
        "evaluation": evaluation or None,
        "deployment": dict(deployment) if deployment else None,
        "task_states": dict(sorted(task_states.items())),
    }


def notification_key(prefix: str, dag_id: str, run_id: str) -> str:
    """Where a run's notification record lives in the artifacts bucket."""
    return f"{prefix}/{dag_id}/{run_id}.json"


def post_webhook(url: str, notification: Mapping[str, Any], timeout_seconds: float = 10) -> None:
    """POST the notification to a Slack-like webhook (``text`` plus the whole record)."""
    response = requests.post(
        url,
        data=json.dumps({"text": notification["summary"], "notification": notification}),
        headers={"Content-Type": "application/json"},
        timeout=timeout_seconds,
    )
    response.raise_for_status()
