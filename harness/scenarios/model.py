"""What a scenario file says: a day in production and what the pipeline must decide about it.

A scenario is YAML validated against these models (``scenarios/scenario.schema.json`` is their
JSON Schema, for editors). ``load_scenario`` turns any problem into a ``ScenarioError`` naming the
file, the field and what to do, before anything is started.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.pipeline_settings import REPO_ROOT
from ml_pipeline.settings import RUN_OVERRIDABLE, PipelineSettings, SettingsError, for_run
from ml_pipeline.task_ids import MAPPED_TASK_IDS, PIPELINE_TASK_IDS
from trainer.contract import FEATURE_COLUMNS, LABEL_COLUMN

SCENARIOS_DIR = REPO_ROOT / "scenarios"
SCHEMA_PATH = SCENARIOS_DIR / "scenario.schema.json"
# Scenario names become parts of run ids, pod labels and model names.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
# A run's name within its scenario; short, since it becomes part of the run id (a pod label).
RUN_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,19}$"
# How the champion alias is named in expectations besides run names.
CHAMPION_LABELS = ("none", "seeded", "candidate")
NOTIFICATION_OUTCOMES = Literal["deployed", "skipped", "unchanged", "failed"]
TASK_STATES = Literal[
    "success", "failed", "skipped", "upstream_failed", "up_for_retry", "removed", "none"
]
TRIAL_FAULTS = Literal[
    "diverge",
    "oom",
    "crash",
    "unschedulable",
    "missing_image",
    "evicted",
    "node_lost",
    "gpu_unhealthy",
    "unservable",
]
# "task_id" or "task_id[3]" (one map index of a mapped task).
_TASK_KEY = re.compile(r"^(?P<task_id>[A-Za-z0-9_.]+)(\[(?P<index>\d+)\])?$")


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dataset(_Strict):
    """A features file made by the seeded fixture generator (fixtures/datagen.py)."""

    rows: int = Field(3000, ge=1, description="rows of the features file")
    seed: int = Field(5, description="the generator's seed: same seed, same file")
    label_noise: float = Field(0.0, ge=0, le=1, description="fraction of labels flipped")
    drift: float = Field(0.0, ge=0, description="covariate shift, in standard deviations")
    missing_rate: float = Field(0.0, ge=0, le=1, description="fraction of cells left empty")


class AfterPokes(_Strict):
    """The file lands once the sensor has deferred and poked this many times without it."""

    after_pokes: int = Field(ge=1)


class AfterSeconds(_Strict):
    """The file lands this long after the run was triggered."""

    after_seconds: float = Field(gt=0)


class Data(Dataset):
    """The day's features and when they land in S3."""

    arrival: Literal["on_time", "never"] | AfterPokes | AfterSeconds = Field(
        "on_time", description="on_time, never, {after_pokes: N} or {after_seconds: S}"
    )
    corrupted: bool = Field(False, description="land bytes that are not parquet at all")
    renamed_columns: dict[str, str] = Field(
        default_factory=dict, description="schema drift: column -> the name it lands under"
    )

    @field_validator("renamed_columns")
    @classmethod
    def _known_columns(cls, renamed: dict[str, str]) -> dict[str, str]:
        known = (*FEATURE_COLUMNS, LABEL_COLUMN)
        unknown = sorted(set(renamed) - set(known))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not columns of the features file ({', '.join(known)})"
            )
        return renamed


class Champion(_Strict):
    """A champion trained by the trainer itself before the run, registered under ``champion``."""

    trained_on: Dataset = Field(default_factory=Dataset)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="over the profile's first trial"
    )


class Registry(_Strict):
    """The model registry before the run: no champion (the default), or a trained one."""

    champion: Champion | None = None


