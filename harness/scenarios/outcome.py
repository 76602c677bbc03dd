"""What a replayed run ended with, and how it compares with the scenario's expectations.

``compare`` is pure: it reads an ``Outcome`` and returns every mismatch at once, so one failed
scenario says everything that went differently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from harness.scenarios.model import Expectations, RegistryExpectation, split_task_key
from harness.scenarios.pods import PodRecord, max_concurrent
from ml_pipeline.decisions import DEPLOY_TASK_ID, SKIP_TASK_ID, Threshold, decide_promotion
from ml_pipeline.task_ids import TRIAL_TASK_ID
from trainer import history

# Whole GPUs (nvidia.com/gpu) and MIG instances (nvidia.com/mig-1g.10gb) alike.
INSUFFICIENT_GPU = "Insufficient nvidia.com/"


@dataclass
class Outcome:
    """Everything collected from one replayed run."""

    run_id: str
    run_state: str
    # "task_id" or "task_id[i]" -> final state ("none" when the task never got one).
    tasks: dict[str, str]
    task_instances: list[dict[str, Any]]
    pods: list[PodRecord]
    gpu_nodes: tuple[str, ...]
    gpu_capacity: int
    seeded_champion: str | None
    champion_before: str | None
    champion_after: str | None
    candidate_version: str | None
    candidate_tags: dict[str, str]
    notification: dict[str, Any] | None
    sensor_deferred: bool
    sensor_pokes: int
    problems: list[str] = field(default_factory=list)
    # Expectations this cluster cannot check (and why): neither passed nor failed, reported.
    unchecked: list[str] = field(default_factory=list)
    # Trial id -> the test metrics its finished MLflow run logged (the last try's).
    trial_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    # Every trial's MLflow run, any status: trial_id, run_id, status (RUNNING, FINISHED, FAILED).
    trial_runs: list[dict[str, str]] = field(default_factory=list)
    # Reads of MLflow it took until every succeeded trial had a FINISHED run (1 is normal).
    trial_run_reads: int = 1
    # Nodes a node_lost fault took away: task, node, seconds until NotReady and until back.
    nodes_lost: list[dict[str, Any]] = field(default_factory=list)
    # GPUs a gpu_unhealthy fault failed: task, pod, node, devices, seconds into the run.
    gpu_failures: list[dict[str, Any]] = field(default_factory=list)
    # "task" or "task[i]" -> its logs, every try, for the keys the expectations name.
    task_logs: dict[str, str] = field(default_factory=dict)
    # Version -> the name of the scenario's run that registered it (for champion labels).
    run_versions: dict[str, str] = field(default_factory=dict)
    # The evaluation metric the compared champion's MLflow run logged when it was trained.
    champion_logged_metric: float | None = None
    # The run's promotion rule (its settings' Threshold).
    promotion_rule: Threshold | None = None
    # When the DAG run was queued, started and ended (collect.run_dates).
    run_dates: dict[str, Any] = field(default_factory=dict)

    @property
    def branch(self) -> str:
        """The branch the run took: deploy_model, skip_deployment or none."""
        for task_id in (DEPLOY_TASK_ID, SKIP_TASK_ID):
            if self.tasks.get(task_id) == "success":
                return task_id
        return "none"

    @property
    def best_trial(self) -> int | None:
        """The map index select_best_model chose, from the evaluation in the notification."""
        evaluation = (self.notification or {}).get("evaluation") or {}
        trial_id = (evaluation.get("best_trial") or {}).get("trial_id")
        return int(trial_id) if trial_id is not None else None

    def trial_states(self) -> Counter[str]:
        """How many mapped trials ended in each state."""
        prefix = f"{TRIAL_TASK_ID}["
        return Counter(state for key, state in self.tasks.items() if key.startswith(prefix))

    def champion_label(self, version: str | None) -> str:
        """``none``, ``seeded``, ``candidate``, a run's name or ``version N`` for a version."""
        if version is None:
            return "none"
        if version == self.seeded_champion:
            return "seeded"
        if version == self.candidate_version:
            return "candidate"
        if version in self.run_versions:
            return self.run_versions[version]
        return f"version {version}"

    def champion_is(self, expected: str, version: str | None) -> bool:
        """Whether ``version`` is what the label ``expected`` names (``candidate``: this run's,
        which is also named by this run's own name)."""
        label = self.champion_label(version)
        own = version is not None and version == self.candidate_version
        return expected == label or (own and self.run_versions.get(version) == expected)

    def gpu_waits(self) -> dict[str, float]:
        """Each GPU pod's wait to be scheduled, in seconds, by pod name."""
        return {
            pod.name: round(pod.wait_seconds, 1)
            for pod in self.pods
            if pod.gpus > 0 and pod.wait_seconds is not None
        }

    def as_json(self) -> dict[str, Any]:
        """The outcome as the report and the forensic bundle store it."""
        return {
            "run_id": self.run_id,
            "run_state": self.run_state,
            "run_dates": self.run_dates,
            "branch": self.branch,
            "best_trial": self.best_trial,
            "tasks": self.tasks,
            "task_instances": self.task_instances,
            "pods": [pod.as_json() for pod in self.pods],
            "gpu_nodes": list(self.gpu_nodes),
            "gpu_capacity": self.gpu_capacity,
            "champion": {
                "seeded": self.seeded_champion,
                "before": self.champion_before,
                "after": self.champion_after,
            },
            "candidate_version": self.candidate_version,
            "candidate_tags": self.candidate_tags,
            "notification": self.notification,
            "sensor": {"deferred": self.sensor_deferred, "pokes": self.sensor_pokes},
            "problems": self.problems,
            "unchecked": self.unchecked,
            "trial_metrics": self.trial_metrics,
            "trial_runs": self.trial_runs,
            "trial_run_reads": self.trial_run_reads,
            "nodes_lost": self.nodes_lost,
            "gpu_failures": self.gpu_failures,
            "gpu_waits_seconds": self.gpu_waits(),
        }


