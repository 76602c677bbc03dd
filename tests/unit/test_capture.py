"""The capture's mapping from a run's evidence to a scenario, on recorded API answers.

``capture_evidence/*.json.gz`` are what ``python -m harness capture --evidence`` read from the
local stack's Airflow, cluster and MLflow after replaying the scenario of the same name: the
run, its task instances and tries, their logs, the deciding tasks' return values, the pods'
events and the registry. The mapping must find the faults the scenario injected, from that
evidence alone.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from harness.capture import (
    ExpectError,
    RunNotFinished,
    Sources,
    apply_expectations,
    command,
    read_evidence,
    render,
    scenario_from,
    scrub,
    write_scenario,
)
from harness.capture.command import scenario_name
from harness.capture.records import public_url
from harness.cli import build_parser
from harness.scenarios.model import ScenarioError, parse_scenario
from harness.scenarios.outcome import task_key

EVIDENCE = Path(__file__).parent / "capture_evidence"
TRIAL = "hyperparameter_tuning.train_trial"
VALIDATE = "data_preparation.validate_data"


def recorded(name: str) -> dict[str, Any]:
    with gzip.open(EVIDENCE / f"{name}.json.gz", "rt") as file:
        return json.load(file)


def captured(name: str, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    capture = scenario_from(evidence or recorded(name), f"captured_{name}")
    assert not capture.unmapped, capture.unmapped
    # The file loads as any scenario does.
    parse_scenario(render(capture, "test"), name)
    return capture.scenario


def test_failed_trials_maps_each_trials_failure_to_its_fault():
    scenario = captured("failed_trials")
    assert scenario["faults"] == {
        "trials": [
            {"trial": 1, "fault": "diverge"},
            {"trial": 2, "fault": "oom"},
            {"trial": 3, "fault": "unschedulable"},
        ]
    }
    assert [trial.get("gpus") for trial in scenario["trials"]] == [None, None, None, 64]
    expect = scenario["expect"]
    assert expect["tasks"][TRIAL] == {"success": 1, "failed": 3}
    assert expect["branch"] == "deploy_model" and expect["best_trial"] == 0
    assert expect["champion"] == {"before": "none", "after": "candidate"}
    assert expect["pods"] == {"oom_killed": [f"{TRIAL}[2]"]}


def test_late_data_lands_after_as_many_pokes_as_the_sensor_made():
    scenario = captured("late_data")
    assert scenario["data"]["arrival"] == {"after_pokes": 3}
    assert scenario["expect"]["sensor"] == {"deferred": True, "min_pokes": 2}


def test_an_evicted_trial_is_evicted_on_its_first_try_only():
    scenario = captured("trial_evicted")
    assert scenario["faults"] == {"trials": [{"trial": 1, "fault": "evicted"}]}
    assert scenario["expect"]["tasks"][TRIAL] == {"success": 2}


def test_mlflow_errors_are_an_mlflow_fault_from_the_task_that_met_them():
    scenario = captured("mlflow_down")
    assert scenario["faults"] == {
        "services": [{"service": "mlflow", "fault": "reset", "from_task": "score_models"}]
    }
    assert scenario["registry"] == {"champion": {}}
    expect = scenario["expect"]
    assert expect["run_state"] == "failed" and expect["branch"] == "none"
    assert expect["champion"] == {"before": "seeded", "after": "seeded"}
    assert expect["tasks"]["score_models"] == "failed"


def test_a_failure_no_rule_explains_is_listed_not_dropped():
    evidence = recorded("failed_trials")
    logs = evidence["logs"][f"{TRIAL}[1]"]
    logs[:] = [
        "error Task failed with exception\n    RuntimeError: the cooling failed in rack 7"
        for _ in logs
    ]
    capture = scenario_from(evidence, "captured")
    assert {"trial": 1, "fault": "diverge"} not in capture.scenario["faults"]["trials"]
    assert any(
        "train_trial[1] try 1 failed" in item and "rack 7" in item for item in capture.unmapped
    )
    assert "NOT MAPPED" in render(capture, "test")


def test_a_task_the_pipeline_lacks_is_listed():
    evidence = recorded("late_data")
    extra = copy.deepcopy(evidence["task_instances"][0])
    extra.update(task_id="push_to_feature_store", state="failed")
    evidence["task_instances"].append(extra)
    capture = scenario_from(evidence, "captured")
    assert any("push_to_feature_store" in item for item in capture.unmapped)
    assert "push_to_feature_store" not in json.dumps(capture.scenario["expect"])


def test_no_secret_of_the_conf_reaches_the_file_or_the_evidence():
    evidence = recorded("late_data")
    evidence["dag_run"]["conf"] = {
        **evidence["dag_run"]["conf"],
        "warehouse_password": "hunter2-value",
        "min_rows": 100,
    }
    capture = scenario_from(evidence, "captured")
    text = render(capture, "test")
    assert "hunter2-value" not in text
    assert any("warehouse_password" in item for item in capture.unmapped)
    assert capture.scenario["settings"] == {"min_rows": 100}
    assert "hunter2-value" not in json.dumps(scrub(evidence))


def test_unknown_settings_are_named_and_left_out():
    evidence = recorded("late_data")
    evidence["dag_run"]["conf"]["retries"] = 7
    capture = scenario_from(evidence, "captured")
    assert "settings" not in capture.scenario
    assert any("conf retries" in item for item in capture.unmapped)


def test_expect_sets_what_the_run_should_have_done():
    capture = scenario_from(recorded("failed_trials"), "captured")
    apply_expectations(
        capture,
        [
            "branch=skip_deployment",
            "champion.after=none",
            "tasks.deploy_model=skipped",
            "notification.trials.succeeded=0",
        ],
    )
    expect = capture.scenario["expect"]
    assert expect["branch"] == "skip_deployment"
    assert expect["champion"] == {"before": "none", "after": "none"}
    assert expect["tasks"]["deploy_model"] == "skipped"
    assert expect["notification"]["trials"]["succeeded"] == 0
    parse_scenario(render(capture, "test"), "captured")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("verdict=deploy", "'verdict' is no expectation"),
        ("branch=maybe", "branch"),
        ("branch", "FIELD=VALUE"),
        ("tasks.feature_store=failed", "feature_store"),
    ],
)
def test_a_bad_expect_says_what_is_wrong(override: str, named: str):
    capture = scenario_from(recorded("failed_trials"), "captured")
    with pytest.raises(ExpectError, match=named):
        apply_expectations(capture, [override])


def test_the_file_is_written_only_when_valid_and_never_over_another(tmp_path: Path):
    capture = scenario_from(recorded("late_data"), "captured_late")
    out = tmp_path / "captured_late.yaml"
    write_scenario(capture, "test", out)
    with pytest.raises(FileExistsError, match="--force"):
        write_scenario(capture, "test", out)
    capture.scenario["expect"]["branch"] = "sideways"
    with pytest.raises(ScenarioError, match="not written"):
        write_scenario(capture, "test", tmp_path / "other.yaml", overwrite=True)
    assert not (tmp_path / "other.yaml").exists()


def test_names_and_urls_carry_no_credentials():
    assert (
        scenario_name("manual__2026-12-02T05:00:00+00:00")
        == "incident_manual_2026_12_02t05_00_00_00_0"
    )
    assert public_url("https://ops:s3cret@airflow.example.com:8443/x") == (
        "https://airflow.example.com:8443/x"
    )


def test_the_best_trial_is_expected_only_where_the_evaluation_named_it():
    assert captured("failed_trials")["expect"]["best_trial"] == 0
    assert "best_trial" not in captured("mlflow_down")["expect"]


def _tries_of(evidence: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return evidence["tries"][key]


def test_a_trial_that_failed_once_then_succeeded_is_not_given_an_every_try_fault():
    evidence = recorded("failed_trials")
    key = f"{TRIAL}[2]"  # OOMKilled on both tries: make the retry succeed
    _tries_of(evidence, key)[-1]["state"] = "success"
    next(ti for ti in evidence["task_instances"] if task_key(ti) == key)["state"] = "success"
    capture = scenario_from(evidence, "captured")
    assert {"trial": 2, "fault": "oom"} not in capture.scenario["faults"]["trials"]
    assert any(f"{key} ended success" in item for item in capture.unmapped)


def test_a_trial_evicted_on_every_try_is_listed_since_a_replay_evicts_the_first_only():
    evidence = recorded("trial_evicted")
    key = f"{TRIAL}[1]"
    ti = next(ti for ti in evidence["task_instances"] if task_key(ti) == key)
    first = _tries_of(evidence, key)[0]
    _tries_of(evidence, key)[:] = [first, {**first, "try_number": 2}]
    evidence["logs"][key] = [evidence["logs"][key][0]] * 2
    ti.update(state="failed", try_number=2)
    capture = scenario_from(evidence, "captured")
    assert "faults" not in capture.scenario
    assert any(f"{key} ended failed after 2 tries" in item for item in capture.unmapped)


def test_a_refused_validation_describes_the_data_production_had():
    evidence = recorded("late_data")
    evidence["logs"][VALIDATE] = [
        "error Container 'base': state='TERMINATED', reason='Error', exit_code=3, message='"
        "data contract violated: rows 120 < min_rows 500; null_rate 0.400 > max_null_rate 0.050'"
    ]
    next(ti for ti in evidence["task_instances"] if ti["task_id"] == VALIDATE)["state"] = "failed"
    capture = scenario_from(evidence, "captured")
    assert capture.scenario["data"]["rows"] == 120
    assert capture.scenario["data"]["missing_rate"] == 0.4
    assert not [item for item in capture.unmapped if VALIDATE in item]


def test_a_failed_task_no_sign_explains_is_listed():
    evidence = recorded("late_data")
    evidence["logs"]["evaluate_model"] = ["error\n    KeyError: 'accuracy'"]
    next(ti for ti in evidence["task_instances"] if ti["task_id"] == "evaluate_model")["state"] = (
        "failed"
    )
    capture = scenario_from(evidence, "captured")
    assert any("evaluate_model failed" in i and "KeyError" in i for i in capture.unmapped)


def test_trials_without_rendered_arguments_fall_back_to_the_settings_grid():
    evidence = recorded("late_data")
    for ti in evidence["task_instances"]:
        if ti["task_id"] == TRIAL and ti["map_index"] == 1:
            ti["rendered_fields"] = {}
    evidence["dag_run"]["conf"]["trial_grid"] = {"learning_rate": [0.01, 0.03]}
    capture = scenario_from(evidence, "captured")
    assert "trials" not in capture.scenario
    assert capture.scenario["settings"] == {"trial_grid": {"learning_rate": [0.01, 0.03]}}
    assert any("trial(s) 1 have no rendered arguments" in item for item in capture.unmapped)


def test_mlflow_errors_in_a_trials_log_are_an_mlflow_fault_from_the_trials():
    evidence = recorded("late_data")
    evidence["logs"][f"{TRIAL}[0]"] = [
        "info [base] mlflow.exceptions.MlflowException: API request to http://mlflow/api failed"
    ]
    capture = scenario_from(evidence, "captured")
    assert capture.scenario["faults"]["services"] == [
        {"service": "mlflow", "fault": "unavailable", "from_task": TRIAL, "requests": 1}
    ]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("{'name': 'AWS_SECRET_ACCESS_KEY', 'value': 'wJalrXUt', 'value_from': None}", "wJalrXUt"),
        ("connecting to https://ops:hunter2@mlflow.example.com/api", "hunter2"),
        ("Authorization: Bearer eyJhbGciOi.J9.xyz", "eyJhbGciOi"),
        ("--db-password=s3cr3t-v4lue started", "s3cr3t-v4lue"),
        ('{"api_key": "abc123xyz"}', "abc123xyz"),
    ],
)
def test_credentials_in_log_text_are_withheld(text: str, secret: str):
    assert secret not in scrub(text)
    assert secret not in scrub({"logs": [text]})["logs"][0]


def test_env_entries_with_secret_names_are_withheld_but_others_kept():
    env = [{"name": "DB_PASSWORD", "value": "pw1"}, {"name": "MLFLOW_URI", "value": "http://m"}]
    assert scrub(env) == [
        {"name": "DB_PASSWORD", "value": "<withheld>"},
        {"name": "MLFLOW_URI", "value": "http://m"},
    ]


def test_an_expect_into_a_plain_value_is_refused():
    capture = scenario_from(recorded("failed_trials"), "captured")
    with pytest.raises(ExpectError, match="no parts"):
        apply_expectations(capture, ["branch.x=1"])


class _RunningAirflow:
    api_url = "https://airflow.example.com"

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return {"dag_run_id": run_id, "state": "running"}


def test_a_run_still_going_is_not_captured():
    with pytest.raises(RunNotFinished, match="is running: capture it once it has finished"):
        read_evidence(Sources(_RunningAirflow(), "dag"), "r1")  # type: ignore[arg-type]


def _main(argv: list[str]) -> int:
    return command.main(build_parser().parse_args(["capture", *argv]))


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--airflow", "https://ops:pw@airflow", "--user", "u", "--password", "p"], "--airflow"),
        (["--airflow", "https://airflow"], "no Airflow credentials"),
        (["--airflow", "https://a", "--token", "t", "--out", "Bad-Name.yaml"], "--out"),
        (["--airflow", "https://a", "--token", "t", "--expect", "verdict=1"], "verdict"),
        (
            ["--airflow", "https://a", "--token", "t", "--evidence", "/no/such/dir/e.json"],
            "--evidence",
        ),
        (["--airflow", "https://a", "--token", "t", "--kubeconfig", "/no/such"], "--kubeconfig"),
        (["--airflow", "https://a", "--token", "t", "--ca-cert", "/no/such"], "--ca-cert"),
    ],
)
def test_bad_options_are_refused_before_anything_is_read(
    argv, named, capsys, monkeypatch, tmp_path
):
    for name in (command.USER_ENV, command.PASSWORD_ENV, command.TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert _main(["--run-id", "r1", *argv]) == 2
    assert named in capsys.readouterr().err


def test_the_command_lines_credentials_beat_the_environment_and_an_empty_token_is_none(
    monkeypatch,
):
    monkeypatch.setenv(command.TOKEN_ENV, "")
    monkeypatch.setenv(command.USER_ENV, "env-user")
    monkeypatch.setenv(command.PASSWORD_ENV, "env-pw")
    args = build_parser().parse_args(["capture", "--airflow", "https://a", "--run-id", "r"])
    client = command._airflow(args)
    assert client._token is None and client._credentials["username"] == "env-user"
    monkeypatch.setenv(command.TOKEN_ENV, "env-token")
    argv = ["capture", "--airflow", "https://a", "--run-id", "r", "--user", "u", "--password", "p"]
    client = command._airflow(build_parser().parse_args(argv))
    assert client._token is None and client._credentials["username"] == "u"


def test_a_trial_task_never_expanded_is_expected_with_one_state():
    evidence = recorded("late_data")
    first = next(ti for ti in evidence["task_instances"] if ti["task_id"] == TRIAL)
    evidence["task_instances"] = [
        ti for ti in evidence["task_instances"] if ti["task_id"] != TRIAL
    ] + [{**first, "map_index": -1, "state": "upstream_failed", "rendered_fields": {}}]
    capture = scenario_from(evidence, "captured")
    assert capture.scenario["expect"]["tasks"][TRIAL] == "upstream_failed"
    assert not [item for item in capture.unmapped if "rendered" in item]
    parse_scenario(render(capture, "test"), "captured")


def test_the_limits_validation_refused_by_are_production_settings():
    evidence = recorded("late_data")
    evidence["logs"][VALIDATE] = ["violated: rows 800 < min_rows 1000"]
    next(ti for ti in evidence["task_instances"] if ti["task_id"] == VALIDATE)["state"] = "failed"
    capture = scenario_from(evidence, "captured")
    assert capture.scenario["data"]["rows"] == 800
    assert capture.scenario["settings"] == {"min_rows": 1000}


def test_errors_that_one_task_survived_and_another_did_not_write_no_fault():
    evidence = recorded("failed_trials")
    error = "info [base] mlflow.exceptions.MlflowException: API request to http://m failed"
    evidence["logs"][f"{TRIAL}[0]"] = [error]  # succeeded
    evidence["logs"][f"{TRIAL}[1]"] = [error, error]  # failed
    capture = scenario_from(evidence, "captured")
    assert "services" not in capture.scenario["faults"]
    assert any("some of those tasks failed and some recovered" in i for i in capture.unmapped)


def test_a_user_on_the_command_line_beats_a_token_in_the_environment(monkeypatch):
    monkeypatch.setenv(command.TOKEN_ENV, "env-token")
    monkeypatch.setenv(command.PASSWORD_ENV, "env-pw")
    argv = ["capture", "--airflow", "https://a", "--run-id", "r", "--user", "alice"]
    client = command._airflow(build_parser().parse_args(argv))
    assert client._token is None and client._credentials == {
        "username": "alice",
        "password": "env-pw",
    }
