"""The production ML training pipeline: data sensor, preparation pods, GPU trials, promotion.

wait_for_training_data >> data_preparation[validate_data >> preprocess_data]
>> generate_hyperparams >> hyperparameter_tuning[train_trial x N] >> select_best_model
>> score_models >> evaluate_model >> deployment_decision >> (deploy_model | skip_deployment)
>> send_notification

Every environment-specific value comes from ml_pipeline.settings; a run may override the fields in
settings.RUN_OVERRIDABLE through dag_run.conf (the testbed gives each scenario its own model name
and data prefix that way).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.providers.standard.operators.python import BranchPythonOperator
from airflow.sdk import DAG, TaskGroup, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from kubernetes.client import models as k8s

from ml_pipeline import decisions, notification, pods, registry
from ml_pipeline.operators import PipelinePodOperator, TrialPodOperator
from ml_pipeline.settings import PipelineSettings, for_run, load_settings
from ml_pipeline.task_ids import (
    PIPELINE_ORDER,
    SENSOR_TASK_ID,
    TRIAL_TASK_ID,
    VALIDATE_TASK_ID,
)
from ml_pipeline.trials import pop_gpu_resource, split_pod_keys, trial_arguments

DAG_ID = "ml_full_training_pipeline"
DATA_URI = (
    "s3://{bucket}/{{{{ run_setting(dag_run, 'data_prefix') }}}}/{{{{ ds }}}}/{features_file}"
)
# A run's own files (the validation verdict, preprocess's outputs), as pods see the prefix.
RUN_FILES_URI = (
    "s3://{bucket}/{processed_prefix}/{{{{ run_setting(dag_run, 'data_prefix') }}}}/{{{{ ds }}}}/"
    "{{{{ run_id | replace(':', '-') | replace('+', '_') }}}}"
)
VALIDATION_FILE = "validation.json"
SCORE_TASK_ID = "score_models"
SHARED_DATA_VOLUME = "shared-data"

SETTINGS = load_settings()
log = logging.getLogger(__name__)


def run_settings() -> PipelineSettings:
    """The settings of the running DAG run (its dag_run.conf applied)."""
    return for_run(SETTINGS, get_current_context()["dag_run"].conf)


def run_setting(dag_run: Any, name: str) -> Any:
    """Template macro: one setting of a DAG run, ``{{ run_setting(dag_run, 'data_prefix') }}``."""
    return getattr(for_run(SETTINGS, dag_run.conf), name)


@task
def generate_hyperparams(processed: dict[str, Any]) -> list[dict[str, Any]]:
    """One pod per trial: its complete ``train`` command (rendered here, see ml_pipeline.trials),
    its resources and image (a trial may set its own ``gpus``, ``gpu_resource`` and ``image``)."""
    context = get_current_context()
    settings = run_settings()
    tags = {"dag_run_id": context["run_id"], "logical_date": context["ds"]}
    trial_pods = []
    for index, trial in enumerate(settings.trial_hyperparameters()):
        hyperparameters, gpus, image = split_pod_keys(
            trial,
            SETTINGS.gpus_per_trial,
            SETTINGS.trainer_image,
            index,
            SETTINGS.allowed_trial_images,
        )
        resource = pop_gpu_resource(
            hyperparameters, SETTINGS.gpu_resource_name, SETTINGS.allowed_gpu_resources, index
        )
        arguments = trial_arguments(
            hyperparameters,
            trial_id=index,
            processed=processed,
            experiment=settings.experiment_name,
            cache_dir=SETTINGS.shared_data_mount_path,
            require_cuda=SETTINGS.require_cuda,
            tags=tags,
        )
        trial_pods.append(
            {
                "arguments": arguments,
                "container_resources": pods.trial_resources(SETTINGS, gpus, resource),
                "image": image,
                "gpu_resource_name": resource,
            }
        )
    return trial_pods


@task(trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
def select_best_model(trial_results: Any) -> dict[str, Any]:
    """The best of the trials that succeeded; runs even when some trials failed."""
    try:
        settings = run_settings()
        return decisions.select_best_trial(
            trial_results, settings.evaluation_metric, settings.greater_is_better
        )
    except decisions.NoSuccessfulTrialError as error:
        raise AirflowFailException(str(error)) from None


@task(multiple_outputs=True)
def evaluate_model(best_trial: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """Registers the best trial as a candidate version and decides on score_models' scores.

    The candidate and the champion were scored on the same data (score_models); the rule is
    the settings' Threshold. Idempotent: a run cleared or run again whose candidate already is
    the champion changes nothing (decision ``unchanged``); it registers no second version and
    rejects nothing. The scores go on the candidate version's tags.
    """
    settings = run_settings()
    metric, model_name = settings.evaluation_metric, settings.model_name
    run_id = get_current_context()["run_id"]
    client = registry.client_for(SETTINGS.mlflow_tracking_uri)
    scored = scores.get("champion") or {}
    champion = registry.current_champion(client, model_name)
    decision = decisions.already_champion(
        champion_version=champion.version if champion else None,
        champion_run_id=champion.run_id if champion else None,
        candidate_run_id=best_trial["run_id"],
        versions_of_this_run=registry.versions_registered_by(client, model_name, run_id),
        champion_trial_id=champion.trial_id if champion else None,
        candidate_trial_id=str(best_trial.get("trial_id")),
    )
    if scores.get("candidate_uri") != best_trial.get("model_uri"):
        raise AirflowFailException(
            f"score_models scored {scores.get('candidate_uri')}, not the best trial's model "
            f"{best_trial.get('model_uri')}: clear score_models with its downstream tasks"
        )
    if decision is None and (champion.version if champion else None) != scored.get("version"):
        # Scores against another champion than today's would decide on a stale comparison
        # (evaluate_model cleared alone, or the alias moved since score_models ran).
        raise AirflowFailException(
            f"score_models scored the candidate against "
            f"{'v' + str(scored['version']) if scored.get('version') else 'no champion'}, but "
            f"the champion of {model_name} is now "
            f"{'v' + champion.version if champion else 'none'}: clear score_models with its "
            "downstream tasks so that the candidate is scored against it"
        )
    candidate_scores = _scores_of(scores, "candidate", metric)
    if decision and champion:
        version = champion.version
        champion_scores = _scores_of(scores, "champion", metric) or None
    else:
        champion_scores = _champion_scores(scores, metric, settings) if champion else None
        version = registry.register_candidate(
            client,
            model_name,
            best_trial,
            tags={
                "deployment_status": "candidate",
                "dag_run_id": run_id,
                "trial_id": str(best_trial.get("trial_id")),
                metric: str(best_trial[metric]),
                **_evaluation_tags(scores, metric),
            },
        )
        decision = decisions.decide_promotion(
            rule=settings.promotion_rule(),
            candidate=candidate_scores,
            champion=champion_scores,
            champion_version=champion.version if champion else None,
        )
        if champion and champion_scores is None:
            decision = decisions.PromotionDecision(
                decision.deploy,
                f"champion v{champion.version} cannot be scored ({scored.get('why')}) and "
                "unscorable_champion is 'replace', so the floor decides: "
                + decision.reason.removeprefix("no champion yet; "),
            )
    log.info("Decision for %s v%s: %s", model_name, version, decision.reason)
    figures = {
        "decision": decision.name,
        "reason": decision.reason,
        "metric": metric,
        "candidate_version": version,
        "candidate_metric": candidate_scores.get("today"),
        "champion_version": champion.version if champion else None,
        "champion_metric": (champion_scores or {}).get("today"),
        "scores": {"candidate": candidate_scores, "champion": champion_scores},
        "evaluation_run_id": scores.get("evaluation_run_id"),
    }
    return {
        **figures,
        "model_name": model_name,
        "candidate_run_id": best_trial["run_id"],
        "best_trial": best_trial,
        # What the deploy pod records in the champion history beside the move.
        "figures": figures,
    }


def _scores_of(scores: dict[str, Any], role: str, metric: str) -> dict[str, float]:
    """Evaluation set -> ``role``'s ``metric`` there (score_models' xcom)."""
    return {
        name: float(figures[role][metric])
        for name, figures in (scores.get("datasets") or {}).items()
        if role in figures
    }


def _champion_scores(
    scores: dict[str, Any], metric: str, settings: PipelineSettings
) -> dict[str, float] | None:
    """The champion's scores; None when it could not be scored and the settings let the
    candidate replace it; a failure saying what to do when they do not."""
    champion = scores["champion"]
    if champion.get("scorable"):
        return _scores_of(scores, "champion", metric)
    if settings.unscorable_champion == "replace":
        return None
    raise AirflowFailException(
        f"champion v{champion['version']} cannot be scored on today's data: {champion['why']}. "
        "Comparing the candidate with the champion's logged figure would compare scores on "
        "different data, so nothing was decided. Either trigger the run again with "
        'the conf {"unscorable_champion": "replace"} to let a candidate '
        "that clears the floor replace it, or move the champion alias to a version logged as "
        "an inference path."
    )


def _evaluation_tags(scores: dict[str, Any], metric: str) -> dict[str, str]:
    """The evaluation's figures as version tags: ``eval.SET.ROLE.METRIC`` and the run."""
    tags = {
        "evaluation_run_id": str(scores.get("evaluation_run_id")),
        "evaluated_against": str((scores.get("champion") or {}).get("version") or "none"),
    }
    for name, figures in (scores.get("datasets") or {}).items():
        tags[f"eval.{name}.digest"] = str(figures.get("digest"))
        for role in ("candidate", "champion"):
            if role in figures:
                tags[f"eval.{name}.{role}.{metric}"] = f"{figures[role][metric]:.6f}"
    return tags