def task_key(task_instance: dict[str, Any]) -> str:
    """A task instance's key: ``task_id``, or ``task_id[i]`` for a mapped one."""
    index = task_instance.get("map_index", -1)
    task_id = task_instance["task_id"]
    return task_id if index is None or index < 0 else f"{task_id}[{index}]"


def asserted(expectations: BaseModel, name: str) -> bool:
    """Whether the scenario wrote the field: a value to compare, or ``null`` asserting absence."""
    return name in expectations.model_fields_set or getattr(expectations, name) is not None


def _check(mismatches: list[str], what: str, expected: Any, actual: Any) -> None:
    if expected is not None and expected != actual:
        mismatches.append(f"{what}: expected {expected!r}, got {actual!r}")


def _check_field(
    mismatches: list[str], what: str, expectations: BaseModel, name: str, actual: Any
) -> None:
    """Compares one field the scenario wrote; an explicit null must find nothing."""
    if not asserted(expectations, name):
        return
    expected = getattr(expectations, name)
    if expected != actual:
        mismatches.append(f"{what}: expected {expected!r}, got {actual!r}")


def _check_champion(
    mismatches: list[str], when: str, expected: str | None, outcome: Outcome, version: str | None
) -> None:
    if expected is not None and not outcome.champion_is(expected, version):
        mismatches.append(
            f"champion {when} the run: expected {expected!r}, got "
            f"{outcome.champion_label(version)!r}"
        )


