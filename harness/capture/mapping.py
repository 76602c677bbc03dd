"""From a production run's evidence (``harness.capture.evidence``) to a scenario: the data it
saw, its trials as they ran, the faults that explain what went wrong, and what it ended with.

Pure: evidence in, scenario data and notes out. Every rule is a recognisable sign in what
Airflow, the cluster or the registry kept (the pod operator's report of a failed pod, a pod's
events and status, the trainer's and the validator's messages); what no rule explains, and
what a replay could not reproduce, goes to ``unmapped``, never dropped.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from harness.capture.records import SECRET_NAME, pods_named, scrub_text
from harness.scenarios.outcome import sensor_pokes, task_key
from ml_pipeline.decisions import DEPLOY_TASK_ID, SKIP_TASK_ID, UNCHANGED
from ml_pipeline.settings import RUN_OVERRIDABLE, PipelineSettings
from ml_pipeline.task_ids import (
    NOTIFICATION_TASK_ID,
    PIPELINE_TASK_IDS,
    SENSOR_TASK_ID,
    TRIAL_TASK_ID,
    VALIDATE_TASK_ID,
)
from ml_pipeline.trials import GPU_RESOURCE_KEY, HYPERPARAMETER_FLAGS, IMAGE_KEY, IMPUTE_KEY

# Settings the runner owns (its isolation ids), or that name a production location.
_NOT_COPIED = {"data_prefix", "model_name", "experiment_name", "trials"}
_LOCATIONS = {"reference_evaluation_uri"}
# The trainer's container as the pod operator reports it when the pod failed.
_BASE = r"Container 'base': state='TERMINATED', reason='(?P<reason>[^']*)', exit_code=(?P<code>\d+)"
# What a failed trial's try shows, and the fault that makes a replay's trial fail so: the
# first rule that matches a try's evidence (its log, with the pod operator's report of the
# trainer's container and the pod's events, the pods' status and the cluster's events) wins.
TRIAL_SIGNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("unschedulable", re.compile(r"can never be scheduled")),
    ("oom", re.compile(r"reason='OOMKilled'|'reason': 'OOMKilled'")),
    ("missing_image", re.compile(r"ErrImageNeverPull|ErrImagePull|ImagePullBackOff|InvalidImage")),
    ("diverge", re.compile(_BASE.replace(r"(?P<code>\d+)", "4") + r"\b")),
    ("crash", re.compile(_BASE.replace(r"(?P<code>\d+)", "2") + r"\b")),
    ("node_lost", re.compile(r"NodeNotReady|NodeLost|Node is not ready|TaintManagerEviction")),
    # Stopped from outside while it trained, and not by Airflow (a timeout, a kill): an
    # eviction by the kubelet (Evicted) or through the Eviction API (a drain, preemption).
    ("evicted", re.compile(r"\bEvicted\b|DisruptionTarget|EvictionByEvictionAPI")),
)
# An Eviction API eviction on clusters without DisruptionTarget (before 1.26): the pod ended
# Failed after its containers were stopped from outside.
_STOPPED = re.compile(r"Killing - Stopping container base|Killing: Stopping container base")
_FAILED_POD = re.compile(r"Pod phase: Failed")
_KILLED_BY_AIRFLOW = re.compile(
    r"AirflowTaskTimeout|Task timed out|Received SIGTERM|externally set to|execution_timeout"
)
# Faults a replay causes on a trial's first try only (its retry trains as usual); the others
# fail every try.
FIRST_TRY_FAULTS = {"evicted", "node_lost"}
# S3 and MLflow failing a task's requests, as MLflow's client and botocore report it.
SERVICE_SIGNS: dict[str, re.Pattern[str]] = {
    "mlflow": re.compile(r"MlflowException: API request to"),
    "s3": re.compile(
        r"ServiceUnavailable|SlowDown|EndpointConnectionError|Could not connect to the endpoint"
        r"|An error occurred \((503|500|InternalError)\)"
    ),
}
_RESET = re.compile(r"Connection reset|ConnectionResetError|RemoteDisconnected|Connection aborted")
_ROWS = re.compile(r"meets the data contract: (\d+) rows, null_rate ([0-9.]+)")
_TOO_FEW = re.compile(r"rows (\d+) < min_rows (\d+)")
_NULL_RATE = re.compile(r"null_rate ([0-9.]+) > max_null_rate ([0-9.]+)")
_MISSING_COLUMNS = re.compile(r"missing columns ([\w, ]+)")
_NOT_PARQUET = re.compile(r"not (a )?parquet|Parquet magic bytes not found|ArrowInvalid")
_CANARY = re.compile(r"NaN or infinite logits for \d+ of \d+ canary rows")
_DEFERRED = "Pausing task as DEFERRED"


@dataclass
class Capture:
    """A scenario made from a run's evidence: its data (``scenario``), how each part was
    inferred (``notes``) and the evidence no rule maps (``unmapped``)."""

    scenario: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)


def scenario_from(evidence: dict[str, Any], name: str) -> Capture:
    """The scenario that replays the captured run, expecting what it ended with."""
    capture = Capture({})
    run = evidence["dag_run"]
    for ti in evidence["task_instances"]:
        if ti["task_id"] not in PIPELINE_TASK_IDS:
            capture.unmapped.append(
                f"task {ti['task_id']} ({ti.get('state')}) is not a task of this pipeline; the "
                "replay runs this repository's DAG"
            )
    trials = _trials(evidence, capture)
    trial_faults = _trial_faults(evidence, capture)
    services = _service_faults(evidence, capture)
    _odd_images(evidence, trial_faults, capture)
    _decided_before(evidence, capture)
    champion_before = _champion_before(evidence, capture)
    scenario: dict[str, Any] = {
        "name": name,
        "description": f"Captured from {evidence['dag_id']} run {evidence['run_id']} "
        f"({run.get('state')}).",
        "logical_date": _logical_date(run),
        "data": _data(evidence, capture),
        "registry": _registry(evidence, champion_before, capture),
        "trials": trials,
        "settings": {
            **_settings(run.get("conf") or {}, bool(trials), capture),
            **thresholds(evidence),
        },
        "faults": {
            kind: found
            for kind, found in (("trials", trial_faults), ("services", services))
            if found
        },
    }
    if any(f["fault"] in ("node_lost", "missing_image") for f in trial_faults):
        scenario["requires"] = ["owned_cluster"]
    scenario["expect"] = _expectations(evidence, trial_faults, champion_before, capture)
    _unexplained_failures(evidence, services, capture)
    capture.scenario = {key: value for key, value in scenario.items() if value not in ({}, [])}
    capture.unmapped += [f"not read: {problem}" for problem in evidence.get("unreadable", [])]
    capture.notes = [scrub_text(note) for note in capture.notes]
    capture.unmapped = [scrub_text(item) for item in capture.unmapped]
    return capture


def _moment(stamp: Any) -> datetime | None:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None


def _logical_date(run: dict[str, Any]) -> date:
    """The run's logical date (its run_after or start where Airflow gave it none)."""
    for key in ("logical_date", "run_after", "start_date", "queued_at"):
        moment = _moment(run.get(key))
        if moment:
            return moment.date()
    raise ValueError(f"run {run.get('dag_run_id')} has no date at all: not a run to capture")