def choose_branch(decision: str) -> str:
    """deployment_decision's callable: the task id to follow for evaluate_model's decision."""
    branches = {
        "deploy": decisions.DEPLOY_TASK_ID,
        "skip": decisions.SKIP_TASK_ID,
        decisions.UNCHANGED: decisions.SKIP_TASK_ID,
    }
    if decision not in branches:
        raise AirflowFailException(
            f"evaluate_model returned decision {decision!r}; expected one of {sorted(branches)}"
        )
    return branches[decision]


@task
def skip_deployment(evaluation: dict[str, Any]) -> None:
    """Records on the candidate version why it was not promoted (nothing, when it already is
    the champion: the live champion is never tagged rejected)."""
    if evaluation["decision"] == decisions.UNCHANGED:
        log.info("Nothing to record: %s", evaluation["reason"])
        return
    registry.record_rejection(
        registry.client_for(SETTINGS.mlflow_tracking_uri),
        evaluation["model_name"],
        evaluation["candidate_version"],
        evaluation["reason"],
        get_current_context()["run_id"],
    )


def _failure_reasons(states: dict[str, Any], context: Any) -> dict[str, str]:
    """Why tasks failed, where a failed task left it: the validation verdict's violations, or
    a deploy refused because the champion moved after the evaluation."""
    if states.get(decisions.DEPLOY_TASK_ID) == "failed":
        return _deploy_failure(context)
    if states.get(SCORE_TASK_ID) == "failed":
        reported = context["ti"].xcom_pull(task_ids=SCORE_TASK_ID) or {}
        if isinstance(reported, dict) and reported.get("error"):
            return {SCORE_TASK_ID: str(reported["error"])}
    if states.get(VALIDATE_TASK_ID) != "failed":
        return {}
    run_id = context["run_id"].replace(":", "-").replace("+", "_")
    key = "/".join([SETTINGS.processed_prefix, run_settings().data_prefix, context["ds"], run_id])
    hook = S3Hook(aws_conn_id=SETTINGS.aws_conn_id)
    if not hook.check_for_key(f"{key}/{VALIDATION_FILE}", SETTINGS.artifacts_bucket):
        return {}
    verdict = json.loads(hook.read_key(f"{key}/{VALIDATION_FILE}", SETTINGS.artifacts_bucket))
    return {VALIDATE_TASK_ID: "; ".join(verdict.get("violations") or [])}