def compare(expect: Expectations, outcome: Outcome) -> list[str]:
    """Every way ``outcome`` differs from ``expect`` (empty when it matches)."""
    mismatches = list(outcome.problems)
    _check_field(mismatches, "run state", expect, "run_state", outcome.run_state)
    _compare_tasks(mismatches, expect, outcome)
    _check_field(mismatches, "branch", expect, "branch", outcome.branch)
    _check_field(mismatches, "best trial", expect, "best_trial", outcome.best_trial)
    _check_champion(mismatches, "before", expect.champion.before, outcome, outcome.champion_before)
    _check_champion(mismatches, "after", expect.champion.after, outcome, outcome.champion_after)
    for tag, value in expect.candidate_tags.items():
        _check(mismatches, f"candidate version tag {tag}", value, outcome.candidate_tags.get(tag))
    _compare_evaluation(mismatches, expect, outcome)
    _check_field(mismatches, "sensor deferred", expect.sensor, "deferred", outcome.sensor_deferred)
    if expect.sensor.min_pokes is not None and outcome.sensor_pokes < expect.sensor.min_pokes:
        mismatches.append(
            f"sensor pokes without the file: expected at least {expect.sensor.min_pokes}, "
            f"got {outcome.sensor_pokes}"
        )
    _compare_notification(mismatches, expect, outcome)
    _compare_pods(mismatches, expect, outcome)
    tries = {task_key(ti): ti.get("try_number") or 0 for ti in outcome.task_instances}
    for key, count in expect.tries.items():
        _check(mismatches, f"tries of {key}", count, tries.get(key, 0))
    for key, texts in expect.logs.items():
        log = outcome.task_logs.get(key, "")
        for text in texts:
            if text not in log:
                mismatches.append(f"logs of {key} lack {text!r} ({len(log)} characters read)")
    for key, texts in expect.logs_lack.items():
        log = outcome.task_logs.get(key, "")
        if not log.strip():
            # An empty log lacks everything: that would pass whatever happened.
            mismatches.append(f"logs of {key}: none could be read, so logs_lack proves nothing")
        for text in texts:
            if text in log:
                mismatches.append(f"logs of {key} contain {text!r}")
    return mismatches


def _compare_evaluation(mismatches: list[str], expect: Expectations, outcome: Outcome) -> None:
    wanted = expect.evaluation
    if not wanted.model_fields_set:
        return
    evaluation = (outcome.notification or {}).get("evaluation") or {}
    if not evaluation:
        mismatches.append("evaluation: expected one in the notification, found none")
        return
    _check(mismatches, "evaluation decision", wanted.decision, evaluation.get("decision"))
    reason = str(evaluation.get("reason") or "")
    for text in wanted.reason_contains:
        if text not in reason:
            mismatches.append(f"evaluation reason lacks {text!r}: {reason!r}")
    scores = evaluation.get("scores") or {}
    today = {role: (scores.get(role) or {}).get("today") for role in ("candidate", "champion")}
    if wanted.better_on_today is not None:
        if None in today.values():
            mismatches.append(f"evaluation: no scores of both models on today's data ({scores})")
        else:
            greater = outcome.promotion_rule is None or outcome.promotion_rule.greater_is_better
            gain = (1.0 if greater else -1.0) * (today["candidate"] - today["champion"])
            better = "candidate" if gain > 0 else "champion"
            _check(mismatches, "model better on today's data", wanted.better_on_today, better)
    if wanted.stale_comparison is not None:
        _compare_stale(mismatches, wanted.stale_comparison, today["candidate"], outcome)
    compared = evaluation.get("champion_version")
    compared = None if compared is None else str(compared)
    if wanted.compared_with is not None and not outcome.champion_is(wanted.compared_with, compared):
        mismatches.append(
            f"evaluation compared with: expected {wanted.compared_with!r}, got "
            f"{outcome.champion_label(compared)!r}"
        )


def _compare_stale(
    mismatches: list[str], wanted: str, candidate: float | None, outcome: Outcome
) -> None:
    """What the run's own rule decides with the champion's logged figure as its score today."""
    logged, rule = outcome.champion_logged_metric, outcome.promotion_rule
    if candidate is None or logged is None or rule is None:
        mismatches.append(
            "stale comparison: needs the candidate's score today, the champion's logged "
            f"figure and the run's rule, got {candidate}, {logged} and {rule}"
        )
        return
    decision = decide_promotion(
        rule=rule, candidate={"today": candidate}, champion={"today": logged}, champion_version="?"
    )
    decided = "deploy" if decision.deploy else "skip"
    if decided != wanted:
        mismatches.append(
            f"stale comparison: expected {wanted!r}, but the candidate's {candidate:.4f} today "
            f"against the champion's logged {logged:.4f} decides {decided!r}"
        )


