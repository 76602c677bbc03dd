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
    apply_expectations,
    render,
    scenario_from,
    scrub,
    write_scenario,
)
from harness.capture.command import public_url, scenario_name
from harness.scenarios.model import ScenarioError, parse_scenario

EVIDENCE = Path(__file__).parent / "capture_evidence"
TRIAL = "hyperparameter_tuning.train_trial"


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
