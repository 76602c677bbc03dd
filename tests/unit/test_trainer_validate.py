"""``trainer validate``: each contract rule caught on its own, every broken rule reported."""

import json

import pytest

from fixtures.datagen import generate_features
from trainer.cli import main
from trainer.contract import LABEL_COLUMN
from trainer.errors import EXIT_DATA_CONTRACT
from trainer.storage import write_parquet

ROWS = 1000


def validate(tmp_path, frame, *limits):
    """Run validate in-process on ``frame``; returns (exit code, xcom path, input path)."""
    data, xcom = tmp_path / "features.parquet", tmp_path / "xcom.json"
    write_parquet(frame, str(data))
    code = main(["validate", "--input", str(data), "--xcom-path", str(xcom), *limits])
    return code, xcom, data


@pytest.fixture
def valid_features():
    return generate_features(ROWS, seed=11)


@pytest.fixture
def too_few_rows():
    return generate_features(120, seed=11)


@pytest.fixture
def too_many_nulls():
    return generate_features(ROWS, seed=11, missing_rate=0.12)


@pytest.fixture
def imbalanced_labels(valid_features):
    frame = valid_features.copy()
    positives = frame.index[frame[LABEL_COLUMN] == 1]
    frame.loc[positives[: int(len(positives) * 0.85)], LABEL_COLUMN] = 0
    return frame


@pytest.fixture
def missing_feature_column(valid_features):
    return valid_features.drop(columns=["f07"])


@pytest.fixture
def non_binary_labels(valid_features):
    frame = valid_features.copy()
    frame.loc[:9, LABEL_COLUMN] = 2
    return frame


@pytest.fixture
def text_feature(valid_features):
    return valid_features.assign(f03=valid_features["f03"].astype(str))


def test_valid_features_pass_and_report_their_measurements(tmp_path, valid_features):
    code, xcom, data = validate(tmp_path, valid_features)
    assert code == 0
    result = json.loads(xcom.read_text())
    assert set(result) == {
        *("input", "rows", "null_rate", "minority_label_fraction", "valid", "violations")
    }
    assert result["input"] == str(data)
    assert result["rows"] == ROWS
    assert result["null_rate"] == 0.0
    assert 0.4 < result["minority_label_fraction"] <= 0.5
    assert result["valid"] is True and result["violations"] == []


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("too_few_rows", "rows 120 < min_rows 500"),
        ("too_many_nulls", "null_rate 0.120 > max_null_rate 0.050"),
        ("imbalanced_labels", "minority_label_fraction 0.07"),
        ("missing_feature_column", "missing columns f07"),
        ("non_binary_labels", "label values {2} not in {0, 1}"),
        ("text_feature", "non-numeric feature columns f03 ("),
    ],
)
def test_each_rule_is_caught(tmp_path, capsys, request, fixture, message):
    code, xcom, data = validate(tmp_path, request.getfixturevalue(fixture))
    assert code == EXIT_DATA_CONTRACT
    stderr = capsys.readouterr().err
    assert f"data contract violated for {data}: " in stderr
    assert message in stderr
    # The failure's xcom says why (Airflow pushes a failed pod's xcom too).
    reported = json.loads(xcom.read_text())
    assert reported["exit_code"] == EXIT_DATA_CONTRACT and message in reported["error"]


def test_every_broken_rule_is_listed(tmp_path, capsys):
    frame = generate_features(120, seed=11, missing_rate=0.12)
    code, _, data = validate(tmp_path, frame)
    assert code == EXIT_DATA_CONTRACT
    assert (
        f"data contract violated for {data}: rows 120 < min_rows 500; "
        "null_rate 0.120 > max_null_rate 0.050"
    ) in capsys.readouterr().err


def test_thresholds_come_from_the_flags(tmp_path, too_few_rows):
    code, _, _ = validate(tmp_path, too_few_rows, "--min-rows", "100")
    assert code == 0


def test_missing_input_names_the_uri(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "features.parquet"
    code = main(["validate", "--input", str(missing), "--xcom-path", str(tmp_path / "x.json")])
    assert code == 1
    assert f"input {missing} does not exist" in capsys.readouterr().err


def test_the_verdict_is_written_to_the_report_uri_valid_or_not(tmp_path, valid_features):
    refused = tmp_path / "refused"
    refused.mkdir()
    renamed = valid_features.rename(columns={"f03": "f03_v2"})
    code, _, _ = validate(refused, renamed, "--report-uri", str(refused / "validation.json"))
    verdict = json.loads((refused / "validation.json").read_text())
    assert code == EXIT_DATA_CONTRACT
    assert verdict["valid"] is False and "missing columns f03" in verdict["violations"][0]
    code, _, _ = validate(tmp_path, valid_features, "--report-uri", str(tmp_path / "v.json"))
    assert code == 0 and json.loads((tmp_path / "v.json").read_text())["valid"] is True


def test_bytes_that_are_not_parquet_break_the_contract_and_are_reported(tmp_path):
    data, report = tmp_path / "features.parquet", tmp_path / "validation.json"
    data.write_bytes(b"PAR1 cut off in the middle of an export")
    code = main(["validate", "--input", str(data), "--report-uri", str(report)])
    assert code == EXIT_DATA_CONTRACT
    assert "is not a readable parquet file" in json.loads(report.read_text())["violations"][0]


def test_inside_a_pod_the_failure_is_also_the_termination_message(tmp_path, monkeypatch):
    # The kubelet mounts the file in every container; the streamed log can miss the last lines.
    termination = tmp_path / "termination-log"
    termination.write_text("")
    monkeypatch.setattr("trainer.cli.TERMINATION_LOG", str(termination))
    frame = generate_features(ROWS, seed=11).drop(columns=["f03"])
    code, _, data = validate(tmp_path, frame)
    assert code == EXIT_DATA_CONTRACT
    assert termination.read_text().startswith(
        f"trainer validate failed: data contract violated for {data}"
    )


def test_outside_a_pod_no_termination_file_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.cli.TERMINATION_LOG", str(tmp_path / "absent"))
    code, _, _ = validate(tmp_path, generate_features(ROWS, seed=11).drop(columns=["f03"]))
    assert code == EXIT_DATA_CONTRACT and not (tmp_path / "absent").exists()