class TrialFault(_Strict):
    """A fault that happens for real to one trial's pod.

    diverge: a learning rate that sends the loss to NaN (the trainer exits 4); oom: a network
    too large for the trial's memory limit (the kernel kills the container); crash: arguments
    the trainer rejects, so the container exits non-zero at once; unschedulable: a GPU request
    no node can meet, so the trial fails at once, before any pod is made, without a retry;
    missing_image: an image no node has and none can pull, so the pod cannot start; evicted: the
    harness evicts the first try's pod through the Eviction API while it trains (what a drain
    does), and the task's retry must train it again; node_lost: the node running the first try's
    pod goes away while it trains (its kubelet and its pods' containers are killed, as on a power
    loss) and comes back once Kubernetes has marked it NotReady and ``seconds`` have passed.
    Every pod on that node is lost with it, so a scenario with this fault runs alone.
    gpu_unhealthy: the GPU under the first try's pod fails while it trains, as an XID 79 (a GPU
    fallen off the bus) does: the device turns Unhealthy in its node's device plugin (the
    kubelet stops handing it out) and the trainer's container is killed; the task's retry must
    train on another GPU. The device comes back after ``seconds`` (null: when the run ends).
    unservable: the trial trains and scores as usual, but its packaged model lacks the
    imputation step, so a row with a missing feature gets NaN logits: deploy's canary refuses it.
    """

    trial: int = Field(ge=0, description="map index of the trial")
    fault: TRIAL_FAULTS
    seconds: float | None = Field(
        None,
        gt=0,
        le=600,
        description="node_lost: how long the node stays away, at least; gpu_unhealthy: how long "
        "the GPU stays Unhealthy",
    )

    @model_validator(mode="after")
    def _seconds_for_node_lost(self) -> TrialFault:
        if self.seconds is not None and self.fault not in ("node_lost", "gpu_unhealthy"):
            raise ValueError(
                f"seconds: only node_lost and gpu_unhealthy faults last a while, not {self.fault}"
            )
        return self