def _deploy_failure(context: Any) -> dict[str, str]:
    """Why deploy_model failed: the error the deploy pod reported (a failed canary, say), or a
    champion that is no longer the one evaluate_model saw."""
    reported = context["ti"].xcom_pull(task_ids=decisions.DEPLOY_TASK_ID) or {}
    if isinstance(reported, dict) and reported.get("error"):
        return {decisions.DEPLOY_TASK_ID: str(reported["error"])}
    evaluation = context["ti"].xcom_pull(task_ids="evaluate_model") or {}
    if not evaluation:
        return {}
    try:
        client = registry.client_for(SETTINGS.mlflow_tracking_uri)
        now = registry.champion_version(client, evaluation["model_name"])
    except Exception:  # MLflow down is a common reason for the failure: still notify
        log.warning("Could not read the champion to explain deploy_model's failure", exc_info=True)
        return {}
    compared = evaluation.get("champion_version")
    if now == compared or now == evaluation.get("candidate_version"):
        return {}
    return {
        decisions.DEPLOY_TASK_ID: (
            f"the champion is {f'v{now}' if now else 'none'}, but evaluate_model compared with "
            f"{f'v{compared}' if compared else 'no champion'}: a stale comparison, so nothing "
            "was promoted; clear score_models with downstream to evaluate again"
        )
    }


