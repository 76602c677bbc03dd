"""The reliability benchmark's record: runs written one invocation are read back by the next."""

from __future__ import annotations

import pytest

from harness import leftovers
from harness.benchmarks import reliability


def _run(failed: list[str], left: list[str]) -> reliability.RunFigures:
    return reliability.RunFigures(
        seconds=1108.4,
        passed=14,
        failed=failed,
        leftovers=leftovers.Leftovers(pod_containers=left),
        peak_memory_mib=5632.0,
        exit_code=1 if failed else 0,
        tests=["test_scenario[happy_path]", *failed],
        commit="60dd7d8",
        date="2026-11-25 12:30",
    )


def test_runs_round_trip_through_the_record(tmp_path, capsys):
    record = tmp_path / "runs.jsonl"
    first, second = _run([], []), _run(["test_scenario[s3_errors]"], ["k8s_trainer_x"])
    record.write_text(first.to_json() + "\n" + second.to_json() + "\n")

    runs = reliability.read_record(record)

    assert runs == [first, second]
    reliability.print_table(runs)
    printed = capsys.readouterr().out
    assert "test_scenario[s3_errors]                             1" in printed
    assert "runs that left something: 1" in printed
    assert "k8s_trainer_x" in printed


def test_a_damaged_record_names_the_file_and_line(tmp_path):
    record = tmp_path / "runs.jsonl"
    record.write_text(_run([], []).to_json() + "\n{not json\n")

    with pytest.raises(SystemExit, match=r"runs\.jsonl:2: not a recorded run.*--fresh"):
        reliability.read_record(record)


def test_no_record_is_no_runs(tmp_path):
    assert reliability.read_record(tmp_path / "runs.jsonl") == []