def _compare_tasks(mismatches: list[str], expect: Expectations, outcome: Outcome) -> None:
    for key, expected in expect.tasks.items():
        task_id, _ = split_task_key(key)
        if isinstance(expected, dict):
            counts = outcome.trial_states() if task_id == TRIAL_TASK_ID else Counter()
            # Exact: a state the scenario left out must have no instances.
            wanted = {state: count for state, count in expected.items() if count}
            if dict(counts) != wanted:
                mismatches.append(
                    f"{key} states: expected {expected}, got {dict(counts) or 'no instances'}"
                )
        else:
            _check(mismatches, f"task {key}", expected, outcome.tasks.get(key, "none"))


def _compare_notification(mismatches: list[str], expect: Expectations, outcome: Outcome) -> None:
    wanted = expect.notification
    if not wanted.model_fields_set:
        return
    record = outcome.notification
    if record is None:
        mismatches.append("notification: expected a record in S3, found none")
        return
    _check_field(mismatches, "notification outcome", wanted, "outcome", record.get("outcome"))
    failed_task = record.get("failed_task")
    _check_field(mismatches, "notification failed_task", wanted, "failed_task", failed_task)
    for text in wanted.summary_contains:
        if text not in record.get("summary", ""):
            mismatches.append(f"notification summary lacks {text!r}: {record.get('summary')!r}")
    for name, count in wanted.trials.items():
        _check(mismatches, f"notification trials.{name}", count, record["trials"].get(name))


def shared_devices(pods: list[PodRecord], now: datetime) -> list[str]:
    """Each device two of ``pods`` held while both ran, as lines for a person."""
    found = []
    ran = [pod for pod in pods if pod.gpus and pod.started and pod.devices]
    for index, first in enumerate(ran):
        for second in ran[index + 1 :]:
            overlap = first.started < (second.finished or now) and second.started < (
                first.finished or now
            )
            for device in sorted(set(first.devices) & set(second.devices)) if overlap else []:
                found.append(f"{device} held by {first.name} and {second.name} at once")
    return found


def _compare_devices(mismatches: list[str], wanted: bool, outcome: Outcome) -> None:
    gpu_pods = [pod for pod in outcome.pods if pod.gpus and pod.started]
    if any(pod.devices is None for pod in gpu_pods):
        # An existing cluster: its own device plugin hands them out, the harness reads nothing.
        outcome.unchecked.append("pods.distinct_devices: this cluster's devices are not read")
        return
    if not gpu_pods:
        mismatches.append("distinct devices: no GPU pod ran, so nothing was handed out")
        return
    # Whatever is expected, each pod must have been seen with what it asked for.
    for pod in gpu_pods:
        if len(pod.devices) != pod.gpus:
            mismatches.append(f"{pod.name} asked for {pod.gpus} GPUs, was seen with {pod.devices}")
    shared = shared_devices(gpu_pods, datetime.now(UTC))
    _check(mismatches, f"distinct devices {shared or ''}", wanted, not shared)


def _compare_move(mismatches: list[str], key: str, outcome: Outcome) -> None:
    failed = [entry for entry in outcome.gpu_failures if entry["task"] == key]
    if not failed:
        mismatches.append(f"{key}: expected its GPU to fail under it, none did")
        return
    bad = set(failed[0]["devices"])
    later = [p for p in outcome.pods if p.key == key and p.name != failed[0]["pod"] and p.started]
    moved = [p for p in later if p.devices and not bad & set(p.devices)]
    if not moved:
        seen = {p.name: p.devices for p in later}
        mismatches.append(
            f"{key}: expected a later pod on other GPUs than the failed {sorted(bad)}, got {seen}"
        )