@task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
def send_notification() -> dict[str, Any]:
    """Reports deployed / skipped / failed to S3 (and a webhook if set); fails a failed run."""
    context = get_current_context()
    ti, dag_run = context["ti"], context["dag_run"]
    states = ti.get_task_states(dag_id=DAG_ID, run_ids=[dag_run.run_id]).get(dag_run.run_id, {})
    states.pop(ti.task_id, None)
    record = notification.build_notification(
        failure_reasons=_failure_reasons(states, context),
        run={
            "dag_id": DAG_ID,
            "run_id": dag_run.run_id,
            "logical_date": context["ds"],
            "conf": dict(dag_run.conf or {}),
        },
        task_states=states,
        pipeline_order=PIPELINE_ORDER,
        trial_task_id=TRIAL_TASK_ID,
        evaluation=ti.xcom_pull(task_ids="evaluate_model"),
        deployment=ti.xcom_pull(task_ids="deploy_model"),
    )
    key = notification.notification_key(SETTINGS.notifications_prefix, DAG_ID, dag_run.run_id)
    S3Hook(aws_conn_id=SETTINGS.aws_conn_id).load_string(
        json.dumps(record, indent=2, default=str), key, SETTINGS.artifacts_bucket, replace=True
    )
    if SETTINGS.notification_webhook_url:
        notification.post_webhook(SETTINGS.notification_webhook_url, record)
    log.info("Notification s3://%s/%s: %s", SETTINGS.artifacts_bucket, key, record["summary"])
    if record["outcome"] == "failed":
        # The run's state follows its leaves; without this a failed pipeline would look green.
        raise AirflowFailException(f"{record['summary']} (notification sent)")
    return record


