"""What the run reports: deployed, skipped or failed, with the figures."""

from ml_pipeline.notification import build_notification, trial_counts
from ml_training_pipeline import PIPELINE_ORDER, TRIAL_TASK_ID

RUN = {"dag_id": "ml_full_training_pipeline", "run_id": "r1", "logical_date": "2026-11-24"}
EVALUATION = {
    "model_name": "m",
    "candidate_version": "4",
    "reason": "candidate accuracy 0.9100 beats champion v3 accuracy 0.9000 by +0.0100",
}
UPSTREAM_OK = {
    "wait_for_training_data": "success",
    "data_preparation.validate_data": "success",
    "data_preparation.preprocess_data": "success",
    "generate_hyperparams": "success",
    f"{TRIAL_TASK_ID}_0": "success",
    f"{TRIAL_TASK_ID}_1": "failed",
    f"{TRIAL_TASK_ID}_2": "success",
    "select_best_model": "success",
    "evaluate_model": "success",
    "deployment_decision": "success",
}


def notify(states, evaluation=None, deployment=None, failure_reasons=None):
    return build_notification(
        run=RUN,
        task_states=states,
        pipeline_order=PIPELINE_ORDER,
        trial_task_id=TRIAL_TASK_ID,
        evaluation=evaluation,
        deployment=deployment,
        failure_reasons=failure_reasons,
    )


def test_deployed_run_reports_the_new_champion_and_trials():
    states = {**UPSTREAM_OK, "deploy_model": "success", "skip_deployment": "skipped"}
    record = notify(states, EVALUATION, {"version": "4"})
    assert record["outcome"] == "deployed"
    assert "m v4 is the new champion" in record["summary"]
    assert "Trials: 2 of 3 succeeded" in record["summary"]
    assert record["trials"] == {"total": 3, "succeeded": 2, "failed": 1}
    assert record["deployment"] == {"version": "4"}
    # A failed trial the pipeline recovered from is not the run's failure.
    assert record["failed_task"] == TRIAL_TASK_ID


def test_skipped_run_reports_the_reason():
    states = {**UPSTREAM_OK, "deploy_model": "skipped", "skip_deployment": "success"}
    record = notify(states, EVALUATION)
    assert record["outcome"] == "skipped"
    assert "was not deployed: candidate accuracy" in record["summary"]


def test_sensor_timeout_is_a_failure_at_the_sensor():
    states = {task_id: "upstream_failed" for task_id in PIPELINE_ORDER}
    states["wait_for_training_data"] = "failed"
    record = notify(states)
    assert record["outcome"] == "failed"
    assert record["failed_task"] == "wait_for_training_data"
    assert record["summary"].startswith("The pipeline failed at wait_for_training_data")
    assert record["evaluation"] is None


def test_all_trials_failed_is_a_failure_at_the_trials():
    states = {
        **{k: v for k, v in UPSTREAM_OK.items() if not k.startswith(TRIAL_TASK_ID)},
        f"{TRIAL_TASK_ID}_0": "failed",
        f"{TRIAL_TASK_ID}_1": "failed",
        "select_best_model": "upstream_failed",
        "evaluate_model": "upstream_failed",
        "deployment_decision": "upstream_failed",
        "deploy_model": "upstream_failed",
        "skip_deployment": "upstream_failed",
    }
    record = notify(states)
    assert record["outcome"] == "failed"
    assert record["failed_task"] == TRIAL_TASK_ID
    assert "Trials: 0 of 2 succeeded" in record["summary"]


def test_trial_counts_ignore_other_tasks_with_numeric_suffixes():
    states = {"train_trial_extra_1": "failed", f"{TRIAL_TASK_ID}_10": "success"}
    assert trial_counts(states, TRIAL_TASK_ID) == {"total": 1, "succeeded": 1, "failed": 0}


def test_a_failure_says_why_where_the_failed_task_left_a_reason():
    states = {"wait_for_training_data": "success", "data_preparation.validate_data": "failed"}
    record = notify(
        states, failure_reasons={"data_preparation.validate_data": "missing columns f03"}
    )
    assert record["summary"] == (
        "The pipeline failed at data_preparation.validate_data (missing columns f03); "
        "nothing was deployed."
    )
    assert record["failure_reasons"] == {"data_preparation.validate_data": "missing columns f03"}


def test_a_run_whose_candidate_already_is_the_champion_says_nothing_changed():
    states = {**UPSTREAM_OK, "deploy_model": "skipped", "skip_deployment": "success"}
    evaluation = {
        **EVALUATION,
        "decision": "unchanged",
        "reason": "v4 is already the champion: it was promoted by this DAG run, which ran again",
    }
    record = notify(states, evaluation)
    assert record["outcome"] == "unchanged"
    assert record["summary"].startswith("Nothing changed: m v4 is already the champion")


def test_a_skip_that_is_not_unchanged_still_reports_skipped():
    states = {**UPSTREAM_OK, "deploy_model": "skipped", "skip_deployment": "success"}
    assert notify(states, {**EVALUATION, "decision": "skip"})["outcome"] == "skipped"
