"""The reliability benchmark's record: runs written one invocation are read back by the next."""

from __future__ import annotations

import json

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
        host="2 cores, 24 GiB",
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


def test_a_line_recorded_before_hosts_were_kept_still_reads(tmp_path):
    line = json.loads(_run([], []).to_json())
    del line["host"]
    record = tmp_path / "runs.jsonl"
    record.write_text(json.dumps(line) + "\n")

    assert reliability.read_record(record)[0].host == ""


def test_the_streak_counts_clean_runs_back_from_the_latest():
    clean, failed, leaky = _run([], []), _run(["test_scenario[s3_errors]"], []), _run([], ["x"])

    assert reliability.clean_streak([clean, failed, clean, clean]) == 2
    assert reliability.clean_streak([clean, clean, leaky]) == 0
    assert reliability.clean_streak([]) == 0