with DAG(
    dag_id=DAG_ID,
    description="Daily features -> validated data -> GPU hyperparameter trials -> champion",
    schedule=SETTINGS.schedule,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=8,
    default_args={
        "owner": "ml-platform",
        "retries": SETTINGS.retries,
        "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds),
    },
    user_defined_macros={"run_setting": run_setting},
    tags=["ml", "training", "gpu"],
    doc_md=__doc__,
) as dag:
    data_uri = DATA_URI.format(bucket=SETTINGS.data_bucket, features_file=SETTINGS.features_file)
    run_files_uri = RUN_FILES_URI.format(
        bucket=SETTINGS.artifacts_bucket, processed_prefix=SETTINGS.processed_prefix
    )
    wait_for_training_data = S3KeySensor(
        task_id=SENSOR_TASK_ID,
        bucket_name=SETTINGS.data_bucket,
        bucket_key="{{ run_setting(dag_run, 'data_prefix') }}/{{ ds }}/" + SETTINGS.features_file,
        aws_conn_id=SETTINGS.aws_conn_id,
        deferrable=True,
        poke_interval=SETTINGS.sensor_poke_interval_seconds,
        timeout=SETTINGS.sensor_timeout_seconds,
    )

    with TaskGroup("data_preparation") as data_preparation:
        preparation = {
            **pods.pod_defaults(SETTINGS, SETTINGS.training_namespace),
            "container_resources": pods.resources(SETTINGS, SETTINGS.preparation_resources),
        }
        validate_data = PipelinePodOperator(
            task_id="validate_data",
            name="validate-data",
            arguments=[
                "validate",
                "--input",
                data_uri,
                "--min-rows",
                "{{ run_setting(dag_run, 'min_rows') }}",
                "--max-null-rate",
                "{{ run_setting(dag_run, 'max_null_rate') }}",
                "--min-label-fraction",
                "{{ run_setting(dag_run, 'min_label_fraction') }}",
                "--report-uri",
                f"{run_files_uri}/{VALIDATION_FILE}",
            ],
            **preparation,
        )
        preprocess_data = PipelinePodOperator(
            task_id="preprocess_data",
            name="preprocess-data",
            arguments=[
                "preprocess",
                "--input",
                data_uri,
                "--output-prefix",
                run_files_uri,
                "--test-fraction",
                "{{ run_setting(dag_run, 'test_fraction') }}",
                "--seed",
                "{{ run_setting(dag_run, 'split_seed') }}",
            ],
            **preparation,
        )
        validate_data >> preprocess_data

    trial_pods = generate_hyperparams(preprocess_data.output)

    with TaskGroup("hyperparameter_tuning") as hyperparameter_tuning:
        # Fails a trial at once whose GPU request no node can meet; waiting is for busy GPUs.
        train_trial = TrialPodOperator.partial(
            task_id="train_trial",
            # Waiting for a busy GPU is normal (hours in production); starting once placed is not.
            schedule_timeout_seconds=SETTINGS.pod_schedule_timeout_seconds,
            name="train-trial",
            node_selector=SETTINGS.gpu_node_selector,
            tolerations=[
                k8s.V1Toleration(**toleration.model_dump())
                for toleration in SETTINGS.gpu_tolerations
            ],
            volumes=[
                k8s.V1Volume(
                    name=SHARED_DATA_VOLUME,
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                        claim_name=SETTINGS.shared_data_claim
                    ),
                )
            ],
            volume_mounts=[
                k8s.V1VolumeMount(
                    name=SHARED_DATA_VOLUME, mount_path=SETTINGS.shared_data_mount_path
                )
            ],
            retries=SETTINGS.trial_retries,
            # The image is each trial's (generate_hyperparams), so it is not a partial argument.
            **pods.pod_defaults(SETTINGS, SETTINGS.training_namespace, with_image=False),
        ).expand_kwargs(trial_pods)

    best_trial = select_best_model(train_trial.output)
    # The candidate and the champion scored on the same raw rows, each model through its own
    # packaged preprocessing (python -m trainer evaluate).
    score_models = PipelinePodOperator(
        task_id=SCORE_TASK_ID,
        name="score-models",
        arguments=[
            "evaluate",
            "--candidate-uri",
            "{{ ti.xcom_pull(task_ids='select_best_model')['model_uri'] }}",
            "--model-name",
            "{{ run_setting(dag_run, 'model_name') }}",
            "--dataset",
            "today={{ ti.xcom_pull(task_ids='data_preparation.preprocess_data')['holdout_uri'] }}",
            "--reference-uri={{ run_setting(dag_run, 'reference_evaluation_uri') }}",
            "--experiment",
            "{{ run_setting(dag_run, 'experiment_name') }}",
            "--tag",
            "dag_run_id={{ run_id }}",
            "--device",
            "auto",
        ],
        container_resources=pods.resources(SETTINGS, SETTINGS.preparation_resources),
        **pods.pod_defaults(SETTINGS, SETTINGS.training_namespace),
    )
    best_trial >> score_models
    evaluation = evaluate_model(best_trial, score_models.output)
    deployment_decision = BranchPythonOperator(
        task_id="deployment_decision",
        python_callable=choose_branch,
        op_kwargs={"decision": evaluation["decision"]},
    )
    deploy_model = PipelinePodOperator(
        task_id="deploy_model",
        name="deploy-model",
        arguments=[
            "deploy",
            "--model-name",
            "{{ ti.xcom_pull(task_ids='evaluate_model', key='model_name') }}",
            "--version",
            "{{ ti.xcom_pull(task_ids='evaluate_model', key='candidate_version') }}",
            "--record-prefix",
            f"s3://{SETTINGS.artifacts_bucket}/{SETTINGS.deployment_records_prefix}",
            "--dag-run-id",
            "{{ run_id }}",
            # The compare-and-set: the alias moves only from the champion the evaluation saw.
            "--expected-champion",
            "{{ ti.xcom_pull(task_ids='evaluate_model', key='champion_version') or 'none' }}",
            "--evaluation",
            "{{ ti.xcom_pull(task_ids='evaluate_model', key='figures') | tojson }}",
            # Today's held-out rows: the version must serve them before the alias moves.
            "--canary-uri",
            "{{ ti.xcom_pull(task_ids='data_preparation.preprocess_data')['holdout_uri'] }}",
        ],
        pool=SETTINGS.promotion_pool,
        fail_fast_exit_codes=(
            decisions.STALE_EVALUATION_EXIT_CODE,
            decisions.UNSERVABLE_EXIT_CODE,
        ),
        container_resources=pods.resources(SETTINGS, SETTINGS.preparation_resources),
        **pods.pod_defaults(SETTINGS, SETTINGS.serving_namespace),
    )
    skipped = skip_deployment(evaluation)

    wait_for_training_data >> data_preparation
    deployment_decision >> [deploy_model, skipped]
    [deploy_model, skipped] >> send_notification()