def bound_while_away(pods: list[PodRecord], losses: list[dict[str, Any]]) -> list[PodRecord]:
    """The pods bound to a lost node while it was away (before its kubelet started again)."""
    found = []
    for loss in losses:
        lost_at = datetime.fromisoformat(loss["lost_at"])
        back_at = datetime.fromisoformat(loss["back_at"]) if loss.get("back_at") else None
        # Binding times have whole seconds.
        since = lost_at.replace(microsecond=0)
        found += [
            pod
            for pod in pods
            if pod.node == loss["node"]
            and pod.scheduled
            and pod.scheduled >= since
            and (back_at is None or pod.scheduled < back_at)
        ]
    return found


def _compare_rejection(mismatches: list[str], key: str, outcome: Outcome) -> None:
    """A pod of ``key`` bound to a lost node while it was away must have been refused there:
    its kubelet admits it at its start, before the device plugin has registered again. Where
    none was bound then (the first try took longer to fail than the node to be marked NotReady,
    so the retry waited for the node's return) there is nothing to check."""
    pods = [pod for pod in outcome.pods if pod.key == key]
    if any(pod.gpus and pod.devices is None for pod in pods):
        # An existing cluster: whether its kubelet refused a pod is not read.
        outcome.unchecked.append(
            f"pods.rejected_at_admission {key}: this cluster's devices are not read"
        )
        return
    if not bound_while_away(pods, outcome.nodes_lost):
        outcome.unchecked.append(
            f"pods.rejected_at_admission {key}: none of its pods was bound to a lost node while "
            "it was away"
        )
        return
    if not any(pod.rejected_at_admission for pod in pods):
        seen = {pod.name: pod.status_reason or pod.phase for pod in pods}
        mismatches.append(f"{key}: expected a pod refused at admission, its pods were {seen}")


def _compare_pods(mismatches: list[str], expect: Expectations, outcome: Outcome) -> None:
    wanted = expect.pods
    trial_pods = [pod for pod in outcome.pods if pod.task_id == TRIAL_TASK_ID]
    _check_field(mismatches, "trial pods created", wanted, "trial_pods", len(trial_pods))
    if wanted.trials_on_gpu_nodes is not None:
        placed = [pod for pod in trial_pods if pod.node]
        on_gpu = bool(placed) and all(pod.node in outcome.gpu_nodes for pod in placed)
        elsewhere = sorted(
            {f"{p.name} on {p.node}" for p in placed if p.node not in outcome.gpu_nodes}
        )
        _check(
            mismatches, f"trials on GPU nodes {elsewhere or ''}", wanted.trials_on_gpu_nodes, on_gpu
        )
    if wanted.gpu_pods_within_capacity is not None:
        gpu_pods = [pod for pod in outcome.pods if pod.gpus > 0]
        peak = max_concurrent(gpu_pods, datetime.now(UTC))
        _check(
            mismatches,
            f"GPU pods within capacity {outcome.gpu_capacity} (peak {peak} at once)",
            wanted.gpu_pods_within_capacity,
            0 < peak <= outcome.gpu_capacity,
        )
    if wanted.distinct_devices is not None:
        _compare_devices(mismatches, wanted.distinct_devices, outcome)
    if wanted.waited_for_gpu is not None:
        waited = any(
            INSUFFICIENT_GPU in reason for pod in outcome.pods for reason in pod.pending_reasons
        )
        _check(mismatches, "a pod waited for a GPU", wanted.waited_for_gpu, waited)
    if wanted.min_gpu_wait_seconds is not None:
        longest = max(outcome.gpu_waits().values(), default=0.0)
        if longest < wanted.min_gpu_wait_seconds:
            mismatches.append(
                f"longest wait of a GPU pod to be scheduled: expected at least "
                f"{wanted.min_gpu_wait_seconds:.0f} s, got {longest:.0f} s"
            )
    for key in wanted.moved_off_failed_gpu:
        _compare_move(mismatches, key, outcome)
    for key, codes in wanted.exit_codes.items():
        actual = [pod.exit_code for pod in outcome.pods if pod.key == key]
        _check(mismatches, f"exit codes of {key}'s pods", codes, actual)
    for key, reason in wanted.waiting_reasons.items():
        seen = [r for pod in outcome.pods if pod.key == key for r in pod.waiting_reasons]
        if reason not in seen:
            mismatches.append(f"{key}: expected its container to wait with {reason}, saw {seen}")
    for key in wanted.rejected_at_admission:
        _compare_rejection(mismatches, key, outcome)
    for key in wanted.oom_killed:
        reasons = [pod.reason for pod in outcome.pods if pod.key == key]
        if "OOMKilled" not in reasons:
            mismatches.append(f"{key}: expected a pod OOMKilled, its pods ended {reasons}")


