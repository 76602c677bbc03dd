"""The DAG file imports cleanly and its task graph is the production pipeline."""

import warnings
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import TriggerRule

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "ml_full_training_pipeline"
TRIALS = "hyperparameter_tuning.train_trial"


def load_dagbag():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dagbag = DagBag(dag_folder=str(DAGS))
    return dagbag, caught


@pytest.fixture(scope="module")
def loaded():
    return load_dagbag()


@pytest.fixture(scope="module")
def dag(loaded):
    return loaded[0].dags[DAG_ID]


def test_dag_folder_imports_without_errors(loaded):
    dagbag, _ = loaded
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dags) == [DAG_ID, "testbed_smoke"]


def test_our_code_raises_no_deprecation_warnings(loaded):
    _, caught = loaded
    ours = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, DeprecationWarning | PendingDeprecationWarning)
        and str(DAGS) in w.filename
    ]
    assert ours == []


def test_no_airflow_2_leftovers_in_the_source():
    source = (DAGS / "ml_training_pipeline.py").read_text()
    for leftover in (
        "schedule_interval",
        "is_delete_operator_pod",
        "airflow.operators.",
        "params=",
    ):
        assert leftover not in source


def test_task_graph(dag):
    upstream = {task.task_id: set(task.upstream_task_ids) for task in dag.tasks}
    assert upstream == {
        "wait_for_training_data": set(),
        "data_preparation.validate_data": {"wait_for_training_data"},
        "data_preparation.preprocess_data": {"data_preparation.validate_data"},
        "generate_hyperparams": {"data_preparation.preprocess_data"},
        TRIALS: {"generate_hyperparams"},
        "select_best_model": {TRIALS},
        "score_models": {"select_best_model"},
        "evaluate_model": {"select_best_model", "score_models"},
        "deployment_decision": {"evaluate_model"},
        "deploy_model": {"deployment_decision"},
        "skip_deployment": {"deployment_decision", "evaluate_model"},
        "send_notification": {"deploy_model", "skip_deployment"},
    }


def test_the_task_ids_module_names_every_task(dag):
    from ml_pipeline.task_ids import PIPELINE_TASK_IDS

    assert sorted(task.task_id for task in dag.tasks) == sorted(PIPELINE_TASK_IDS)


def test_trigger_rules(dag):
    rules = {task.task_id: task.trigger_rule for task in dag.tasks}
    assert rules.pop("select_best_model") == TriggerRule.ALL_DONE_MIN_ONE_SUCCESS
    assert rules.pop("send_notification") == TriggerRule.ALL_DONE
    assert set(rules.values()) == {TriggerRule.ALL_SUCCESS}


def test_operators_are_the_airflow_3_providers(dag):
    kinds = {task.task_id: type(task).__name__ for task in dag.tasks}
    assert kinds["wait_for_training_data"] == "S3KeySensor"
    # PipelinePodOperator is the provider's KubernetesPodOperator, deleting pods that never
    # started; TrialPodOperator also fails a GPU request no node can meet.
    assert kinds["data_preparation.validate_data"] == "PipelinePodOperator"
    assert kinds["data_preparation.preprocess_data"] == "PipelinePodOperator"
    assert kinds[TRIALS] == "MappedOperator"
    assert dag.get_task(TRIALS).operator_class.__name__ == "TrialPodOperator"
    assert kinds["deployment_decision"] == "BranchPythonOperator"
    assert kinds["deploy_model"] == "PipelinePodOperator"
    assert dag.get_task("deploy_model").pool == "ml_promotion"
    assert dag.get_task("evaluate_model").multiple_outputs is True


def test_sensor_is_deferrable_and_timed_by_settings(dag):
    sensor = dag.get_task("wait_for_training_data")
    assert sensor.deferrable is True
    assert sensor.bucket_name == "ml-datasets"
    assert (
        sensor.bucket_key == "{{ run_setting(dag_run, 'data_prefix') }}/{{ ds }}/features.parquet"
    )
    assert (sensor.poke_interval, sensor.timeout) == (300, 6 * 3600)


def test_preparation_pods_have_cpu_and_memory_requests_and_limits(dag):
    for task_id in ("data_preparation.validate_data", "data_preparation.preprocess_data"):
        pod = dag.get_task(task_id)
        resources = pod.container_resources
        assert set(resources.requests) == {"cpu", "memory"}
        assert set(resources.limits) == {"cpu", "memory"}
        assert pod.do_xcom_push is True
        assert pod.namespace == "ml-training"


def test_trials_have_toleration_selector_and_volume_and_get_resources_per_trial(dag):
    trials = dag.get_task(TRIALS)
    partial = trials.partial_kwargs
    assert "container_resources" not in partial  # each trial's comes from generate_hyperparams
    assert [(t.key, t.operator, t.effect) for t in partial["tolerations"]] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    assert set(partial["node_selector"]) == {"gpu-type", "node-pool"}
    assert partial["volumes"][0].persistent_volume_claim.claim_name == "ml-shared-data"
    assert partial["volume_mounts"][0].mount_path == "/mnt/shared-data"
    assert partial["do_xcom_push"] is True
    assert partial["on_finish_action"] == "delete_succeeded_pod"
    assert type(trials.expand_input).__name__ == "ListOfDictsExpandInput"


