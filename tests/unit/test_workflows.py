"""The CI workflow files users copy: well-formed YAML that runs what docs/gpu.md says."""

from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def load(name):
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key "on" as True.
    return document, document.get("on", document.get(True))


def commands(job):
    return [step.get("run", "") for step in job["steps"]]


def uploads(job):
    return [step for step in job["steps"] if step.get("uses", "").startswith("actions/upload")]


def test_scenarios_workflow_runs_the_suite_on_kind_for_every_change():
    document, triggers = load("scenarios.yml")
    assert {"push", "pull_request"} <= set(triggers)
    job = document["jobs"]["scenarios"]
    assert job["runs-on"] == "ubuntu-latest"
    assert job["env"]["ML_TESTBED_CLUSTER_PROVIDER"] == "kind"
    runs = "\n".join(commands(job))
    assert "kind version" in runs
    assert "pip install tox" in runs
    assert "tox -e lint,unit,scenarios" in runs
    (upload,) = uploads(job)
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == "reports/"


def test_nightly_gpu_workflow_runs_tox_gpu_on_a_self_hosted_gpu_runner():
    document, triggers = load("nightly-gpu.yml")
    assert "schedule" in triggers
    assert "workflow_dispatch" in triggers
    job = document["jobs"]["gpu"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    runs = commands(job)
    assert "nvidia-smi" in runs
    assert any(run.endswith("tox -e gpu") for run in runs)
    (upload,) = uploads(job)
    assert upload["if"] == "always()"
    assert "reports/gpu/benchmark.txt" in upload["with"]["path"]
