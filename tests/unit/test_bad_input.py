"""Bad input stops the harness before anything starts, with what and where, leaving nothing."""

from __future__ import annotations

import os
import subprocess
import sys


def _harness(tmp_path, *arguments: str) -> subprocess.CompletedProcess[str]:
    # A PATH without kind (or docker): the provider cannot work, whatever this host has.
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {
        **os.environ,
        "PATH": str(empty),
        "ML_TESTBED_STATE": str(tmp_path / "state"),
        # Nor the kind the harness unpacks into its cache.
        "ML_TESTBED_CACHE": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "harness", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_provider_that_cannot_work_here_is_named_and_nothing_starts(tmp_path):
    answer = _harness(tmp_path, "up", "--provider", "kind")
    assert answer.returncode != 0
    assert "kind cannot work here: the kind binary is not on PATH" in answer.stdout + answer.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.pid"))


def test_an_invalid_scenario_file_is_named_and_nothing_starts(tmp_path):
    scenario = tmp_path / "broken.yaml"
    scenario.write_text(
        "name: broken\ndescription: x\nlogical_date: 2026-11-02\nexpect:\n  tries: {nope: 2}\n"
    )
    answer = _harness(tmp_path, "replay", str(scenario))
    assert answer.returncode == 2
    output = answer.stdout + answer.stderr
    assert str(scenario) in output and "'nope' names no task of the pipeline" in output
    assert not (tmp_path / "state").exists()
