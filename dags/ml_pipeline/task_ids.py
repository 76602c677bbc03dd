"""The pipeline's task ids, for the DAG, its notification and the harness's scenario checks."""

from __future__ import annotations

from ml_pipeline.decisions import DEPLOY_TASK_ID, SKIP_TASK_ID

SENSOR_TASK_ID = "wait_for_training_data"
VALIDATE_TASK_ID = "data_preparation.validate_data"
TRIAL_TASK_ID = "hyperparameter_tuning.train_trial"
NOTIFICATION_TASK_ID = "send_notification"
# The order failures are reported in; the first failed task is the run's cause.
PIPELINE_ORDER = (
    SENSOR_TASK_ID,
    VALIDATE_TASK_ID,
    "data_preparation.preprocess_data",
    "generate_hyperparams",
    TRIAL_TASK_ID,
    "select_best_model",
    "score_models",
    "evaluate_model",
    "deployment_decision",
    DEPLOY_TASK_ID,
    SKIP_TASK_ID,
)
PIPELINE_TASK_IDS = (*PIPELINE_ORDER, NOTIFICATION_TASK_ID)
# The tasks that run in pods; their S3 requests name them (``app/<task id>`` in the User-Agent).
POD_TASK_IDS = (
    VALIDATE_TASK_ID,
    "data_preparation.preprocess_data",
    TRIAL_TASK_ID,
    "score_models",
    DEPLOY_TASK_ID,
)
MAPPED_TASK_IDS = (TRIAL_TASK_ID,)
