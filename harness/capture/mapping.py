"""From a production run's evidence (``harness.capture.evidence``) to a scenario: the data it
saw, its trials as they ran, the faults that explain what went wrong, and what it ended with.

Pure: evidence in, scenario data and notes out. Every rule is a recognisable sign in what
Airflow, the cluster or the registry kept (the pod operator's dump of a failed pod, a pod's
events, the trainer's messages); what no rule explains goes to ``unmapped``, never dropped.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import yaml

from harness.capture.evidence import SECRET_NAME, sensor_logs, task_key
from ml_pipeline.decisions import DEPLOY_TASK_ID, SKIP_TASK_ID, UNCHANGED
from ml_pipeline.settings import RUN_OVERRIDABLE, PipelineSettings
from ml_pipeline.task_ids import (
    PIPELINE_TASK_IDS,
    SENSOR_TASK_ID,
    TRIAL_TASK_ID,
    VALIDATE_TASK_ID,
)
from ml_pipeline.trials import GPU_RESOURCE_KEY, HYPERPARAMETER_FLAGS, IMAGE_KEY, IMPUTE_KEY

# Settings the runner owns (its isolation ids) or the capture writes otherwise (trials).
_NOT_COPIED = {"data_prefix", "model_name", "experiment_name", "trials", "trial_grid"}
_NOT_COPIED |= {"trial_defaults"}
# A setting that names a production location, which a replay cannot reach.
_LOCATIONS = {"reference_evaluation_uri"}

# What a failed trial's try shows, and the fault that makes a replay's trial fail so: the
# first rule that matches a try's evidence (its log, with the pod operator's report of the
# trainer's container and the pod's events, and the cluster's events) wins.
TRIAL_SIGNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("unschedulable", re.compile(r"can never be scheduled")),
    ("oom", re.compile(r"Container 'base': state='TERMINATED', reason='OOMKilled'|OOMKilled")),
    ("missing_image", re.compile(r"ErrImageNeverPull|ErrImagePull|ImagePullBackOff|InvalidImage")),
    ("diverge", re.compile(r"Container 'base': state='TERMINATED', [^\n]*exit_code=4\b")),
    ("crash", re.compile(r"Container 'base': state='TERMINATED', [^\n]*exit_code=2\b")),
    ("node_lost", re.compile(r"NodeNotReady|NodeLost|Node is not ready|TaintManagerEviction")),
    # Stopped from outside while it trained: an eviction (a drain, node pressure, preemption).
    (
        "evicted",
        re.compile(
            r"\bEvicted\b|Killing - Stopping container base|Killing: Stopping container base"
        ),
    ),
)
# A fault that hits only a trial's first try (the retry then trains as usual).
FIRST_TRY_FAULTS = {"evicted", "node_lost"}
# S3 and MLflow failing a task's requests, as botocore and MLflow's client report it.
SERVICE_SIGNS: dict[str, re.Pattern[str]] = {
    "mlflow": re.compile(r"MlflowException: API request to|mlflow\S* .*Max retries exceeded"),
    "s3": re.compile(
        r"ServiceUnavailable|SlowDown|EndpointConnectionError|Could not connect to the endpoint"
        r"|botocore\.exceptions\.\w*(Connection|ReadTimeout)|S3 .*503|An error occurred \(503\)"
    ),
}
_RESET = re.compile(r"Connection reset|ConnectionResetError|RemoteDisconnected|Connection aborted")
_ROWS = re.compile(r"meets the data contract: (\d+) rows, null_rate ([0-9.]+)")
_MISSING_COLUMNS = re.compile(r"missing columns ([\w, ]+)")
_NOT_PARQUET = re.compile(r"not (a )?parquet|Parquet magic bytes not found|ArrowInvalid")
_CANARY = re.compile(r"NaN or infinite logits for \d+ of \d+ canary rows")
_POKE_WAIT = "Sleeping for"
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
    run, tis = evidence["dag_run"], evidence["task_instances"]
    for ti in tis:
        if ti["task_id"] not in PIPELINE_TASK_IDS:
            capture.unmapped.append(
                f"task {ti['task_id']} ({ti.get('state')}) is not a task of this pipeline; the "
                "replay runs this repository's DAG"
            )
    trials = _trials(evidence, capture)
    trial_faults = _trial_faults(evidence, capture)
    _odd_images(evidence, trial_faults, capture)
    _decided_before(evidence, capture)
    scenario: dict[str, Any] = {
        "name": name,
        "description": f"Captured from {evidence['dag_id']} run {evidence['run_id']} "
        f"({run.get('state')}).",
        "logical_date": _logical_date(run),
        "data": _data(evidence, capture),
        "registry": _registry(evidence, capture),
    }
    if trials:
        scenario["trials"] = trials
    settings = _settings(run.get("conf") or {}, capture)
    if settings:
        scenario["settings"] = settings
    faults = {"trials": trial_faults, "services": _service_faults(evidence, capture)}
    faults = {kind: found for kind, found in faults.items() if found}
    if faults:
        scenario["faults"] = faults
    if any(f["fault"] in ("node_lost", "missing_image") for f in trial_faults):
        scenario["requires"] = ["owned_cluster"]
    scenario["expect"] = _expectations(evidence, trial_faults, capture)
    capture.scenario = {key: value for key, value in scenario.items() if value != {}}
    for problem in evidence.get("unreadable", []):
        capture.unmapped.append(f"not read: {problem}")
    return capture


def _logical_date(run: dict[str, Any]) -> date:
    stamp = run.get("logical_date") or run.get("run_after") or run.get("start_date")
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).date()


def _logs(evidence: dict[str, Any], key: str) -> list[str]:
    return [log or "" for log in evidence["logs"].get(key, [])]


def _data(evidence: dict[str, Any], capture: Capture) -> dict[str, Any]:
    """Rows and null rate from validate's verdict, the schema's drift, arrival from the pokes."""
    data: dict[str, Any] = {}
    validation = "\n".join(_logs(evidence, VALIDATE_TASK_ID))
    found = _ROWS.search(validation)
    if found:
        data["rows"] = int(found[1])
        if float(found[2]) > 0:
            data["missing_rate"] = float(found[2])
    missing = _MISSING_COLUMNS.search(validation)
    if missing:
        columns = [c.strip() for c in missing[1].split(",") if c.strip()]
        data["renamed_columns"] = {column: f"{column}_renamed" for column in columns}
        capture.notes.append(
            f"validate_data found columns missing ({', '.join(columns)}): the replay's data "
            "lands them under other names"
        )
    if _NOT_PARQUET.search(validation):
        data["corrupted"] = True
    data.update(_arrival(evidence, capture))
    capture.notes.append(
        "the data is the testbed's seeded synthetic features (data.seed), with production's "
        "row count and null rate where validate_data logged them; set data.drift or "
        "data.label_noise if production's data had shifted"
    )
    return data


def _arrival(evidence: dict[str, Any], capture: Capture) -> dict[str, Any]:
    sensor = next((t for t in evidence["task_instances"] if t["task_id"] == SENSOR_TASK_ID), None)
    logs = sensor_logs(evidence)
    pokes = sum(log.count(_POKE_WAIT) for log in logs)
    if sensor is None or not logs:
        capture.unmapped.append("the sensor left no log: when the data landed is unknown")
        return {}
    if sensor.get("state") == "failed":
        capture.notes.append(f"the sensor failed after {pokes} empty poke(s): the data never lands")
        return {"arrival": "never"}
    if pokes:
        capture.notes.append(f"the sensor found no file {pokes} time(s): the data lands late")
        return {"arrival": {"after_pokes": pokes}}
    return {}


def _trials(evidence: dict[str, Any], capture: Capture) -> list[dict[str, Any]]:
    """Each trial's hyperparameters as its pod was rendered (the run's conf where no trial
    pod was rendered)."""
    rendered = sorted(
        (ti for ti in evidence["task_instances"] if ti["task_id"] == TRIAL_TASK_ID),
        key=lambda ti: ti.get("map_index", -1),
    )
    trials = []
    for ti in rendered:
        fields = ti.get("rendered_fields") or {}
        if not fields.get("arguments"):
            break
        trials.append(_trial_of(fields, ti.get("map_index", -1), capture))
    if len(trials) == len(rendered) and trials:
        capture.notes.append("trials: the hyperparameters each trial pod was rendered with")
        return trials
    conf_trials = (evidence["dag_run"].get("conf") or {}).get("trials")
    if conf_trials:
        capture.notes.append("trials: the run's conf (no trial pod was rendered)")
        trials = [dict(trial) for trial in conf_trials]
        for index, trial in enumerate(trials):
            for key in sorted(set(trial) & {IMAGE_KEY, GPU_RESOURCE_KEY}):
                capture.unmapped.append(
                    f"trial {index}'s {key} {trial.pop(key)!r} (from the conf) is production's; "
                    "the replay uses the testbed's"
                )
        return trials
    capture.notes.append("trials: none rendered, none in the conf; the replay uses its grid")
    return []


def _trial_of(fields: dict[str, Any], index: int, capture: Capture) -> dict[str, Any]:
    arguments = [str(a) for a in fields["arguments"]]
    flags = {flag: name for name, flag in HYPERPARAMETER_FLAGS.items()}
    trial: dict[str, Any] = {}
    for flag, value in itertools.pairwise(arguments):
        if flag in flags:
            trial[flags[flag]] = yaml.safe_load(value)
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
    """A trial whose pod ran another image than the others' (the pipeline's trainer image):
    explained by a missing_image fault, else listed (a replay runs the testbed's image)."""
    images = {
        ti.get("map_index"): (ti.get("rendered_fields") or {}).get("image")
        for ti in _tis(evidence)
        if ti["task_id"] == TRIAL_TASK_ID and (ti.get("rendered_fields") or {}).get("image")
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


def _failure_text(evidence: dict[str, Any], key: str, attempt: int) -> str:
    """What one try left: its log, and the events of the pods it made."""
    logs = _logs(evidence, key)
    log = logs[attempt] if attempt < len(logs) else ""
    pods = set(re.findall(r"Building pod (\S+) with labels", log))
    events = [
        f"{event.get('reason')}: {event.get('message')}"
        for event in evidence.get("events") or []
        if (event.get("involvedObject") or {}).get("name") in pods
    ]
    return "\n".join([log, *events])


def _failed_tries(evidence: dict[str, Any], key: str) -> list[int]:
    """The indexes (from 0) of the tries of ``key`` that failed."""
    tries = evidence["tries"].get(key, [])
    return [
        n for n, attempt in enumerate(tries) if attempt.get("state") in ("failed", "up_for_retry")
    ]


def _trial_faults(evidence: dict[str, Any], capture: Capture) -> list[dict[str, Any]]:
    faults = []
    for ti in evidence["task_instances"]:
        if ti["task_id"] != TRIAL_TASK_ID:
            continue
        key = task_key(ti["task_id"], ti.get("map_index"))
        found = []
        for attempt in _failed_tries(evidence, key):
            text = _failure_text(evidence, key, attempt)
            fault = next((f for f, sign in TRIAL_SIGNS if sign.search(text)), None)
            if fault is None:
                capture.unmapped.append(
                    f"{key} try {attempt + 1} failed, and no fault the testbed has explains it: "
                    f"{_first_error(text)}"
                )
            found.append(fault)
        known = [fault for fault in found if fault]
        if known:
            fault = Counter(known).most_common(1)[0][0]
            faults.append({"trial": ti["map_index"], "fault": fault})
            capture.notes.append(f"{key}: {fault} (its failed tries: {', '.join(known)})")
    faults += _unservable(evidence, capture)
    return sorted(faults, key=lambda f: f["trial"])


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
    re.compile(r"^\s*(?!AirflowException: Pod \S+ returned)\w+(Error|Exception): .*", re.M),
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
    """S3 or MLflow errors in tasks' logs: the service fails from the first task that saw
    them; bounded by the errors seen where every task that saw them recovered."""
    faults = []
    states = {task_key(t["task_id"], t.get("map_index")): t.get("state") for t in _tis(evidence)}
    order = [task for task in PIPELINE_TASK_IDS if task in states]
    for service, sign in SERVICE_SIGNS.items():
        hits = {task: _count(evidence, task, sign) for task in order}
        hits = {task: count for task, count in hits.items() if count}
        if not hits:
            continue
        first = next(iter(hits))
        text = "\n".join(log for task in hits for log in _logs(evidence, task))
        fault: dict[str, Any] = {
            "service": service,
            "fault": "reset" if _RESET.search(text) else "unavailable",
            "from_task": first,
        }
        if all(states.get(task) == "success" for task in hits):
            fault["requests"] = sum(hits.values())
        faults.append(fault)
        capture.notes.append(
            f"{service} errors in the logs of {', '.join(hits)}: a {fault['fault']} fault from "
            f"{first}"
        )
    return faults


def _tis(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    return evidence["task_instances"]


def _count(evidence: dict[str, Any], task: str, sign: re.Pattern[str]) -> int:
    return sum(1 for log in _logs(evidence, task) if sign.search(log))


def _registry(evidence: dict[str, Any], capture: Capture) -> dict[str, Any]:
    """A seeded champion where the run met one (the testbed trains its own)."""
    before = _champion_before(evidence, capture)
    if before in (None, "none"):
        return {}
    capture.notes.append(
        "the run met a champion: the replay's is the testbed's seeded one, trained on its "
        "default data; production's scores were "
        f"{_scores(evidence) or 'not recorded'}"
    )
    return {"champion": {}}


def _scores(evidence: dict[str, Any]) -> str:
    scores = (evidence["returns"].get("evaluate_model") or {}).get("scores") or {}
    return ", ".join(f"{role} {figures}" for role, figures in scores.items() if figures)


def _candidate(evidence: dict[str, Any]) -> str | None:
    registry = evidence.get("registry") or {}
    for version in registry.get("versions", []):
        if version["tags"].get("dag_run_id") == evidence["run_id"]:
            return version["version"]
    return None


def _champion_before(evidence: dict[str, Any], capture: Capture) -> str | None:
    """none or seeded: whether a champion was there when the run began (None: unknown)."""
    evaluation = evidence["returns"].get("evaluate_model")
    if evaluation:
        return "none" if evaluation.get("champion_version") is None else "seeded"
    registry = evidence.get("registry")
    if registry is None:
        capture.unmapped.append("the champion before the run is unknown (registry not read)")
        return None
    candidate = _candidate(evidence)
    others = [v for v in registry["versions"] if v["version"] != candidate]
    if registry.get("champion") and registry["champion"] != candidate:
        return "seeded"
    return "seeded" if others and registry.get("champion") else "none"


def _expectations(
    evidence: dict[str, Any], trial_faults: list[dict[str, Any]], capture: Capture
) -> dict[str, Any]:
    """What the run ended with, as expectations."""
    run = evidence["dag_run"]
    tasks, mapped = {}, Counter()
    for ti in _tis(evidence):
        if ti["task_id"] not in PIPELINE_TASK_IDS:
            continue
        state = ti.get("state") or "none"
        if ti["task_id"] == TRIAL_TASK_ID:
            mapped[state] += 1
            if state != "success":
                tasks[task_key(ti["task_id"], ti.get("map_index"))] = state
        else:
            tasks[ti["task_id"]] = state
    if mapped:
        tasks[TRIAL_TASK_ID] = dict(mapped)
    expect: dict[str, Any] = {"tasks": dict(sorted(tasks.items()))}
    if run.get("state") in ("success", "failed"):
        expect["run_state"] = run["state"]
    else:
        capture.unmapped.append(f"the run was {run.get('state')} when captured, not finished")
    expect["branch"] = _branch(tasks)
    # As a replay reads it: the best trial evaluate_model compared (none where it did not run).
    evaluation = evidence["returns"].get("evaluate_model") or {}
    best = (evaluation.get("best_trial") or {}).get("trial_id")
    if best is not None:
        expect["best_trial"] = int(best)
    before = _champion_before(evidence, Capture({}))
    if before is not None:
        after = "candidate" if tasks.get(DEPLOY_TASK_ID) == "success" else before
        expect["champion"] = {"before": before, "after": after}
    expect.update(_notification(evidence))
    expect.update(_sensor(evidence))
    oom = [f"{TRIAL_TASK_ID}[{f['trial']}]" for f in trial_faults if f["fault"] == "oom"]
    if oom:
        expect["pods"] = {"oom_killed": oom}
    return {key: value for key, value in expect.items() if value not in ({}, None)}


def _branch(tasks: dict[str, Any]) -> str:
    for task_id in (DEPLOY_TASK_ID, SKIP_TASK_ID):
        if tasks.get(task_id) == "success":
            return task_id
    return "none"


def _notification(evidence: dict[str, Any]) -> dict[str, Any]:
    record = evidence["returns"].get("send_notification")
    if not record:
        return {}
    wanted: dict[str, Any] = {"outcome": record.get("outcome")}
    wanted["failed_task"] = record.get("failed_task")
    if (record.get("trials") or {}).get("total"):
        wanted["trials"] = dict(record["trials"])
    return {"notification": wanted}


def _sensor(evidence: dict[str, Any]) -> dict[str, Any]:
    logs = sensor_logs(evidence)
    if not logs:
        return {}
    pokes = sum(log.count(_POKE_WAIT) for log in logs)
    sensor: dict[str, Any] = {"deferred": any(_DEFERRED in log for log in logs)}
    # The replay lands the file after as many pokes; one fewer is seen where it lands early.
    if pokes > 1:
        sensor["min_pokes"] = pokes - 1
    return {"sensor": sensor}


def _settings(conf: dict[str, Any], capture: Capture) -> dict[str, Any]:
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
        else:
            settings[key] = value
    return settings