def sensor_pokes(log_text: str) -> int:
    """Pokes that found no file, from the sensor's log (the S3 trigger logs each wait)."""
    return log_text.count("Sleeping for")


@dataclass
class StepResult:
    """One step of a scenario's timeline (a run, or an action on one) and what came of it."""

    label: str
    run_id: str
    outcome: Outcome
    mismatches: list[str]

    def as_json(self) -> dict[str, Any]:
        """The step as the report stores it."""
        return {
            "step": self.label,
            "run_id": self.run_id,
            "mismatches": self.mismatches,
            "outcome": self.outcome.as_json(),
        }


@dataclass
class RegistryState:
    """The model's registry and champion history once every step of a scenario is done."""

    # Version -> its tags.
    versions: dict[str, dict[str, str]]
    champion: str | None
    # The deploy ledger's moves of the champion alias, in order (trainer.history).
    moves: list[dict[str, Any]]
    # Version -> "seeded" or the name of the run that registered it.
    labels: dict[str, str]
    # The notification outcome each run ended with.
    outcomes: list[str]

    def label(self, version: str | None) -> str:
        """``none``, ``seeded``, a run's name, or ``version N``."""
        if version is None:
            return "none"
        return self.labels.get(str(version), f"version {version}")

    def as_json(self) -> dict[str, Any]:
        """The state as the report stores it, versions named."""
        return {
            "champion": self.label(self.champion),
            "versions": {f"{v} ({self.label(v)})": tags for v, tags in self.versions.items()},
            "history": self.moves,
            "outcomes": self.outcomes,
        }


def compare_registry(expect: RegistryExpectation, state: RegistryState) -> list[str]:
    """Every way the registry's end state differs from ``expect``."""
    mismatches: list[str] = []
    _check(mismatches, "registered versions", expect.versions, len(state.versions))
    _check(mismatches, "champion at the end", expect.champion, state.label(state.champion))
    moves = [(state.label(m.get("from")), state.label(m.get("to"))) for m in state.moves]
    if expect.history is not None:
        wanted = [(move.from_, move.to) for move in expect.history]
        _check(mismatches, "champion history (from, to)", wanted, moves)
    _check(mismatches, "moves of the champion alias", expect.moves, len(moves))
    if expect.history_consistent is not None:
        problems = history.inconsistencies(state.moves)
        if expect.history_consistent and not state.moves:
            # An empty history is consistent whatever happened: it proves nothing.
            mismatches.append("champion history: empty, so its consistency proves nothing")
        if expect.history_consistent and problems:
            mismatches.append(f"champion history inconsistent: {'; '.join(problems)}")
        if not expect.history_consistent and not problems:
            mismatches.append("champion history: expected an inconsistency, found none")
    counts = Counter(state.outcomes)
    for outcome, count in expect.outcomes.items():
        _check(mismatches, f"runs whose notification says {outcome}", count, counts[outcome])
    versions_of = {label: version for version, label in sorted(state.labels.items(), reverse=True)}
    for label, tags in expect.tags.items():
        version = versions_of.get(label)
        actual = state.versions.get(version, {}) if version else {}
        for tag, value in tags.items():
            _check(mismatches, f"tag {tag} of {label}'s version", value, actual.get(tag))
    return mismatches