class ServiceFault(_Strict):
    """S3 or MLflow failing this replay's own requests for a while (its data, its model).

    The stack's fault proxy (harness.services.fault_proxy) answers them 503 (``unavailable``)
    or resets the connection (``reset``, as a crashed server does), from the moment
    ``from_task`` has started, for ``seconds`` after the first request it failed and for at
    most ``requests`` requests, whichever ends first (both null: until the run ends). A count
    of requests ends the outage at the same point of the run on every machine; a time does
    not, since how soon a retry comes depends on the machine's speed. Other scenarios running
    at the same time are not affected.
    """

    service: Literal["s3", "mlflow"]
    fault: Literal["unavailable", "reset"] = "unavailable"
    from_task: str = Field(description="task id: the fault begins once this task has started")
    seconds: float | None = Field(None, gt=0, description="null: no time bound")
    requests: int | None = Field(None, ge=1, description="null: no bound on failed requests")

    @field_validator("from_task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        task_id, index = split_task_key(task)
        if index is not None:
            raise ValueError(f"{task!r}: name the task without a map index")
        return task_id


class Faults(_Strict):
    """Faults injected into the run."""

    trials: tuple[TrialFault, ...] = ()
    services: tuple[ServiceFault, ...] = ()

    @property
    def take_a_node_down(self) -> bool:
        """Whether a fault takes a whole node (and every pod on it) away."""
        return any(fault.fault == "node_lost" for fault in self.trials)

    @property
    def fail_a_gpu(self) -> bool:
        """Whether a fault turns a GPU Unhealthy (fewer GPUs for every pod meanwhile)."""
        return any(fault.fault == "gpu_unhealthy" for fault in self.trials)


# The pipeline's whole GPUs, or a MIG profile of harness.cluster.device_plugin's MIG_RESOURCES.
GPU_RESOURCES = Literal["nvidia.com/gpu", "nvidia.com/mig-1g.5gb", "nvidia.com/mig-3g.20gb"]


class Cluster(_Strict):
    """The cluster as this scenario needs it; restored afterwards."""

    gpu_capacity: int | None = Field(None, ge=1, description="simulated GPUs on the GPU node")
    gpu_replicas: int | None = Field(
        None,
        ge=2,
        le=16,
        description="time-slicing: each GPU is handed out this many times, to pods that then "
        "share it (needs gpu_capacity and requires: device_plugin)",
    )

    gpu_resource: GPU_RESOURCES | None = Field(
        None,
        description="what the GPU node's devices are advertised as: nvidia.com/gpu, or a MIG "
        "profile (nvidia.com/mig-1g.5gb) that partitions each of its gpu_capacity GPUs into "
        "one instance of that profile, as NVIDIA's mixed strategy advertises them (needs "
        "gpu_capacity and requires: device_plugin; trials ask for it with gpu_resource)",
    )

    @model_validator(mode="after")
    def _replicas_of_a_count(self) -> Cluster:
        if self.gpu_replicas is not None and self.gpu_capacity is None:
            raise ValueError("gpu_replicas: say how many GPUs are sliced (gpu_capacity)")
        if self.gpu_resource is not None and self.gpu_capacity is None:
            raise ValueError("gpu_resource: say how many GPUs are partitioned (gpu_capacity)")
        if self.gpu_resource is not None and self.gpu_replicas is not None:
            raise ValueError("gpu_resource and gpu_replicas: slice whole GPUs or MIG, not both")
        return self


class ChampionExpectation(_Strict):
    """Where the ``champion`` alias points before and after the run.

    ``none``, ``seeded`` (the scenario's seeded champion), ``candidate`` (the version this run
    registered) or the name of another run of the scenario (the version that run registered).
    """

    before: str | None = None
    after: str | None = None


class EvaluationExpectation(_Strict):
    """What evaluate_model decided, and which champion it compared the candidate with.

    ``better_on_today``: which model scored higher on today's held-out split (score_models
    scores both on the same rows). ``stale_comparison``: what comparing the candidate's score
    today with the champion's figure logged when it was trained (the pipeline before models
    carried their preprocessing) would have decided, the run's floor and margin included; a
    scenario about shifted data states it, so the data surely exercises that comparison.
    """

    decision: Literal["deploy", "skip", "unchanged"] | None = None
    compared_with: str | None = Field(
        None, description="the champion compared with: none, seeded, candidate or a run's name"
    )
    reason_contains: tuple[str, ...] = ()
    better_on_today: Literal["candidate", "champion"] | None = None
    stale_comparison: Literal["deploy", "skip"] | None = None


class SensorExpectation(_Strict):
    """What the S3 sensor did."""

    deferred: bool | None = None
    min_pokes: int | None = Field(None, ge=0, description="pokes that found no file, at least")


class NotificationExpectation(_Strict):
    """What the notification record in S3 says."""

    outcome: NOTIFICATION_OUTCOMES | None = None
    failed_task: str | None = Field(None, description="null asserts that no task failed")
    summary_contains: tuple[str, ...] = ()
    trials: dict[Literal["total", "succeeded", "failed"], int] = Field(default_factory=dict)


class PodExpectation(_Strict):
    """What the pods did on the cluster."""

    trial_pods: int | None = Field(None, ge=0, description="trial pods created, all tries")
    trials_on_gpu_nodes: bool | None = None
    gpu_pods_within_capacity: bool | None = Field(
        None, description="never more GPU pods running at once than the GPU capacity"
    )
    distinct_devices: bool | None = Field(
        None,
        description="each GPU pod was given as many devices as it asked for, and no two pods "
        "that ran at the same time shared one (where a device plugin allocates them)",
    )
    waited_for_gpu: bool | None = Field(
        None, description="some pod stayed Pending for Insufficient nvidia.com/gpu"
    )
    min_gpu_wait_seconds: float | None = Field(
        None, ge=0, description="the longest wait of a GPU pod to be scheduled, at least"
    )
    exit_codes: dict[str, list[int | None]] = Field(
        default_factory=dict,
        description="task[index] -> exit codes of its pods, in order (null: never ran)",
    )
    oom_killed: tuple[str, ...] = Field((), description="task[index] whose pod was OOMKilled")
    moved_off_failed_gpu: tuple[str, ...] = Field(
        (),
        description="task[index] whose GPU failed under its pod (gpu_unhealthy) and whose later "
        "pod trained on other GPUs",
    )
    waiting_reasons: dict[str, str] = Field(
        default_factory=dict,
        description="task[index] -> a reason its container waited with (e.g. ErrImageNeverPull)",
    )
    rejected_at_admission: tuple[str, ...] = Field(
        (),
        description="task[index] one of whose pods its node's kubelet refused at admission "
        "(UnexpectedAdmissionError, OutOf...: Failed before any container ran), where a device "
        "plugin allocates the GPUs",
    )


MappedCounts = dict[TASK_STATES, int]


class Expectations(_Strict):
    """What the run must end with. Only what is written here is compared; a field written as
    ``null`` asserts that the run has none (e.g. ``notification.failed_task: null``)."""

    run_state: Literal["success", "failed"] | None = None
    tasks: dict[str, TASK_STATES | MappedCounts] = Field(
        default_factory=dict,
        description=(
            "task_id: state; mapped task_id: {state: count}, exact (a state left out: none);"
            " task_id[i]: state"
        ),
    )
    branch: Literal["deploy_model", "skip_deployment", "none"] | None = None
    best_trial: int | None = Field(None, ge=0, description="map index select_best_model chose")
    champion: ChampionExpectation = Field(default_factory=ChampionExpectation)
    candidate_tags: dict[str, str] = Field(
        default_factory=dict, description="tags on the version this run registered"
    )
    evaluation: EvaluationExpectation = Field(default_factory=EvaluationExpectation)
    sensor: SensorExpectation = Field(default_factory=SensorExpectation)
    notification: NotificationExpectation = Field(default_factory=NotificationExpectation)
    pods: PodExpectation = Field(default_factory=PodExpectation)
    tries: dict[str, int] = Field(
        default_factory=dict, description="task or task[index] -> how many tries it took"
    )
    logs: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="task or task[index] -> texts its task logs (all tries) must contain",
    )
    logs_lack: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="task or task[index] -> texts its task logs (all tries) must not contain",
    )

    @field_validator("logs", "logs_lack", "tries")
    @classmethod
    def _known_keys(cls, by_task: dict[str, Any]) -> dict[str, Any]:
        for key in by_task:
            split_task_key(key)
        return by_task

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: dict[str, Any]) -> dict[str, Any]:
        for key, expected in tasks.items():
            task_id, index = split_task_key(key)
            if isinstance(expected, dict) and (index is not None or task_id not in MAPPED_TASK_IDS):
                raise ValueError(
                    f"{key}: counts by state are for mapped tasks ({', '.join(MAPPED_TASK_IDS)})"
                )
        return tasks

    @field_validator("pods")
    @classmethod
    def _known_pod_tasks(cls, pods: PodExpectation) -> PodExpectation:
        for key in [*pods.exit_codes, *pods.oom_killed, *pods.waiting_reasons]:
            split_task_key(key)
        return pods

    @property
    def names_an_end(self) -> bool:
        """Whether a run state or a notification outcome is expected (a run's headline)."""
        return self.run_state is not None or self.notification.outcome is not None