def test_pods_get_credentials_from_a_secret_not_from_values(dag):
    for task_id in ("data_preparation.validate_data", "deploy_model"):
        pod = dag.get_task(task_id)
        assert pod.env_from[0].secret_ref.name == "ml-pipeline-credentials"
        names = {env.name for env in pod.env_vars}
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & names
        assert pod.on_finish_action.value == "delete_succeeded_pod"


def test_every_pod_reports_the_trainers_last_words_in_its_termination_message(dag):
    # The streamed pod log can miss the last lines of a container that exits within a second of
    # starting (the follow ends with an HTTP error and the provider does not read again once the
    # container has terminated); the termination message reaches the task's failure either way.
    for task_id in (
        "data_preparation.validate_data",
        "data_preparation.preprocess_data",
        "deploy_model",
    ):
        assert dag.get_task(task_id).termination_message_policy == "FallbackToLogsOnError"
    partial = dag.get_task(TRIALS).partial_kwargs
    assert partial["termination_message_policy"] == "FallbackToLogsOnError"


def test_trials_wait_for_a_gpu_as_long_as_the_schedule_timeout_setting_says(dag):
    # Other pods need no GPU: waiting hours for a node would only hide a broken cluster (and a
    # deploy pod would hold the one-slot promotion pool meanwhile).
    for task_id in ("data_preparation.validate_data", "deploy_model"):
        pod = dag.get_task(task_id)
        assert (pod.schedule_timeout_seconds, pod.startup_timeout_seconds) == (600, 600)
    partial = dag.get_task(TRIALS).partial_kwargs
    assert partial["schedule_timeout_seconds"] == 12 * 3600
    assert partial["startup_timeout_seconds"] == 600


def test_a_stale_or_unservable_deploy_is_not_retried(dag):
    from trainer.errors import EXIT_STALE_EVALUATION, EXIT_UNSERVABLE

    assert dag.get_task("deploy_model").fail_fast_exit_codes == (
        EXIT_STALE_EVALUATION,
        EXIT_UNSERVABLE,
    )


def test_deploy_runs_in_the_serving_namespace(dag):
    assert dag.get_task("deploy_model").namespace == "ml-serving"


def test_the_harness_profile_gives_pods_short_mlflow_retries():
    from ml_pipeline import pods
    from ml_pipeline.settings import PipelineSettings, harness_profile

    profile = {k: v for k, v in harness_profile().items() if k != "schedule"}
    env = {e.name: e.value for e in pods.pod_environment(PipelineSettings(**profile))}
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert env["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] == "false"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in {
        e.name for e in pods.pod_environment(PipelineSettings())
    }


def test_settings_from_the_environment_reach_the_operators(monkeypatch):
    monkeypatch.setenv("ML_PIPELINE_TRAINER_IMAGE", "trainer:under-test")
    monkeypatch.setenv("ML_PIPELINE_SCHEDULE", "null")
    monkeypatch.setenv("ML_PIPELINE_POD_STARTUP_CHECK_INTERVAL_SECONDS", "1")
    dagbag, _ = load_dagbag()
    dag = dagbag.dags[DAG_ID]
    assert dag.get_task("deploy_model").image == "trainer:under-test"
    for task_id in ("data_preparation.validate_data", "deploy_model"):
        assert dag.get_task(task_id).startup_check_interval_seconds == 1
    assert dag.get_task(TRIALS).partial_kwargs["startup_check_interval_seconds"] == 1
    assert type(dag.timetable).__name__ == "NullTimetable"


def test_a_bad_setting_is_an_import_error_naming_it(monkeypatch):
    monkeypatch.setenv("ML_PIPELINE_RETRIES", '"often"')
    dagbag, _ = load_dagbag()
    assert len(dagbag.import_errors) == 2  # both DAG files read the settings
    for error in dagbag.import_errors.values():
        assert "environment variables ML_PIPELINE_*" in error
        assert "retries" in error


def test_every_pod_task_is_known_as_one_and_names_itself_in_its_s3_requests(dag):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from ml_pipeline.task_ids import POD_TASK_IDS

    pods = [
        t
        for t in dag.tasks
        if issubclass(getattr(t, "operator_class", type(t)), KubernetesPodOperator)
    ]
    assert sorted(t.task_id for t in pods) == sorted(POD_TASK_IDS)
    for task in pods:
        env_vars = (
            task.partial_kwargs["env_vars"] if hasattr(task, "partial_kwargs") else task.env_vars
        )
        named = {e.name: e.value for e in env_vars}
        # Rendered per task instance: KubernetesPodOperator templates env_vars.
        assert named["AWS_SDK_UA_APP_ID"] == "{{ ti.task_id }}", task.task_id
        assert "env_vars" in KubernetesPodOperator.template_fields
