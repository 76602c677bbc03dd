"""Scenario files (format, validation, the repository's scenarios) and the comparison of outcomes.

No stack here: outcomes are built by hand, as the runner would collect them.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import get_args

import pytest

from harness.cluster.device_plugin.checkpoint import devices_by_pod
from harness.scenarios.collect import trial_metrics, unrecorded_trials
from harness.scenarios.conf import FAULT_TRIAL_CHANGES, ScenarioIds, run_conf, trials_for
from harness.scenarios.model import (
    SCHEMA_PATH,
    TRIAL_FAULTS,
    ScenarioError,
    json_schema,
    load_scenario,
    load_scenarios,
    parse_scenario,
    scenario_paths,
)
from harness.scenarios.outcome import (
    Outcome,
    RegistryState,
    compare,
    compare_registry,
    sensor_pokes,
)
from harness.scenarios.pods import PodRecord, max_concurrent
from ml_pipeline.settings import harness_profile
from ml_pipeline.task_ids import PIPELINE_TASK_IDS

FILES = Path(__file__).parent / "scenario_files"
TRIAL = "hyperparameter_tuning.train_trial"


def parse(name: str):
    path = FILES / name
    return parse_scenario(path.read_text(), str(path))


@pytest.mark.parametrize("name", sorted(p.name for p in FILES.glob("valid-*.yaml")))
def test_valid_files_parse(name):
    assert parse(name).name == name.removesuffix(".yaml").replace("-", "_")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("invalid-unknown-field.yaml", "data.rowz: Extra inputs are not permitted"),
        ("invalid-unknown-task.yaml", "'train_model' names no task of the pipeline"),
        ("invalid-unknown-log-task.yaml", "logs: 'train_model' names no task of the pipeline"),
        ("invalid-renamed-unknown-column.yaml", "price: not columns of the features file"),
        ("invalid-setting-not-per-run.yaml", "sensor_timeout_seconds cannot be set by a scenario"),
        ("invalid-setting-type.yaml", "metric_floor"),
        ("invalid-fault-trial-missing.yaml", "trial 3 does not exist"),
        ("invalid-date.yaml", "not valid YAML"),
        ("invalid-not-a-mapping.yaml", "a scenario is a YAML mapping"),
        ("invalid-counts-on-unmapped-task.yaml", "counts by state are for mapped tasks"),
        ("invalid-action-on-unknown-run.yaml", "`target: yesterday` names no earlier run"),
        ("invalid-no-end-expected.yaml", "neither a run_state nor a notification outcome"),
        (
            "invalid-mig-without-device-plugin.yaml",
            "cluster.gpu_resource partitions the harness's device plugin's GPUs; add "
            "`device_plugin`",
        ),
        ("invalid-mig-unknown-profile.yaml", "cluster.gpu_resource: Input should be"),
        (
            "invalid-capacity-without-owned-cluster.yaml",
            "cluster.gpu_capacity sets the GPU node's count, which only a cluster the "
            "harness made allows; add `requires: [owned_cluster]`",
        ),
    ],
)
def test_invalid_files_name_the_file_and_the_problem(name, says):
    with pytest.raises(ScenarioError) as error:
        parse(name)
    assert str(FILES / name) in str(error.value)
    assert says in str(error.value)


def test_every_problem_of_a_file_is_reported_at_once():
    text = (
        "name: Bad Name\ndescription: x\nlogical_date: 2026-11-02\ndata: {rows: 0}\n"
        "expect: {run_state: success}\n"
    )
    with pytest.raises(ScenarioError) as error:
        parse_scenario(text, "x.yaml")
    assert "name:" in str(error.value) and "data.rows:" in str(error.value)
    assert "2 problem(s)" in str(error.value)


def test_a_service_fault_counts_at_least_one_request():
    text = (
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect: {run_state: success}\nfaults:\n"
        "  services:\n    - {service: s3, from_task: evaluate_model, requests: 0}\n"
    )
    with pytest.raises(ScenarioError, match=r"faults\.services\.0\.requests"):
        parse_scenario(text, "x.yaml")


def test_the_name_must_match_the_file(tmp_path):
    path = tmp_path / "late.yaml"
    path.write_text((FILES / "valid-minimal.yaml").read_text())
    with pytest.raises(ScenarioError, match="differs from the file name"):
        load_scenario(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ScenarioError, match=r"missing\.yaml: cannot read"):
        load_scenario(tmp_path / "missing.yaml")


def test_unknown_scenario_names_list_the_known_ones():
    with pytest.raises(ScenarioError, match=r"no scenario 'nope'.*known: .*happy_path"):
        scenario_paths(["nope"])


def test_the_repositorys_scenarios_are_valid_and_cover_the_required_cases():
    names = {scenario.name for scenario in load_scenarios()}
    required = {
        *("happy_path", "late_data", "failed_trials", "regressed_model", "gpu_contention"),
        *("missing_image", "trial_evicted", "node_lost", "corrupted_data"),
    }
    assert required <= names


def test_the_schema_file_is_current():
    written = json.loads(SCHEMA_PATH.read_text())
    assert written == json_schema(), (
        "scenarios/scenario.schema.json is stale: python -m harness.scenarios.schema"
    )


def test_faults_change_only_their_trial():
    scenario = parse("valid-everything.yaml")
    trials = trials_for(scenario, harness_profile())
    assert trials[0]["learning_rate"] == 0.003
    assert trials[1]["hidden_width"] == FAULT_TRIAL_CHANGES["oom"]["hidden_width"]
    assert trials[0]["hidden_width"] != trials[1]["hidden_width"]


def test_a_fault_on_the_profiles_grid_needs_that_trial():
    text = (
        "name: x\ndescription: x\nlogical_date: 2026-11-02\n"
        "faults: {trials: [{trial: 5, fault: crash}]}\nexpect: {run_state: success}\n"
    )
    with pytest.raises(ValueError, match="grid has 2 trial"):
        trials_for(parse_scenario(text, "x.yaml"), harness_profile())


def test_the_run_conf_isolates_the_replay():
    scenario = parse("valid-minimal.yaml")
    first, second = ScenarioIds.new("late_data"), ScenarioIds.new("late_data")
    conf = run_conf(scenario, first, harness_profile())
    assert conf["model_name"] != run_conf(scenario, second, harness_profile())["model_name"]
    assert conf["data_prefix"].startswith("scenarios/late_data-")
    assert "trials" not in conf
    assert len(first.run_id) <= 63


def _outcome(**changes) -> Outcome:
    values = dict(
        run_id="scenario__x__1",
        run_state="success",
        tasks={
            "wait_for_training_data": "success",
            f"{TRIAL}[0]": "success",
            f"{TRIAL}[1]": "failed",
            "deploy_model": "success",
            "skip_deployment": "skipped",
        },
        task_instances=[],
        pods=[],
        gpu_nodes=("gpu-worker",),
        gpu_capacity=2,
        seeded_champion=None,
        champion_before=None,
        champion_after="1",
        candidate_version="1",
        candidate_tags={"deployment_status": "champion"},
        notification={"outcome": "deployed", "summary": "v1 is the new champion", "trials": {}},
        sensor_deferred=True,
        sensor_pokes=3,
    )
    values.update(changes)
    return Outcome(**values)


def test_a_matching_outcome_has_no_mismatch():
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n"
        "  run_state: success\n  branch: deploy_model\n"
        f"  tasks: {{{TRIAL}: {{success: 1, failed: 1}}, '{TRIAL}[1]': failed}}\n"
        "  champion: {before: none, after: candidate}\n"
        "  sensor: {deferred: true, min_pokes: 2}\n  notification: {outcome: deployed}\n",
        "x.yaml",
    )
    assert compare(scenario.expect, _outcome()) == []


def test_every_mismatch_is_reported_at_once():
    scenario = parse("valid-everything.yaml")
    mismatches = compare(scenario.expect, _outcome())
    text = "\n".join(mismatches)
    for expected in (
        "branch: expected 'skip_deployment', got 'deploy_model'",
        "champion before the run: expected 'seeded', got 'none'",
        "candidate version tag deployment_status: expected 'rejected', got 'champion'",
        "notification outcome: expected 'skipped', got 'deployed'",
        "trial pods created: expected 2, got 0",
        f"{TRIAL}[1]: expected a pod OOMKilled",
    ):
        assert expected in text
    assert len(mismatches) >= 8


def test_too_few_pokes_is_a_mismatch():
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\n"
        "expect: {run_state: success, sensor: {min_pokes: 5}}\n",
        "x.yaml",
    )
    assert compare(scenario.expect, _outcome(sensor_pokes=2)) == [
        "sensor pokes without the file: expected at least 5, got 2"
    ]


def _pod(name: str, start: int, end: int, node: str = "gpu-worker", **extra) -> PodRecord:
    origin = datetime(2026, 11, 2, tzinfo=UTC)
    return PodRecord(
        name=name,
        namespace="ml-training",
        task_id=TRIAL,
        map_index=int(name[-1]),
        try_number=1,
        gpus=1,
        node=node,
        phase="Succeeded",
        exit_code=0,
        created=origin,
        started=origin + timedelta(seconds=start),
        finished=origin + timedelta(seconds=end),
        **extra,
    )


def test_concurrency_counts_overlaps_not_touching_ends():
    pods = [_pod("p0", 0, 10), _pod("p1", 0, 10), _pod("p2", 10, 20), _pod("p3", 5, 15)]
    assert max_concurrent(pods, datetime.now(UTC)) == 3
    assert max_concurrent(pods[:3], datetime.now(UTC)) == 2


def test_gpu_contention_expectations():
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n  run_state: success\n"
        "  pods:\n"
        "    trials_on_gpu_nodes: true\n    gpu_pods_within_capacity: true\n"
        "    waited_for_gpu: true\n",
        "x.yaml",
    )
    waited = ["0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had taint"]
    fine = [_pod("p0", 0, 10), _pod("p1", 0, 10), _pod("p2", 10, 20, pending_reasons=waited)]
    assert compare(scenario.expect, _outcome(pods=fine)) == []
    crowded = [*fine, _pod("p3", 5, 15, node="cpu-node")]
    text = "\n".join(compare(scenario.expect, _outcome(pods=crowded)))
    assert "GPU pods within capacity 2 (peak 3 at once)" in text
    assert "p3 on cpu-node" in text


def test_pods_sharing_a_device_while_both_ran_are_a_mismatch_and_an_unread_cluster_unchecked():
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n  run_state: success\n"
        "  pods: {distinct_devices: true}\n",
        "x.yaml",
    )
    # p2 reuses p0's GPU after p0 ended: that is what a freed GPU is for.
    fine = [
        _pod("p0", 0, 10, devices=["GPU-a"]),
        _pod("p1", 0, 10, devices=["GPU-b"]),
        _pod("p2", 10, 20, devices=["GPU-a"]),
    ]
    assert compare(scenario.expect, _outcome(pods=fine)) == []
    shared = [*fine, _pod("p3", 5, 15, devices=["GPU-b"])]
    text = "\n".join(compare(scenario.expect, _outcome(pods=shared)))
    assert "GPU-b held by p1 and p3 at once" in text
    short = [_pod("p0", 0, 10, devices=[])]
    text = "\n".join(compare(scenario.expect, _outcome(pods=short)))
    assert "p0 asked for 1 GPUs, was seen with []" in text
    patched = _outcome(pods=[_pod("p0", 0, 10, devices=None)])
    assert compare(scenario.expect, patched) == []
    assert patched.unchecked == ["pods.distinct_devices: this cluster's devices are not read"]


def test_a_failed_gpus_task_must_train_again_on_other_gpus():
    key = f"{TRIAL}[1]"
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n  run_state: success\n"
        f"  pods: {{moved_off_failed_gpu: ['{key}']}}\n",
        "x.yaml",
    )
    failure = {"task": key, "pod": "p1", "node": "gpu-worker", "devices": ["GPU-b"]}
    first = _pod("p1", 0, 5, devices=["GPU-b"])
    moved = _outcome(pods=[first, _pod("q1", 9, 20, devices=["GPU-a"])], gpu_failures=[failure])
    assert compare(scenario.expect, moved) == []
    again = _outcome(pods=[first, _pod("q1", 9, 20, devices=["GPU-b"])], gpu_failures=[failure])
    assert (
        "expected a later pod on other GPUs than the failed ['GPU-b'], got {'q1': ['GPU-b']}"
        in ("\n".join(compare(scenario.expect, again)))
    )
    never = compare(scenario.expect, _outcome(pods=[first]))
    assert never == [f"{key}: expected its GPU to fail under it, none did"]


def test_a_pod_bound_to_a_lost_node_while_away_must_be_refused_at_its_return():
    key = f"{TRIAL}[0]"
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n  run_state: success\n"
        f"  pods: {{rejected_at_admission: ['{key}']}}\n",
        "x.yaml",
    )
    origin = datetime(2026, 11, 2, tzinfo=UTC)
    # The node was away from second 10 to second 60; the retry was bound to it at 15.
    loss = {
        "task": key,
        "node": "gpu-worker",
        "lost_at": (origin + timedelta(seconds=10)).isoformat(),
        "back_at": (origin + timedelta(seconds=60)).isoformat(),
    }
    first = _pod("f0", 0, 12, devices=["GPU-a"], scheduled=origin)
    first.phase = "Failed"
    refused = _pod("p0", 0, 0, devices=[], status_reason="UnexpectedAdmissionError")
    refused.phase, refused.started, refused.exit_code = "Failed", None, None
    refused.scheduled = origin + timedelta(seconds=15)
    admitted = _pod("q0", 65, 80, devices=["GPU-a"], scheduled=origin + timedelta(seconds=65))
    ran = _outcome(pods=[first, refused, admitted], nodes_lost=[loss])
    assert compare(scenario.expect, ran) == []
    # Bound while away but admitted (the plugin's registration came first): the race was lost.
    admitted_early = _pod("p0", 61, 80, devices=["GPU-a"], scheduled=refused.scheduled)
    missed = compare(scenario.expect, _outcome(pods=[first, admitted_early], nodes_lost=[loss]))
    assert missed == [
        f"{key}: expected a pod refused at admission, its pods were "
        "{'f0': 'Failed', 'p0': 'Succeeded'}"
    ]
    # The retry waited for the node's return (bound after it): nothing to check.
    late = _outcome(pods=[first, admitted], nodes_lost=[loss])
    assert compare(scenario.expect, late) == []
    assert late.unchecked == [
        f"pods.rejected_at_admission {key}: none of its pods was bound to a lost node while it "
        "was away"
    ]
    unread = _outcome(pods=[_pod("p0", 0, 10, devices=None)], nodes_lost=[loss])
    assert compare(scenario.expect, unread) == []
    assert unread.unchecked == [
        f"pods.rejected_at_admission {key}: this cluster's devices are not read"
    ]


def test_the_kubelets_checkpoint_says_which_pod_holds_which_device(tmp_path):
    checkpoint = tmp_path / "kubelet_internal_checkpoint"
    entries = [
        {"PodUID": "u1", "ContainerName": "base", "ResourceName": "nvidia.com/gpu",
         "DeviceIDs": {"0": ["GPU-a", "GPU-b"]}},
        {"PodUID": "u2", "ContainerName": "base", "ResourceName": "nvidia.com/gpu",
         "DeviceIDs": ["GPU-c"]},
        {"PodUID": "u3", "ContainerName": "base", "ResourceName": "example.com/fpga",
         "DeviceIDs": {"0": ["F-1"]}},
    ]  # fmt: skip
    checkpoint.write_text(json.dumps({"Data": {"PodDeviceEntries": entries}, "Checksum": 1}))
    assert devices_by_pod("nvidia.com/gpu", checkpoint) == {
        "u1": ["GPU-a", "GPU-b"],
        "u2": ["GPU-c"],
    }
    checkpoint.write_text('{"Data": {"PodDev')  # caught mid-write
    assert devices_by_pod("nvidia.com/gpu", checkpoint) == {}
    assert devices_by_pod("nvidia.com/gpu", tmp_path / "none") == {}


def test_sensor_pokes_are_counted_from_the_trigger_log():
    log = "x\n[info] Sleeping for 5 seconds\n[info] Sleeping for 5 seconds\nfound\n"
    assert sensor_pokes(log) == 2


def test_expectations_can_name_every_pipeline_task():
    for task_id in PIPELINE_TASK_IDS:
        text = (
            f"name: x\ndescription: x\nlogical_date: 2026-11-02\n"
            f"expect: {{run_state: success, tasks: {{{task_id}: success}}}}\n"
        )
        parse_scenario(text, "x.yaml")


def test_an_invalid_scenario_stops_replay_before_anything_starts(tmp_path, capsys, monkeypatch):
    from harness import cli
    from harness.stack import Stack

    monkeypatch.setattr(Stack, "up", lambda self: pytest.fail("the stack was started"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: x\nlogical_date: 2026-11-02\nexpect: {branch: maybe}\n")
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["replay", str(bad)])
    assert exit_code.value.code == 2
    error = capsys.readouterr().err
    assert str(bad) in error and "expect.branch" in error and "Nothing was started" in error


def _result(passed: bool):
    from harness.scenarios.result import ScenarioResult

    scenario = parse("valid-minimal.yaml")
    origin = datetime(2026, 11, 2, tzinfo=UTC)
    outcome = _outcome(
        pods=[_pod("p0", 2, 12)],
        task_instances=[
            {
                "task_id": TRIAL,
                "map_index": 0,
                "state": "success",
                "start_date": (origin + timedelta(seconds=1)).isoformat(),
                "end_date": (origin + timedelta(seconds=13)).isoformat(),
            }
        ],
    )
    mismatches = [] if passed else ["branch: expected 'skip_deployment', got 'deploy_model'"]
    return ScenarioResult(scenario, outcome.run_id, outcome, mismatches, 75.0, Path("r"))


def test_the_table_has_a_row_per_scenario_with_its_verdict():
    from harness.scenarios.report import table

    lines = table([_result(True), _result(False)]).splitlines()
    assert lines[0].split() == ["scenario", "expected", "actual", "duration", "result"]
    assert lines[1].startswith("valid_minimal") and lines[1].endswith("ok")
    assert "success; deploy_model; deployed" in lines[2] and lines[2].endswith("MISMATCH (1)")


def test_the_html_report_draws_tasks_and_pods_on_a_timeline(tmp_path):
    from harness.scenarios.report import write_html

    page = write_html([_result(False)], tmp_path / "report.html").read_text()
    assert page.count("<svg") == 1
    assert f">{TRIAL}[0]</text>" in page and ">train_trial[0] try 1 pod</text>" in page
    assert "waiting (p0)" in page  # p0 was created at 0 s and started at 2 s
    assert "expected &#x27;skip_deployment&#x27;" in page
    assert "pod waiting to be placed and started" in page  # the legend


def test_the_timeline_follows_the_pipeline_and_puts_a_mismatch_beside_its_task():
    from harness.scenarios.report import _rows

    result = _result(False)
    origin = datetime(2026, 11, 2, tzinfo=UTC)
    late = [
        {"task_id": name, "map_index": -1, "state": "success", "start_date": origin.isoformat()}
        for name in ("send_notification", "data_preparation.validate_data")
    ]
    result.outcome.task_instances[:0] = late
    result.mismatches.append(f"logs of {TRIAL}[0] lack 'ErrImageNeverPull' (17 characters read)")
    labels = [row.label for row in _rows(result)]
    assert labels == [
        "data_preparation.validate_data",
        f"{TRIAL}[0]",
        "  train_trial[0] try 1 pod",
        "send_notification",
    ]
    (trial,) = [row for row in _rows(result) if row.label == f"{TRIAL}[0]"]
    assert trial.notes == [result.mismatches[-1]]


@pytest.mark.parametrize(("span", "step"), [(9, 1), (75, 10), (600, 60), (1300, 300)])
def test_the_axis_has_at_most_ten_ticks_of_a_round_step(span, step):
    from harness.scenarios.report import _tick_step

    assert _tick_step(span) == step


def test_missing_log_texts_and_waiting_reasons_are_mismatches():
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n  run_state: success\n"
        f"  logs: {{'{TRIAL}[0]': ['Image cannot be pulled', 'ErrImageNeverPull']}}\n"
        f"  pods: {{waiting_reasons: {{'{TRIAL}[0]': ErrImageNeverPull}}}}\n",
        "x.yaml",
    )
    pulled = _pod("p0", 0, 1, waiting_reasons=["ContainerCreating", "ErrImageNeverPull"])
    log = "Image cannot be pulled, unable to start: ErrImageNeverPull"
    assert compare(scenario.expect, _outcome(pods=[pulled], task_logs={f"{TRIAL}[0]": log})) == []
    mismatches = compare(
        scenario.expect,
        _outcome(pods=[_pod("p0", 0, 1)], task_logs={f"{TRIAL}[0]": "Pod took too long"}),
    )
    assert mismatches == [
        f"{TRIAL}[0]: expected its container to wait with ErrImageNeverPull, saw []",
        f"logs of {TRIAL}[0] lack 'Image cannot be pulled' (17 characters read)",
        f"logs of {TRIAL}[0] lack 'ErrImageNeverPull' (17 characters read)",
    ]


def test_every_trial_fault_says_what_it_changes_in_its_trial():
    # A fault without an entry would fail every replay that uses it with a KeyError.
    assert set(get_args(TRIAL_FAULTS)) == set(FAULT_TRIAL_CHANGES)


def test_the_missing_image_and_evicted_faults_change_their_trials_pod():
    text = (
        "name: x\ndescription: x\nrequires: [owned_cluster]\nlogical_date: 2026-11-02\n"
        "faults: {trials: "
        "[{trial: 0, fault: missing_image}, {trial: 1, fault: evicted}]}\n"
        "expect: {run_state: success}\n"
    )
    missing, evicted = trials_for(parse_scenario(text, "x.yaml"), harness_profile())
    assert missing["image"] == FAULT_TRIAL_CHANGES["missing_image"]["image"]
    assert evicted["epochs"] > harness_profile()["trial_defaults"]["epochs"]
    assert "image" not in evicted


def test_a_text_the_logs_must_lack_is_a_mismatch_when_present():
    scenario = parse_scenario(
        "name: x\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n  run_state: success\n"
        f"  logs_lack: {{'{TRIAL}[0]': ['Pod took too long to start']}}\n",
        "x.yaml",
    )
    timed_out = {f"{TRIAL}[0]": "PodLaunchTimeoutException: Pod took too long to start. More"}
    assert compare(scenario.expect, _outcome(task_logs={f"{TRIAL}[0]": "fast"})) == []
    assert compare(scenario.expect, _outcome(task_logs=timed_out)) == [
        f"logs of {TRIAL}[0] contain 'Pod took too long to start'"
    ]


def _trial_ti(index: int, state: str) -> dict:
    return {"task_id": "hyperparameter_tuning.train_trial", "map_index": index, "state": state}


def test_a_succeeded_trial_without_a_finished_run_is_unrecorded():
    tis = [_trial_ti(0, "success"), _trial_ti(1, "success"), _trial_ti(2, "failed")]
    tis.append({"task_id": "select_best_model", "map_index": -1, "state": "success"})
    runs = [
        {"trial_id": "0", "status": "FINISHED", "metrics": {"accuracy": 0.9}},
        {"trial_id": "1", "status": "RUNNING", "metrics": {}},
        {"trial_id": "2", "status": "FAILED", "metrics": {}},
    ]

    assert unrecorded_trials(tis, runs) == ["1"]
    assert trial_metrics(runs) == {"0": {"accuracy": 0.9}}
    # A retried trial: its last run finished, so it is recorded.
    runs.append({"trial_id": "1", "status": "FINISHED", "metrics": {"accuracy": 0.8}})
    assert unrecorded_trials(tis, runs) == []
    assert trial_metrics(runs) == {"0": {"accuracy": 0.9}, "1": {"accuracy": 0.8}}


HEAD = "name: x\ndescription: x\nlogical_date: 2026-11-02\n"


def test_an_explicit_null_asserts_absence():
    scenario = parse_scenario(
        HEAD + "expect:\n  run_state: success\n  notification: {failed_task: null}\n", "x.yaml"
    )
    assert compare(scenario.expect, _outcome()) == []
    failed = {"outcome": "failed", "summary": "", "trials": {}, "failed_task": "evaluate_model"}
    assert compare(scenario.expect, _outcome(notification=failed)) == [
        "notification failed_task: expected None, got 'evaluate_model'"
    ]


def test_a_field_left_out_is_not_compared_but_a_null_best_trial_is():
    left_out = parse_scenario(HEAD + "expect: {run_state: success}\n", "x.yaml")
    nulled = parse_scenario(HEAD + "expect: {run_state: success, best_trial: null}\n", "x.yaml")
    evaluation = {"best_trial": {"trial_id": "1"}}
    outcome = _outcome(notification={"outcome": "deployed", "trials": {}, "evaluation": evaluation})
    assert compare(left_out.expect, outcome) == []
    assert compare(nulled.expect, outcome) == ["best trial: expected None, got 1"]


def test_counts_of_a_mapped_task_are_exact():
    scenario = parse_scenario(
        HEAD + f"expect: {{run_state: success, tasks: {{{TRIAL}: {{success: 1}}}}}}\n", "x.yaml"
    )
    # _outcome has one trial succeeded and one failed: the failed one is not "left out".
    assert compare(scenario.expect, _outcome()) == [
        f"{TRIAL} states: expected {{'success': 1}}, got {{'success': 1, 'failed': 1}}"
    ]


def test_a_scenario_that_expects_no_end_is_invalid():
    with pytest.raises(ScenarioError, match="neither a run_state nor a notification outcome"):
        parse_scenario(HEAD + "expect: {branch: deploy_model}\n", "x.yaml")


TIMELINE = HEAD + (
    "timeline:\n"
    "  - run: first\n    expect: {run_state: success}\n"
    "  - action: clear_tasks\n    target: first\n    tasks: [evaluate_model]\n"
    "    downstream: true\n    expect: {notification: {outcome: unchanged}}\n"
    "  - run: second\n    with_previous: true\n    data: {seed: 9}\n"
    "    expect: {run_state: success, champion: {before: first}}\n"
    "expect_registry: {champion: first, history: [{from: none, to: first}]}\n"
)


def test_a_timeline_holds_runs_and_actions_in_order():
    scenario = parse_scenario(TIMELINE, "x.yaml")
    kinds = [type(step).__name__ for step in scenario.steps()]
    assert kinds == ["RunStep", "ActionStep", "RunStep"]
    first, second = scenario.runs()
    assert scenario.run_data(second).seed == 9 and scenario.run_data(first).seed == 5
    assert scenario.expect_registry.history[0].from_ == "none"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("target: first", "target: nobody"), "names no earlier run"),
        (("tasks: [evaluate_model]", "tasks: [evaluate_modle]"), "names no task of the pipeline"),
        (("run: second", "run: first"), "a run named 'first' exists already"),
        (("to: first", "to: third"), "third name no run"),
        (("before: first", "before: third"), "champion 'third' is none of"),
        (("    downstream: true\n", "    when_task: evaluate_model\n"), "needs both when_task"),
        (("action: clear_tasks", "action: clear_run"), "clear_run takes no `tasks`"),
    ],
)
def test_timeline_mistakes_are_caught_before_anything_starts(change, problem):
    with pytest.raises(ScenarioError, match=problem) as raised:
        parse_scenario(TIMELINE.replace(*change), "bad.yaml")
    assert "bad.yaml" in str(raised.value)


def test_a_scenario_has_either_expect_or_a_timeline():
    both = TIMELINE + "expect: {run_state: success}\n"
    with pytest.raises(ScenarioError, match="either `expect`"):
        parse_scenario(both, "x.yaml")


def test_runs_of_one_replay_share_the_model_and_not_the_data():
    scenario = parse_scenario(TIMELINE, "x.yaml")
    ids = ScenarioIds.new("x")
    first, second = scenario.runs()
    conf_a = run_conf(scenario, ids, harness_profile(), first, 0)
    conf_b = run_conf(scenario, ids, harness_profile(), second, 2)
    assert conf_a["model_name"] == conf_b["model_name"]
    assert conf_a["data_prefix"] != conf_b["data_prefix"]
    assert ids.run_id_of(0) == ids.run_id and len(ids.run_id_of(2)) <= 63
    assert ids.logical_date(date(2026, 11, 2), 2) - ids.logical_date(date(2026, 11, 2)) == (
        timedelta(seconds=2)
    )


def _registry(**changes):
    move = {"from": None, "to": "1", "compared_with": None, "at": "2026-11-02T10:00:00+00:00"}
    values = dict(
        versions={"1": {"deployment_status": "champion"}, "2": {"deployment_status": "rejected"}},
        champion="1",
        moves=[move],
        labels={"1": "first", "2": "second"},
        outcomes=["deployed", "skipped"],
    )
    values.update(changes)
    return RegistryState(**values)


def test_the_registry_end_state_is_compared():
    scenario = parse_scenario(
        HEAD + "timeline:\n  - run: first\n    expect: {run_state: success}\n"
        "  - run: second\n    expect: {run_state: success}\n"
        "expect_registry:\n  versions: 2\n  champion: first\n  moves: 1\n"
        "  history: [{from: none, to: first}]\n  history_consistent: true\n"
        "  outcomes: {deployed: 1}\n  tags: {second: {deployment_status: rejected}}\n",
        "x.yaml",
    )
    wanted = scenario.expect_registry
    assert compare_registry(wanted, _registry()) == []
    stale = {"from": "1", "to": "2", "compared_with": None, "at": "2026-11-02T10:05:00+00:00"}
    raced = _registry(champion="2", moves=[_registry().moves[0], stale], outcomes=["deployed"] * 2)
    text = "\n".join(compare_registry(wanted, raced))
    for expected in (
        "champion at the end: expected 'first', got 'second'",
        "moves of the champion alias: expected 1, got 2",
        "champion history inconsistent",
        "runs whose notification says deployed: expected 1, got 2",
    ):
        assert expected in text


def test_what_the_evaluation_compared_is_checked():
    scenario = parse_scenario(
        HEAD + "expect:\n  run_state: success\n"
        "  evaluation: {decision: deploy, compared_with: none}\n",
        "x.yaml",
    )
    evaluation = {"decision": "deploy", "champion_version": None}
    record = {"outcome": "deployed", "trials": {}, "evaluation": evaluation}
    assert compare(scenario.expect, _outcome(notification=record)) == []
    stale = {**record, "evaluation": {"decision": "deploy", "champion_version": "7"}}
    assert compare(scenario.expect, _outcome(notification=stale)) == [
        "evaluation compared with: expected 'none', got 'version 7'"
    ]


def test_logs_lack_fails_when_no_log_was_read():
    scenario = parse_scenario(
        HEAD + f"expect:\n  run_state: success\n  logs_lack: {{'{TRIAL}[0]': ['timed out']}}\n",
        "x.yaml",
    )
    assert compare(scenario.expect, _outcome(task_logs={f"{TRIAL}[0]": "trained"})) == []
    assert compare(scenario.expect, _outcome(task_logs={})) == [
        f"logs of {TRIAL}[0]: none could be read, so logs_lack proves nothing"
    ]


def test_an_empty_champion_history_is_not_consistent_evidence():
    scenario = parse_scenario(
        HEAD + "timeline:\n  - run: first\n    expect: {run_state: success}\n"
        "expect_registry: {history_consistent: true}\n",
        "x.yaml",
    )
    assert compare_registry(scenario.expect_registry, _registry(moves=[])) == [
        "champion history: empty, so its consistency proves nothing"
    ]


def test_outcome_counts_excuse_a_step_from_naming_its_end_only_with_several_runs():
    one_run = HEAD + (
        "timeline:\n  - run: first\n    expect: {branch: deploy_model}\n"
        "expect_registry: {outcomes: {deployed: 1}}\n"
    )
    with pytest.raises(ScenarioError, match="neither a run_state"):
        parse_scenario(one_run, "x.yaml")
    zero = one_run.replace("{deployed: 1}", "{failed: 0}").replace(
        "expect_registry", "  - run: second\n    expect: {branch: none}\nexpect_registry"
    )
    with pytest.raises(ScenarioError, match="neither a run_state"):
        parse_scenario(zero, "x.yaml")
    assert parse_scenario(zero.replace("{failed: 0}", "{deployed: 1}"), "x.yaml")


def _stack_on(owned: bool):
    from types import SimpleNamespace

    from harness.cluster.provider import ClusterInfo

    info = ClusterInfo(
        name="prod-gpu",
        provider="local-up" if owned else "kubeconfig",
        admin_kubeconfig=Path("/nonexistent"),
        cpu_nodes=("cpu",),
        gpu_nodes=("gpu",),
        host_address_for_pods="10.0.0.1",
        owned=owned,
    )
    # Nothing else: a replay that went further than the check would fail on the missing parts.
    return SimpleNamespace(cluster=SimpleNamespace(info=info))


@pytest.mark.parametrize("name", ["gpu_queue", "gpu_contention", "node_lost", "missing_image"])
def test_a_scenario_that_changes_the_cluster_is_skipped_on_one_the_harness_does_not_own(name):
    from harness.scenarios import ScenarioSkipped, replay
    from harness.scenarios.runner import unmet_requirement

    (scenario,) = load_scenarios([name])
    assert unmet_requirement(scenario, _stack_on(owned=True)) is None
    with pytest.raises(ScenarioSkipped) as skipped:
        replay(_stack_on(owned=False), scenario)
    assert f"scenario {name} requires a cluster the harness made" in str(skipped.value)
    assert "the kubeconfig cluster prod-gpu is not the harness's to change" in str(skipped.value)


def test_a_replay_that_sets_the_gpu_capacity_holds_the_cluster_alone():
    (queue,) = load_scenarios(["gpu_queue"])
    (happy,) = load_scenarios(["happy_path"])
    assert queue.changes_the_cluster and not happy.changes_the_cluster


def test_the_scenario_gpu_resources_are_the_device_plugins_mig_profiles():
    from typing import get_args

    from harness.cluster.device_plugin.topology import GPU_RESOURCE, MIG_RESOURCES
    from harness.scenarios.model import GPU_RESOURCES

    assert set(get_args(GPU_RESOURCES)) == {GPU_RESOURCE, *MIG_RESOURCES}