def split_task_key(key: str) -> tuple[str, int | None]:
    """``"task[2]"`` -> ``("task", 2)``, ``"task"`` -> ``("task", None)``; unknown tasks raise."""
    match = _TASK_KEY.match(key)
    if not match or match["task_id"] not in PIPELINE_TASK_IDS:
        raise ValueError(
            f"{key!r} names no task of the pipeline; its tasks are: {', '.join(PIPELINE_TASK_IDS)}"
            " (a mapped task's index as task_id[i])"
        )
    index = match["index"]
    if index is not None and match["task_id"] not in MAPPED_TASK_IDS:
        raise ValueError(f"{key!r}: only mapped tasks ({', '.join(MAPPED_TASK_IDS)}) have indexes")
    return match["task_id"], None if index is None else int(index)


def _check_run_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as a run's dag_run.conf may carry them (the runner owns the ids)."""
    owned = {"data_prefix", "model_name", "experiment_name", "trials"}
    not_allowed = sorted(set(settings) - (RUN_OVERRIDABLE - owned))
    if not_allowed:
        raise ValueError(
            f"{', '.join(not_allowed)} cannot be set by a scenario: a run may set "
            f"{', '.join(sorted(RUN_OVERRIDABLE - owned))} (the runner sets data_prefix, "
            "model_name and experiment_name; explicit trials go in `trials`)"
        )
    try:
        for_run(PipelineSettings(), settings)
    except SettingsError as error:
        raise ValueError(str(error)) from None
    return settings