def _tis(evidence: dict[str, Any], task_id: str | None = None) -> list[dict[str, Any]]:
    tis = evidence["task_instances"]
    return tis if task_id is None else [ti for ti in tis if ti["task_id"] == task_id]


def _logs(evidence: dict[str, Any], key: str) -> list[str]:
    return [log or "" for log in evidence["logs"].get(key, [])]


def _data(evidence: dict[str, Any], capture: Capture) -> dict[str, Any]:
    """Rows and null rate from validate's verdict, the schema's drift, arrival from the pokes."""
    data: dict[str, Any] = {}
    logs = _logs(evidence, VALIDATE_TASK_ID)
    validate = next(iter(_tis(evidence, VALIDATE_TASK_ID)), {})
    # The last try's verdict: an earlier try may have failed for another reason (S3 errors).
    verdict = logs[-1] if logs else ""
    refused = validate.get("state") == "failed"
    passed, too_few, nulls = (
        _ROWS.search(verdict),
        _TOO_FEW.search(verdict),
        _NULL_RATE.search(verdict),
    )
    rows = passed[1] if passed else too_few[1] if too_few else None
    null_rate = passed[2] if passed else nulls[1] if nulls else None
    if rows is not None:
        data["rows"] = int(rows)
    if null_rate is not None and float(null_rate) > 0:
        data["missing_rate"] = float(null_rate)
    missing = _MISSING_COLUMNS.search(verdict) if refused else None
    if missing:
        columns = [c.strip() for c in missing[1].split(",") if c.strip()]
        data["renamed_columns"] = {column: f"{column}_renamed" for column in columns}
        capture.notes.append(
            f"validate_data found columns missing ({', '.join(columns)}): the replay's data "
            "lands them under other names"
        )
    if refused and _NOT_PARQUET.search(verdict):
        data["corrupted"] = True
        capture.notes.append("validate_data could not read the file as parquet: corrupted")
    data.update(_arrival(evidence, capture))
    capture.notes.append(
        "the data is the testbed's seeded synthetic features (data.seed), with production's "
        "row count and null rate where validate_data logged them; set data.drift or "
        "data.label_noise if production's data had shifted"
    )
    return data


