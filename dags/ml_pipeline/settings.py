"""The one source of every environment-specific value of the training pipeline.

Values are layered, later layers winning:

1. the production defaults below;
2. the Airflow Variable ``ml_pipeline_settings`` (a JSON object with any subset of the fields);
3. environment variables ``ML_PIPELINE_<FIELD>`` (upper case; lists, dicts, numbers and booleans
   as JSON, strings as they are);
4. for a single run, ``dag_run.conf`` — only for the fields in ``RUN_OVERRIDABLE``, which are read
   while the run executes rather than when the DAG file is parsed.

The harness writes layer 2 for its test profile from :func:`test_profile`; nothing else copies these
values.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ml_pipeline.decisions import Threshold

VARIABLE_NAME = "ml_pipeline_settings"
ENV_PREFIX = "ML_PIPELINE_"


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type, or may not be set where it was."""


class ResourceSpec(BaseModel):
    """Kubernetes requests and limits of one container (quantities as Kubernetes writes them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests: dict[str, str]
    limits: dict[str, str]


class Toleration(BaseModel):
    """A pod toleration, in the Kubernetes API's field names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class PipelineSettings(BaseModel):
    """Every value of the pipeline that differs between production and the testbed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Scheduling; None runs only when triggered (the testbed's profile).
    schedule: str | None = "@daily"

    # Kubernetes
    kubernetes_conn_id: str = "kubernetes_default"
    training_namespace: str = "ml-training"
    serving_namespace: str = "ml-serving"
    trainer_image: str = "ml-pipeline/trainer:1.0.0"
    # Images a trial's ``image`` key may name besides trainer_image (e.g. a build under test).
    # Trial pods hold the pipeline's credentials, so a run's conf must not pick any image.
    allowed_trial_images: tuple[str, ...] = ()
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pod_service_account: str = "ml-pipeline-pods"
    # A Secret holding AWS_* and MLFLOW_TRACKING_* credentials for the pods.
    credentials_secret: str = "ml-pipeline-credentials"
    on_finish_action: Literal["delete_pod", "delete_succeeded_pod", "keep_pod"] = (
        "delete_succeeded_pod"
    )
    pod_startup_timeout_seconds: int = Field(600, gt=0)
    # How long a pod may wait to be placed on a node, before the startup timeout above counts:
    # a trial waits here while every GPU is busy, which is normal and lasts as long as other
    # trials train, so 12 h rather than minutes.
    pod_schedule_timeout_seconds: int = Field(43200, gt=0)
    # How often a pod task looks whether its pod has started (KubernetesPodOperator's default).
    pod_startup_check_interval_seconds: int = Field(5, gt=0)
    # A pod its node's kubelet rejected at admission (UnexpectedAdmissionError after a node
    # restart, before the GPU device plugin registered again) never ran: a pod task makes it
    # again this many times within one try, this far apart, before the try fails.
    pod_admission_retries: int = Field(3, ge=0)
    pod_admission_retry_delay_seconds: int = Field(30, ge=0)
    preparation_resources: ResourceSpec = ResourceSpec(
        requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "1", "memory": "2Gi"}
    )
    trial_resources: ResourceSpec = ResourceSpec(
        requests={"cpu": "2", "memory": "8Gi"}, limits={"cpu": "4", "memory": "16Gi"}
    )
    gpu_resource_name: str = "nvidia.com/gpu"
    # Resources a trial's ``gpu_resource`` key may name besides gpu_resource_name: MIG profiles
    # that nodes partitioned with NVIDIA's "mixed" strategy advertise (nvidia.com/mig-1g.10gb).
    allowed_gpu_resources: tuple[str, ...] = ()
    gpus_per_trial: int = Field(1, ge=0)
    gpu_node_selector: dict[str, str] = {"gpu-type": "nvidia-a100", "node-pool": "gpu-training"}
    gpu_tolerations: tuple[Toleration, ...] = (Toleration(key="nvidia.com/gpu"),)
    shared_data_claim: str = "ml-shared-data"
    shared_data_mount_path: str = "/mnt/shared-data"
    require_cuda: bool = True

    # Storage
    aws_conn_id: str = "aws_default"
    data_bucket: str = "ml-datasets"
    data_prefix: str = "daily"
    features_file: str = "features.parquet"
    artifacts_bucket: str = "ml-artifacts"
    processed_prefix: str = "processed"
    deployment_records_prefix: str = "deployments"
    notifications_prefix: str = "notifications"
    # Where pods reach S3; empty means AWS itself.
    pod_s3_endpoint_url: str = ""
    # More environment variables for every pipeline pod (e.g. MLflow's client retries:
    # MLFLOW_HTTP_REQUEST_MAX_RETRIES, whose default of 7 with doubling backoff makes one
    # unanswered call take minutes).
    pod_environment: dict[str, str] = {}

    # MLflow
    mlflow_tracking_uri: str = "http://mlflow.mlflow.svc.cluster.local:5000"
    # Where pods reach MLflow, when that differs from where Airflow does; empty means the same.
    pod_mlflow_tracking_uri: str = ""
    model_name: str = "ml-pipeline-classifier"
    experiment_name: str = "ml_full_training_pipeline"

    # Hyperparameter trials: the grid's cartesian product over trial_defaults, unless `trials`
    # lists them explicitly.
    trial_grid: dict[str, list[Any]] = {
        "learning_rate": [0.001, 0.01, 0.1],
        "batch_size": [32, 64],
    }
    trial_defaults: dict[str, Any] = {
        "learning_rate": 0.001,
        "batch_size": 64,
        "optimizer": "adam",
        "epochs": 20,
        "hidden_width": 128,
        "depth": 2,
        "seed": 42,
    }
    trials: tuple[dict[str, Any], ...] = ()

    # Data contract and preprocessing
    min_rows: int = Field(1000, ge=1)
    max_null_rate: float = Field(0.05, ge=0, le=1)
    min_label_fraction: float = Field(0.2, ge=0, le=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 42

    # Promotion
    # The candidate and the champion are scored on the same data by score_models (today's
    # held-out split, and reference_evaluation_uri when set); the rule has the shape of MLflow's
    # MetricThreshold: metric_floor is the threshold (a ceiling for loss, where lower is
    # better), improvement_margin the min_absolute_change, min_relative_improvement the
    # min_relative_change.
    evaluation_metric: Literal["accuracy", "f1", "loss"] = "accuracy"
    metric_floor: float = Field(0.80, ge=0)
    improvement_margin: float = Field(0.01, ge=0)
    min_relative_improvement: float = Field(0.0, ge=0)
    # A fixed evaluation set in S3 (raw rows with labels, s3://...), scored besides today's.
    reference_evaluation_uri: str = ""
    # A champion that cannot be scored on raw rows (a bare network registered before models
    # carried their preprocessing): "fail" fails evaluate_model saying so; "replace" lets the
    # candidate replace it when it clears the floor, and the decision says why.
    unscorable_champion: Literal["fail", "replace"] = "fail"
    # An Airflow pool of one slot that every deploy_model task runs in: two deploys never check
    # and move the champion alias at the same time (MLflow has no compare-and-set of aliases).
    promotion_pool: str = "ml_promotion"

    # Sensor, retries, notification
    sensor_poke_interval_seconds: int = Field(300, gt=0)
    sensor_timeout_seconds: int = Field(6 * 3600, gt=0)
    retries: int = Field(2, ge=0)
    retry_delay_seconds: int = Field(300, ge=0)
    trial_retries: int = Field(1, ge=0)
    notification_webhook_url: str = ""

    @model_validator(mode="after")
    def _floor_within_the_metric(self) -> PipelineSettings:
        if self.greater_is_better and self.metric_floor > 1:
            raise ValueError(
                f"metric_floor {self.metric_floor} is above 1, which {self.evaluation_metric} "
                "never reaches (a fraction, not a percentage)"
            )
        return self

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher ``evaluation_metric`` is better (not for ``loss``)."""
        return self.evaluation_metric != "loss"

    def promotion_rule(self) -> Threshold:
        """The promotion rule these settings describe (ml_pipeline.decisions.Threshold)."""
        return Threshold(
            metric=self.evaluation_metric,
            threshold=self.metric_floor,
            min_absolute_change=self.improvement_margin,
            min_relative_change=self.min_relative_improvement,
            greater_is_better=self.greater_is_better,
        )

    def trial_hyperparameters(self) -> list[dict[str, Any]]:
        """The hyperparameters of every trial, in a stable order."""
        if self.trials:
            return [{**self.trial_defaults, **trial} for trial in self.trials]
        names = sorted(self.trial_grid)
        return [
            {**self.trial_defaults, **dict(zip(names, values, strict=True))}
            for values in itertools.product(*(self.trial_grid[name] for name in names))
        ]

    @property
    def mlflow_uri_for_pods(self) -> str:
        """The MLflow tracking URI as a pod must use it."""
        return self.pod_mlflow_tracking_uri or self.mlflow_tracking_uri