class RunStep(_Strict):
    """A DAG run of the scenario's model; the fields left out are the scenario's own."""

    run: str = Field(pattern=RUN_NAME_PATTERN, description="the run's name in this scenario")
    with_previous: bool = Field(False, description="triggered together with the step before")
    logical_date: date | None = None
    data: Data | None = None
    trials: tuple[dict[str, Any], ...] | None = None
    settings: dict[str, Any] | None = None
    faults: Faults | None = None
    timeout_seconds: float | None = Field(None, gt=0)
    expect: Expectations

    @field_validator("settings")
    @classmethod
    def _run_overridable(cls, settings: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if settings is None else _check_run_settings(settings)


ACTIONS = Literal["clear_tasks", "clear_run", "mark_success", "mark_failed", "trigger_again"]


class ActionStep(_Strict):
    """Something an operator does to a run, for real through Airflow's REST API.

    clear_tasks: clear ``tasks`` (with ``downstream``, ``only_failed``), as the UI's Clear does;
    clear_run: clear the whole run; mark_success / mark_failed: set ``tasks``' state;
    trigger_again: a new run with the same conf and data, named ``new_run``. By default the
    action happens once the run has settled; with ``when_task`` (and ``with_previous``), while
    it runs, as soon as that task is in ``when_state`` (default: finished). ``expect`` is
    checked once the run (the new run for trigger_again) has settled again.
    """

    action: ACTIONS
    # Not `on`: YAML 1.1 reads a bare `on` key as the boolean true.
    target: str = Field(description="the name of the run acted on")
    tasks: tuple[str, ...] = ()
    downstream: bool = False
    only_failed: bool = False
    when_task: str | None = Field(None, description="act once this task of the run is ...")
    when_state: Literal["finished", "running", "deferred", "up_for_retry", "success", "failed"] = (
        Field("finished", description="... in this state (finished: success, failed, skipped)")
    )
    with_previous: bool = False
    new_run: str | None = Field(None, pattern=RUN_NAME_PATTERN, description="trigger_again")
    expect: Expectations

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        for task in tasks:
            split_task_key(task)
        return tasks

    @field_validator("when_task")
    @classmethod
    def _known_when_task(cls, task: str | None) -> str | None:
        if task is not None:
            split_task_key(task)
        return task

    @model_validator(mode="after")
    def _fields_fit_the_action(self) -> ActionStep:
        needs_tasks = self.action in ("clear_tasks", "mark_success", "mark_failed")
        if needs_tasks and not self.tasks:
            raise ValueError(f"{self.action} needs `tasks`: the task ids to act on")
        if not needs_tasks and self.tasks:
            raise ValueError(f"{self.action} takes no `tasks`")
        if (self.action == "trigger_again") != (self.new_run is not None):
            raise ValueError("`new_run` names the run trigger_again makes, and only that")
        if (self.when_task is not None) != self.with_previous:
            raise ValueError(
                "an action while the run goes needs both when_task (the moment to act) and "
                "with_previous: true (so it runs beside the run's own step)"
            )
        return self


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "run" if "run" in value else "action" if "action" in value else None
    return "run" if isinstance(value, RunStep) else "action"


Step = Annotated[
    Annotated[RunStep, Tag("run")] | Annotated[ActionStep, Tag("action")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a timeline step is a run (`run: NAME`) or an action (`action: ...`)",
    ),
]


class AliasMove(_Strict):
    """One move of the ``champion`` alias: ``from`` and ``to`` as none, seeded or a run name."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    from_: str = Field(alias="from")
    to: str


class RegistryExpectation(_Strict):
    """The model's registry and champion history once every step is done."""

    versions: int | None = Field(None, ge=0, description="registered versions, seeded included")
    champion: str | None = Field(None, description="none, seeded or a run name")
    history: tuple[AliasMove, ...] | None = Field(
        None, description="every move of the champion alias, in order (the deploy ledger)"
    )
    moves: int | None = Field(None, ge=0, description="how many times the alias moved")
    history_consistent: bool | None = Field(
        None, description="each move starts where the last ended and compared with its start"
    )
    outcomes: dict[NOTIFICATION_OUTCOMES, int] = Field(
        default_factory=dict, description="runs whose notification ended so, over all runs"
    )
    tags: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="run name (its version) or seeded -> version tags"
    )

    def labels(self) -> list[str]:
        """Every champion label this expectation uses."""
        moves = [label for move in self.history or () for label in (move.from_, move.to)]
        return [*([self.champion] if self.champion else []), *moves, *self.tags]