def thresholds(evidence: dict[str, Any]) -> dict[str, Any]:
    """The limits validate_data refused the data by (production's, which a replay must apply)."""
    verdict = (_logs(evidence, VALIDATE_TASK_ID) or [""])[-1]
    limits: dict[str, Any] = {}
    if too_few := _TOO_FEW.search(verdict):
        limits["min_rows"] = int(too_few[2])
    if nulls := _NULL_RATE.search(verdict):
        limits["max_null_rate"] = float(nulls[2])
    return limits


def _arrival(evidence: dict[str, Any], capture: Capture) -> dict[str, Any]:
    sensor = next(iter(_tis(evidence, SENSOR_TASK_ID)), None)
    logs = [log for log in _logs(evidence, SENSOR_TASK_ID) if log]
    if sensor is None or not logs:
        capture.unmapped.append("the sensor left no log: when the data landed is unknown")
        return {}
    pokes = sum(sensor_pokes(log) for log in logs)
    if sensor.get("state") == "failed":
        capture.notes.append(f"the sensor failed after {pokes} empty poke(s): the data never lands")
        return {"arrival": "never"}
    if pokes:
        capture.notes.append(f"the sensor found no file {pokes} time(s): the data lands late")
        return {"arrival": {"after_pokes": pokes}}
    return {}


def _trials(evidence: dict[str, Any], capture: Capture) -> list[dict[str, Any]]:
    """Each trial's hyperparameters as its pod was rendered; the run's conf (or its settings'
    grid) where a trial pod was not rendered."""
    # A trial task never expanded (an upstream task failed) has one instance, index -1.
    rendered = sorted(_expanded_trials(evidence), key=lambda ti: ti["map_index"])
    bare = [ti.get("map_index") for ti in rendered if not _rendered(ti).get("arguments")]
    if rendered and not bare:
        capture.notes.append("trials: the hyperparameters each trial pod was rendered with")
        return [_trial_of(_rendered(ti), ti.get("map_index", -1), capture) for ti in rendered]
    if bare:
        capture.unmapped.append(
            f"trial(s) {', '.join(map(str, bare))} have no rendered arguments, so the trials "
            "come from the run's conf or the testbed's grid"
        )
    conf_trials = (evidence["dag_run"].get("conf") or {}).get("trials")
    if not conf_trials:
        capture.notes.append("trials: none rendered, none in the conf: the settings' grid")
        return []
    capture.notes.append("trials: the run's conf")
    trials = [dict(trial) for trial in conf_trials]
    for index, trial in enumerate(trials):
        for key in sorted(set(trial) & {IMAGE_KEY, GPU_RESOURCE_KEY}):
            capture.unmapped.append(
                f"trial {index}'s {key} {trial.pop(key)!r} (from the conf) is production's; the "
                "replay uses the testbed's"
            )
    return trials