# Fields a single run may set in dag_run.conf: they are read while the run executes.
RUN_OVERRIDABLE = frozenset(
    {
        "data_prefix",
        "model_name",
        "experiment_name",
        "trial_grid",
        "trial_defaults",
        "trials",
        "min_rows",
        "max_null_rate",
        "min_label_fraction",
        "test_fraction",
        "split_seed",
        "evaluation_metric",
        "metric_floor",
        "improvement_margin",
        "min_relative_improvement",
        "reference_evaluation_uri",
        "unscorable_champion",
    }
)


def _validated(values: Mapping[str, Any], source: str) -> PipelineSettings:
    try:
        return PipelineSettings(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise SettingsError(
            f"invalid pipeline settings from {source}: {problems}. "
            f"Fields and their types are defined in {__file__}."
        ) from None


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    known = PipelineSettings.model_fields
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        field = key[len(ENV_PREFIX) :].lower()
        if field not in known:
            raise SettingsError(
                f"environment variable {key} names no pipeline setting; "
                f"known settings: {', '.join(sorted(known))}"
            )
        values[field] = _parse_env_value(key, raw, known[field].annotation)
    return values


def _parse_env_value(key: str, raw: str, annotation: Any) -> Any:
    if annotation is str:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        # A bare word for a Literal field (e.g. IfNotPresent) is a string.
        if raw and raw[0] not in '[{"' and not raw[0].isdigit():
            return raw
        raise SettingsError(f"environment variable {key} is not valid JSON: {raw!r}") from None


def _from_variable() -> dict[str, Any]:
    from airflow.sdk import Variable

    value = Variable.get(VARIABLE_NAME, default=None, deserialize_json=True)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError(
            f"Airflow Variable {VARIABLE_NAME} must be a JSON object, got {type(value).__name__}"
        )
    return value


def load_settings(
    variable: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> PipelineSettings:
    """Settings from defaults, the Airflow Variable and the environment (in that order).

    ``variable`` and ``environ`` replace the real Airflow Variable and ``os.environ`` (for tests).
    """
    from_variable = _from_variable() if variable is None else dict(variable)
    _validated(from_variable, f"Airflow Variable {VARIABLE_NAME}")
    from_env = _from_environment(os.environ if environ is None else environ)
    _validated(from_env, f"environment variables {ENV_PREFIX}*")
    return _validated({**from_variable, **from_env}, "the Variable and environment combined")


def for_run(base: PipelineSettings, conf: Mapping[str, Any] | None) -> PipelineSettings:
    """``base`` with a run's ``dag_run.conf`` overrides applied (only RUN_OVERRIDABLE fields)."""
    overrides = {key: value for key, value in (conf or {}).items() if key != "scenario"}
    not_allowed = sorted(set(overrides) - RUN_OVERRIDABLE)
    if not_allowed:
        raise SettingsError(
            f"dag_run.conf sets {', '.join(not_allowed)}, which a single run may not change; "
            f"a run may set: {', '.join(sorted(RUN_OVERRIDABLE))}. "
            f"Set the others in the Airflow Variable {VARIABLE_NAME}."
        )
    return _validated({**base.model_dump(), **overrides}, "dag_run.conf")


def harness_profile(**overrides: Any) -> dict[str, Any]:
    """The Variable content the harness writes for local runs: fast pokes, small trials.

    Values that depend on where the harness put things (endpoints, images) come as ``overrides``.
    """
    profile: dict[str, Any] = {
        "schedule": None,
        # Once placed, a local pod starts in seconds (its image is on the node), but a pod placed
        # on a node that just died starts only when the node is back (node_lost: about 30-80 s).
        "pod_startup_timeout_seconds": 90,
        # Trials queue for the few simulated GPUs while other scenarios' trials train; a
        # request no node can ever meet fails before its pod is made (TrialPodOperator).
        "pod_schedule_timeout_seconds": 600,
        # Local pods start within a second or two: looking every 5 s would cost every pod task
        # up to 5 s of waiting (four pod steps a run).
        "pod_startup_check_interval_seconds": 1,
        # A local device plugin registers within seconds of its kubelet.
        "pod_admission_retry_delay_seconds": 5,
        "preparation_resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "trial_resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "require_cuda": False,
        # An unavailable MLflow fails a pod within seconds; Airflow's retries take it from there.
        "pod_environment": {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
        },
        "trial_grid": {"learning_rate": [0.003, 0.03]},
        "trial_defaults": {
            "optimizer": "adam",
            "epochs": 5,
            "hidden_width": 32,
            "depth": 2,
            "batch_size": 64,
            "seed": 7,
        },
        "min_rows": 500,
        "sensor_poke_interval_seconds": 5,
        "sensor_timeout_seconds": 60,
        "retries": 1,
        "retry_delay_seconds": 2,
        "trial_retries": 1,
    }
    profile.update(overrides)
    _validated(profile, "harness test profile")
    return profile