class Scenario(_Strict):
    """One day in production, replayed through a real DAG run, and what must come of it."""

    name: str = Field(pattern=NAME_PATTERN, description="the test id; lower case, digits, _")
    description: str
    logical_date: date
    data: Data = Field(default_factory=Data)
    registry: Registry = Field(default_factory=Registry)
    trials: tuple[dict[str, Any], ...] = Field(
        (), description="explicit trials over the profile's trial_defaults; default: its grid"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="dag_run.conf overrides (run-overridable fields only)"
    )
    faults: Faults = Field(default_factory=Faults)
    cluster: Cluster = Field(default_factory=Cluster)
    timeout_seconds: float = Field(600, gt=0, description="how long a DAG run may take")
    expect: Expectations | None = Field(None, description="one run: what it must end with")
    timeline: tuple[Step, ...] = Field(
        (), description="several runs and actions, in order (instead of `expect`)"
    )
    expect_registry: RegistryExpectation = Field(default_factory=RegistryExpectation)
    requires: tuple[Literal["owned_cluster", "device_plugin"], ...] = Field(
        (),
        description="what the stack must offer: owned_cluster, a cluster the harness made "
        "(the scenario changes its nodes or relies on images being loaded, not pulled); "
        "device_plugin, GPUs the harness's device plugin hands out (local-up)",
    )

    @field_validator("settings")
    @classmethod
    def _run_overridable(cls, settings: dict[str, Any]) -> dict[str, Any]:
        return _check_run_settings(settings)

    @model_validator(mode="after")
    def _faults_name_trials(self) -> Scenario:
        for run in self.runs():
            trials, faults = self.run_trials(run), self.run_faults(run)
            for fault in faults.trials if trials else ():
                if fault.trial >= len(trials):
                    raise ValueError(
                        f"faults.trials: trial {fault.trial} does not exist; the scenario lists "
                        f"{len(trials)} trial(s), indexes 0 to {len(trials) - 1}"
                    )
        return self

    @model_validator(mode="after")
    def _says_what_it_requires(self) -> Scenario:
        needs = self.needs_of_an_owned_cluster()
        if needs and "owned_cluster" not in self.requires:
            raise ValueError(
                f"requires: {'; '.join(needs)}, which only a cluster the harness made allows; "
                "add `requires: [owned_cluster]` (the scenario is then skipped, with the reason, "
                "on a cluster the harness does not own)"
            )
        if self.cluster.gpu_replicas and "device_plugin" not in self.requires:
            raise ValueError(
                "requires: cluster.gpu_replicas slices the harness's device plugin's GPUs; add "
                "`device_plugin` to `requires` (the scenario is then skipped, with the reason, "
                "on a cluster whose GPUs come from its own device plugin)"
            )
        if self.cluster.gpu_resource and "device_plugin" not in self.requires:
            raise ValueError(
                "requires: cluster.gpu_resource partitions the harness's device plugin's GPUs; "
                "add `device_plugin` to `requires` (the scenario is then skipped, with the "
                "reason, on a cluster whose GPUs come from its own device plugin)"
            )
        if self.fails_a_gpu and "device_plugin" not in self.requires:
            raise ValueError(
                "requires: a gpu_unhealthy fault turns a device Unhealthy in the harness's device "
                "plugin; add `device_plugin` to `requires` (the scenario is then skipped, with "
                "the reason, on a cluster whose GPUs come from its own device plugin)"
            )
        return self

    @property
    def fails_a_gpu(self) -> bool:
        """Whether a run of the scenario has a gpu_unhealthy fault."""
        return any(self.run_faults(run).fail_a_gpu for run in self.runs())

    def needs_of_an_owned_cluster(self) -> list[str]:
        """What in the scenario changes the cluster or relies on how the harness made it."""
        needs = []
        if self.cluster.gpu_capacity is not None:
            needs.append("cluster.gpu_capacity sets the GPU node's count")
        faults = {fault.fault for run in self.runs() for fault in self.run_faults(run).trials}
        if "node_lost" in faults:
            needs.append("a node_lost fault takes a node away")
        if "missing_image" in faults:
            needs.append("a missing_image fault relies on images being loaded, never pulled")
        if "gpu_unhealthy" in faults:
            needs.append("a gpu_unhealthy fault fails a GPU of the GPU node")
        return needs

    @property
    def changes_the_cluster(self) -> bool:
        """Whether the replay changes the cluster for everyone (it then holds it alone)."""
        return self.takes_a_node_down or self.fails_a_gpu or self.cluster.gpu_capacity is not None

    @model_validator(mode="after")
    def _steps_fit_together(self) -> Scenario:
        if (self.expect is None) == (not self.timeline):
            raise ValueError(
                "a scenario has either `expect` (one run) or a `timeline` of runs and actions"
            )
        names: list[str] = []
        for index, step in enumerate(self.steps()):
            where = f"timeline[{index}]" if self.timeline else "expect"
            if index == 0 and step.with_previous:
                raise ValueError(f"{where}: the first step has no previous step to go with")
            if isinstance(step, ActionStep) and step.target not in names:
                raise ValueError(
                    f"{where}: `target: {step.target}` names no earlier run; runs so far: "
                    f"{', '.join(names) or 'none'}"
                )
            made = step.run if isinstance(step, RunStep) else step.new_run
            if made in names:
                raise ValueError(f"{where}: a run named {made!r} exists already")
            names += [made] if made else []
            self._check_expect(where, step.expect, names)
        registry_labels = set(self.expect_registry.labels()) - {*names, "none", "seeded"}
        if registry_labels:
            raise ValueError(
                f"expect_registry: {', '.join(sorted(registry_labels))} name no run; use none, "
                f"seeded or a run name ({', '.join(names)})"
            )
        return self

    def _check_expect(self, where: str, expect: Expectations, names: list[str]) -> None:
        if not expect.names_an_end and not self._outcomes_are_counted():
            raise ValueError(
                f"{where}: expects neither a run_state nor a notification outcome, so it could "
                "pass whatever the run did; say how the run must end"
            )
        known = {*CHAMPION_LABELS, *names}
        labels = (expect.champion.before, expect.champion.after, expect.evaluation.compared_with)
        for label in labels:
            if label is not None and label not in known:
                raise ValueError(
                    f"{where}: champion {label!r} is none of {', '.join(sorted(known))}"
                )

    def _outcomes_are_counted(self) -> bool:
        """Whether runs of a timeline that end differently by timing have their ends counted
        instead (``expect_registry.outcomes``, some count above 0, several runs)."""
        counted = any(count > 0 for count in self.expect_registry.outcomes.values())
        return counted and len(self.runs()) > 1

    def steps(self) -> list[RunStep | ActionStep]:
        """The timeline; a one-run scenario is one run step named ``run``."""
        if self.timeline or self.expect is None:
            return list(self.timeline)
        return [RunStep(run="run", expect=self.expect)]

    def runs(self) -> list[RunStep]:
        """The run steps, in order."""
        return [step for step in self.steps() if isinstance(step, RunStep)]

    def run_data(self, run: RunStep) -> Data:
        """The run's data: its own, or the scenario's."""
        return run.data or self.data

    def run_trials(self, run: RunStep) -> tuple[dict[str, Any], ...]:
        """The run's explicit trials: its own, or the scenario's."""
        return self.trials if run.trials is None else run.trials

    def run_faults(self, run: RunStep) -> Faults:
        """The run's faults: its own, or the scenario's."""
        return run.faults or self.faults

    def run_settings(self, run: RunStep) -> dict[str, Any]:
        """The run's dag_run.conf settings: the scenario's, then its own over them."""
        return {**self.settings, **(run.settings or {})}

    @property
    def takes_a_node_down(self) -> bool:
        """Whether a run's fault takes a whole node away (the replay then holds the cluster)."""
        return any(self.run_faults(run).take_a_node_down for run in self.runs())