def _expanded_trials(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    return [ti for ti in _tis(evidence, TRIAL_TASK_ID) if (ti.get("map_index") or 0) >= 0]


def _rendered(ti: dict[str, Any]) -> dict[str, Any]:
    return ti.get("rendered_fields") or {}


def _number(text: str) -> Any:
    """A rendered argument back as the number it was (``1e-05`` too), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _trial_of(fields: dict[str, Any], index: int, capture: Capture) -> dict[str, Any]:
    arguments = [str(a) for a in fields["arguments"]]
    flags = {flag: name for name, flag in HYPERPARAMETER_FLAGS.items()}
    trial: dict[str, Any] = {}
    for flag, value in itertools.pairwise(arguments):
        if flag in flags:
            trial[flags[flag]] = _number(value)
    if "--no-impute-missing" in arguments:
        trial[IMPUTE_KEY] = False
    limits = (fields.get("container_resources") or {}).get("limits") or {}
    defaults = PipelineSettings()
    gpus = {name: count for name, count in limits.items() if name.startswith("nvidia.com/")}
    if set(gpus) - {defaults.gpu_resource_name}:
        capture.unmapped.append(
            f"trial {index} asked for {', '.join(gpus)}: a MIG profile needs the scenario's "
            "cluster.gpu_resource and the trial's gpu_resource, which the capture does not set"
        )
    count = int(gpus.get(defaults.gpu_resource_name, defaults.gpus_per_trial))
    if count != defaults.gpus_per_trial:
        trial["gpus"] = count
    return trial


def _odd_images(
    evidence: dict[str, Any], trial_faults: list[dict[str, Any]], capture: Capture
) -> None:
    """A trial whose pod ran another image than the others (the pipeline's trainer image):
    explained by a missing_image fault, else listed (a replay runs the testbed's image)."""
    images = {
        ti.get("map_index"): _rendered(ti)["image"]
        for ti in _tis(evidence, TRIAL_TASK_ID)
        if _rendered(ti).get("image")
    }
    if not images:
        return
    usual = Counter(images.values()).most_common(1)[0][0]
    missing = {f["trial"] for f in trial_faults if f["fault"] == "missing_image"}
    for index, image in sorted(images.items()):
        if image == usual:
            continue
        line = f"trial {index} ran image {image}, the others {usual}"
        if index in missing:
            capture.notes.append(f"{line}: it could not be pulled (missing_image)")
        else:
            capture.unmapped.append(f"{line}: the replay runs the testbed's trainer image")


def _decided_before(evidence: dict[str, Any], capture: Capture) -> None:
    """A run that found its own model champion already (it was cleared or run again)."""
    evaluation = evidence["returns"].get("evaluate_model") or {}
    if evaluation.get("decision") == UNCHANGED:
        capture.unmapped.append(
            "evaluate_model found this run's model champion already (the run was cleared or "
            "run again): a one-run scenario cannot replay that; write a timeline with a "
            "clear_tasks or clear_run action (see rerun_after_deploy)"
        )


def _pod_reports(evidence: dict[str, Any], names: list[str]) -> list[str]:
    """The pods' status (those still on the cluster) and events, as lines the signs read."""
    lines = []
    for pod in evidence.get("pods") or []:
        if pod["metadata"]["name"] not in names:
            continue
        status = pod.get("status") or {}
        lines.append(f"Pod phase: {status.get('phase')}, reason: {status.get('reason')}")
        for container in status.get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == "base" and ended:
                lines.append(
                    f"Container 'base': state='TERMINATED', reason='{ended.get('reason')}', "
                    f"exit_code={ended.get('exitCode')}"
                )
        lines += [
            f"condition {c.get('type')}: {c.get('reason')}" for c in status.get("conditions") or []
        ]
    for event in evidence.get("events") or []:
        if (event.get("involvedObject") or {}).get("name") in names:
            lines.append(f"{event.get('reason')}: {event.get('message')}")
    return lines


def _try_text(evidence: dict[str, Any], key: str, attempt: int) -> str:
    """What try ``attempt`` (from 1) left: its log, its pods' status and events."""
    logs = _logs(evidence, key)
    log = logs[attempt - 1] if 0 < attempt <= len(logs) else ""
    return "\n".join([log, *_pod_reports(evidence, pods_named(log))])


def _try_fault(text: str) -> str | None:
    """The fault one failed try's evidence shows, or None."""
    fault = next((f for f, sign in TRIAL_SIGNS if sign.search(text)), None)
    if fault is None and _STOPPED.search(text) and _FAILED_POD.search(text):
        base = re.search(_BASE, text)
        stopped = base is None or base["reason"] != "OOMKilled"
        if stopped and not _KILLED_BY_AIRFLOW.search(text):
            fault = "evicted"
    return fault


def _failed_tries(evidence: dict[str, Any], key: str) -> list[int]:
    """The try numbers (from 1) of ``key``'s tries that failed."""
    failed = ("failed", "up_for_retry")
    tries = evidence["tries"].get(key, [])
    return [t["try_number"] for t in tries if t.get("state") in failed and t.get("try_number")]


def _trial_faults(evidence: dict[str, Any], capture: Capture) -> list[dict[str, Any]]:
    faults = []
    for ti in _expanded_trials(evidence):
        key, state = task_key(ti), ti.get("state")
        if state == "failed" and not _failed_tries(evidence, key):
            capture.unmapped.append(f"{key} failed, but Airflow kept no failed try of it")
            continue
        causes: dict[int, str | None] = {}
        for attempt in _failed_tries(evidence, key):
            text = _try_text(evidence, key, attempt)
            causes[attempt] = _try_fault(text)
            if causes[attempt] is None:
                capture.unmapped.append(
                    f"{key} try {attempt} failed, and no fault the testbed has explains it: "
                    f"{_first_error(text)}"
                )
        fault = _fault_for(key, state, causes, ti.get("try_number") or 0, capture)
        if fault:
            faults.append({"trial": ti["map_index"], "fault": fault})
    faults += _unservable(evidence, capture)
    return sorted(faults, key=lambda f: f["trial"])


def _fault_for(
    key: str, state: str | None, causes: dict[int, str | None], tries: int, capture: Capture
) -> str | None:
    """The one fault that makes a replayed trial end as production's did, or None (listed
    where the failures are known but no fault of the testbed fails the tries so)."""
    known = [cause for cause in causes.values() if cause]
    if not known or len(known) < len(causes):
        return None
    fault = known[0]
    if fault in FIRST_TRY_FAULTS:
        fits = state == "success" and list(causes) == [1] and tries >= 2
    else:
        fits = state == "failed" and set(known) == {fault} and len(known) == tries
    if fits:
        capture.notes.append(f"{key}: {fault} (its failed tries: {', '.join(known)})")
        return fault
    capture.unmapped.append(
        f"{key} ended {state} after {tries} tries, failing with {', '.join(known)}: no fault of "
        f"the testbed fails tries so ({', '.join(sorted(FIRST_TRY_FAULTS))} fail the first try "
        "only, the others every try)"
    )
    return None


def _unservable(evidence: dict[str, Any], capture: Capture) -> list[dict[str, Any]]:
    """The best trial's model refused by deploy's canary: an unservable fault on it."""
    if not any(_CANARY.search(log) for log in _logs(evidence, DEPLOY_TASK_ID)):
        return []
    best = (evidence["returns"].get("select_best_model") or {}).get("trial_id")
    if best is None:
        capture.unmapped.append("deploy's canary refused a model, but the best trial is unknown")
        return []
    capture.notes.append(f"deploy's canary refused trial {best}'s model: unservable")
    return [{"trial": int(best), "fault": "unservable"}]


_REPORTS = (
    # The pod operator's report of the trainer's container, then the exception raised (other
    # than the operator's own "returned a failure"), then any error line.
    re.compile(r"Container 'base': state='TERMINATED'.*"),
    re.compile(r"(?<![\w.])(?!AirflowException: Pod \S+ returned)[\w.]*(Error|Exception): .*"),
    re.compile(r".*\b(Error|error|Exception)\b.*"),
)


def _first_error(text: str) -> str:
    """The line of a failed try that best says why it failed."""
    for report in _REPORTS:
        found = report.search(text)
        if found:
            return found[0].strip()[:300]
    return "(no error line in its log)"


def _service_faults(evidence: dict[str, Any], capture: Capture) -> list[dict[str, Any]]:
    """S3 or MLflow errors in tasks' logs: the service fails from the first task that met
    them, bounded by the errors seen where every task that met them recovered."""
    faults = []
    states = {task_key(ti): ti.get("state") for ti in _tis(evidence)}
    order = sorted(states, key=_pipeline_position)
    for service, sign in SERVICE_SIGNS.items():
        hits = {key: sum(len(sign.findall(log)) for log in _logs(evidence, key)) for key in order}
        hits = {key: count for key, count in hits.items() if count}
        if not hits:
            continue
        first = next(iter(hits))
        text = "\n".join(log for key in hits for log in _logs(evidence, key))
        fault: dict[str, Any] = {
            "service": service,
            "fault": "reset" if _RESET.search(text) else "unavailable",
            "from_task": first.split("[", 1)[0],
        }
        recovered = [key for key in hits if states.get(key) == "success"]
        if recovered and len(recovered) < len(hits):
            capture.unmapped.append(
                f"{service} errors in the logs of {', '.join(hits)}: some of those tasks failed "
                f"and some recovered ({', '.join(recovered)}), which no fault of the testbed "
                "reproduces; no fault written"
            )
            continue
        if recovered:
            fault["requests"] = sum(hits.values())
        faults.append(fault)
        capture.notes.append(
            f"{service} errors in the logs of {', '.join(hits)}: a {fault['fault']} fault from "
            f"{fault['from_task']}"
            + (f" for {fault['requests']} failed request(s)" if "requests" in fault else "")
        )
    return faults


def _pipeline_position(key: str) -> tuple[int, str]:
    task_id = key.split("[", 1)[0]
    order = list(PIPELINE_TASK_IDS)
    return (order.index(task_id) if task_id in order else len(order), key)


def _unexplained_failures(
    evidence: dict[str, Any], services: list[dict[str, Any]], capture: Capture
) -> None:
    """Failed tasks other than trials whose failure no mapped sign explains."""
    hit = {fault["from_task"] for fault in services}
    for ti in _tis(evidence):
        task_id, key = ti["task_id"], task_key(ti)
        if ti.get("state") != "failed" or task_id == TRIAL_TASK_ID:
            continue
        text = "\n".join(_logs(evidence, key))
        explained = (
            task_id in hit
            or any(sign.search(text) for sign in SERVICE_SIGNS.values())
            or (task_id == SENSOR_TASK_ID and sensor_pokes(text))
            or (task_id == VALIDATE_TASK_ID and _validation_explained(text))
            or (task_id == DEPLOY_TASK_ID and _CANARY.search(text))
            # It reports the run's first failure, then fails the run on purpose.
            or (task_id == NOTIFICATION_TASK_ID and _an_earlier_task_failed(evidence))
        )
        if not explained:
            capture.unmapped.append(
                f"{key} failed, and no fault the testbed has explains it: {_first_error(text)}"
            )


def _validation_explained(text: str) -> bool:
    signs = (_TOO_FEW, _NULL_RATE, _MISSING_COLUMNS, _NOT_PARQUET)
    return any(sign.search(text) for sign in signs)


def _an_earlier_task_failed(evidence: dict[str, Any]) -> bool:
    return any(
        ti.get("state") in ("failed", "upstream_failed") and ti["task_id"] != NOTIFICATION_TASK_ID
        for ti in _tis(evidence)
    )


def _registry(evidence: dict[str, Any], before: str | None, capture: Capture) -> dict[str, Any]:
    """A seeded champion where the run met one (the testbed trains its own)."""
    if before != "seeded":
        return {}
    scores = (evidence["returns"].get("evaluate_model") or {}).get("scores") or {}
    shown = ", ".join(f"{role} {figures}" for role, figures in scores.items() if figures)
    capture.notes.append(
        "the run met a champion: the replay's is the testbed's seeded one, trained on its "
        f"default data, so a comparison may come out otherwise; production's scores: "
        f"{shown or 'not recorded'}"
    )
    return {"champion": {}}


def _champion_before(evidence: dict[str, Any], capture: Capture) -> str | None:
    """none or seeded: whether a champion was there when the run began (None: unknown).

    evaluate_model's return says; without it, the registry: a version other than the run's
    own, made before the run started, where the model has a champion."""
    evaluation = evidence["returns"].get("evaluate_model")
    if evaluation:
        return "none" if evaluation.get("champion_version") is None else "seeded"
    registry = evidence.get("registry")
    if registry is None:
        capture.unmapped.append("the champion before the run is unknown (registry not read)")
        return None
    run = evidence["dag_run"]
    started = _moment(run.get("start_date") or run.get("run_after") or run.get("queued_at"))
    start_ms = started.timestamp() * 1000 if started else float("inf")
    older = [
        v
        for v in registry["versions"]
        if v["tags"].get("dag_run_id") != evidence["run_id"] and (v["created_ms"] or 0) < start_ms
    ]
    before = "seeded" if older and registry.get("champion") else "none"
    capture.notes.append(
        f"champion before the run: {before}, from the registry (evaluate_model did not run): "
        f"{len(older)} version(s) older than the run, champion now v{registry.get('champion')}"
    )
    return before


def _expectations(
    evidence: dict[str, Any],
    trial_faults: list[dict[str, Any]],
    before: str | None,
    capture: Capture,
) -> dict[str, Any]:
    """What the run ended with, as expectations."""
    tasks: dict[str, Any] = {}
    mapped: Counter[str] = Counter()
    for ti in _tis(evidence):
        if ti["task_id"] not in PIPELINE_TASK_IDS:
            continue
        state = ti.get("state") or "none"
        if ti["task_id"] == TRIAL_TASK_ID and (ti.get("map_index") or 0) < 0:
            tasks[TRIAL_TASK_ID] = state  # never expanded: one state, as for any task
        elif ti["task_id"] == TRIAL_TASK_ID:
            mapped[state] += 1
            if state != "success":
                tasks[task_key(ti)] = state
        else:
            tasks[ti["task_id"]] = state
    if mapped:
        tasks[TRIAL_TASK_ID] = dict(mapped)
    run = evidence["dag_run"]
    expect: dict[str, Any] = {"run_state": run["state"], "tasks": dict(sorted(tasks.items()))}
    expect["branch"] = next(
        (task for task in (DEPLOY_TASK_ID, SKIP_TASK_ID) if tasks.get(task) == "success"), "none"
    )
    # As a replay reads it: the best trial evaluate_model compared (none where it did not run).
    evaluation = evidence["returns"].get("evaluate_model") or {}
    best = (evaluation.get("best_trial") or {}).get("trial_id")
    if best is not None:
        expect["best_trial"] = int(best)
        if any(f["trial"] != int(best) and f["fault"] in FIRST_TRY_FAULTS for f in trial_faults):
            capture.notes.append(
                "an evicted or lost trial trains longer in the replay (60 epochs, to be hit "
                "mid-training), so the best trial may differ"
            )
    if before is not None:
        after = "candidate" if tasks.get(DEPLOY_TASK_ID) == "success" else before
        expect["champion"] = {"before": before, "after": after}
    expect.update(_notification(evidence))
    expect.update(_sensor(evidence))
    oom = [f"{TRIAL_TASK_ID}[{f['trial']}]" for f in trial_faults if f["fault"] == "oom"]
    if oom:
        expect["pods"] = {"oom_killed": oom}
    return expect


def _notification(evidence: dict[str, Any]) -> dict[str, Any]:
    record = evidence["returns"].get(NOTIFICATION_TASK_ID)
    if not record:
        return {}
    wanted: dict[str, Any] = {"outcome": record.get("outcome")}
    wanted["failed_task"] = record.get("failed_task")
    if (record.get("trials") or {}).get("total"):
        wanted["trials"] = dict(record["trials"])
    return {"notification": wanted}


def _sensor(evidence: dict[str, Any]) -> dict[str, Any]:
    logs = [log for log in _logs(evidence, SENSOR_TASK_ID) if log]
    if not logs:
        return {}
    pokes = sum(sensor_pokes(log) for log in logs)
    sensor: dict[str, Any] = {"deferred": any(_DEFERRED in log for log in logs)}
    # The replay lands the file after as many pokes; one fewer is seen where it lands early.
    if pokes > 1:
        sensor["min_pokes"] = pokes - 1
    return {"sensor": sensor}


def _settings(conf: dict[str, Any], rendered_trials: bool, capture: Capture) -> dict[str, Any]:
    """The run's conf settings a scenario may set; the others named in ``unmapped``."""
    settings = {}
    for key, value in sorted(conf.items()):
        if key in _NOT_COPIED:
            continue
        if SECRET_NAME.search(key):
            capture.unmapped.append(f"conf {key}: looks like a secret, so its value is not written")
        elif key in _LOCATIONS:
            capture.unmapped.append(f"conf {key}: a production location the replay cannot read")
        elif key not in RUN_OVERRIDABLE:
            capture.unmapped.append(f"conf {key}: not a setting a run may override; left out")
        elif key in ("trial_grid", "trial_defaults") and rendered_trials:
            capture.notes.append(f"conf {key}: left out, the trials are written as they ran")
        else:
            settings[key] = value
    return settings