def _location(error: dict[str, Any]) -> str:
    parts = [str(part) for part in error["loc"]]
    # pydantic names union members ("AfterPokes", "literal[...]") in the path; people do not.
    readable = [p for p in parts if not (p[:1].isupper() or p.startswith(("literal[", "function")))]
    return ".".join(readable) or "(top level)"


def validation_problems(error: ValidationError, prefix: str = "") -> str:
    """Each problem of a validation error on its own line: where (``prefix`` before it), what."""
    return "\n".join(
        f"  {prefix}{_location(e)}: {e['msg'].removeprefix('Value error, ')}"
        for e in error.errors()
    )


def parse_scenario(text: str, source: str) -> Scenario:
    """A scenario from YAML text; ``source`` names it in errors."""
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as error:
        # PyYAML raises ValueError for impossible dates such as 2026-13-01.
        raise ScenarioError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{source}: a scenario is a YAML mapping, got {type(raw).__name__}")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as error:
        problems = validation_problems(error)
        raise ScenarioError(
            f"{source}: invalid scenario ({error.error_count()} problem(s)):\n{problems}\n"
            f"The format is described in README.md (Scenarios) and {SCHEMA_PATH.name}."
        ) from None


def load_scenario(path: Path) -> Scenario:
    """The scenario in ``path``; its name must match the file's name."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read the scenario file: {error.strerror}") from None
    scenario = parse_scenario(text, str(path))
    if scenario.name != path.stem:
        raise ScenarioError(
            f"{path}: name {scenario.name!r} differs from the file name; name the file "
            f"{scenario.name}.yaml or change `name` to {path.stem!r}"
        )
    return scenario


def scenario_paths(selected: list[str] | None = None, folder: Path = SCENARIOS_DIR) -> list[Path]:
    """The scenario files: all of ``folder``, or those named (by name or path)."""
    if not selected:
        return sorted(folder.glob("*.yaml"))
    paths = []
    for item in selected:
        path = Path(item) if item.endswith((".yaml", ".yml")) else folder / f"{item}.yaml"
        if not path.exists():
            known = ", ".join(p.stem for p in sorted(folder.glob("*.yaml")))
            raise ScenarioError(f"no scenario {item!r} ({path} does not exist); known: {known}")
        paths.append(path)
    return paths


def load_scenarios(selected: list[str] | None = None) -> list[Scenario]:
    """Every selected scenario, all validated before any is replayed (every problem at once)."""
    scenarios, problems = [], []
    for path in scenario_paths(selected):
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as error:
            problems.append(str(error))
    if problems:
        raise ScenarioError("\n".join(problems))
    return scenarios


def json_schema() -> dict[str, Any]:
    """The JSON Schema of scenario files (written to scenarios/scenario.schema.json)."""
    return Scenario.model_json_schema()
