"""trainer.history: who was champion when, what does not add up, and the ledger's round trip."""

from datetime import UTC, datetime

import pytest

from trainer.errors import UnreadableFileError
from trainer.history import (
    append_move,
    champion_at,
    history_uri,
    inconsistencies,
    read_moves,
)

MODEL = "history-model"


def move(source, target, at, compared_with="same", dag_run_id="run"):
    """A hand-made move; ``compared_with`` defaults to its own ``from`` (a fresh comparison)."""
    return {
        "model_name": MODEL,
        "from": source,
        "to": target,
        "at": at,
        "dag_run_id": dag_run_id,
        "run_id": f"mlflow-run-of-v{target}",
        "compared_with": source if compared_with == "same" else compared_with,
        "evaluation": {"metric": "accuracy"},
    }


MOVES = [
    move(None, "1", "2026-12-01T10:00:00+00:00"),
    move("1", "2", "2026-12-02T10:00:00+00:00"),
    move("2", "3", "2026-12-03T10:00:00+00:00"),
]


def at(day, hour):
    return datetime(2026, 12, day, hour, tzinfo=UTC)


def test_champion_at_is_none_before_the_first_move():
    assert champion_at(MOVES, at(1, 9)) is None
    assert champion_at([], at(1, 9)) is None


def test_champion_at_follows_the_moves_including_their_own_second():
    assert champion_at(MOVES, at(1, 10)) == "1"
    assert champion_at(MOVES, at(2, 9)) == "1"
    assert champion_at(MOVES, at(2, 10)) == "2"
    assert champion_at(MOVES, at(9, 0)) == "3"


def test_champion_at_refuses_a_naive_time():
    with pytest.raises(ValueError, match="timezone-aware"):
        champion_at(MOVES, datetime(2026, 12, 2))


def test_a_consistent_history_has_no_inconsistencies():
    assert inconsistencies(MOVES) == []


def test_a_broken_chain_is_reported():
    # Someone moved the alias from 2 to 5 by hand: the next move replaced 5, not 3.
    broken = [*MOVES, move("5", "6", "2026-12-04T10:00:00+00:00", dag_run_id="run-6")]
    [problem] = inconsistencies(broken)
    assert problem.startswith("move 4 (v5 -> v6 at 2026-12-04T10:00:00+00:00 by run run-6)")
    assert "replaced v5 but the move before made v3 the champion" in problem


def test_a_promotion_on_a_stale_comparison_is_reported():
    stale = [*MOVES[:2], move("2", "3", "2026-12-03T10:00:00+00:00", compared_with="1")]
    [problem] = inconsistencies(stale)
    assert "move 3 (v2 -> v3" in problem
    assert "compared with v1, not with the champion it replaced, v2 (a stale comparison)" in problem


def test_a_first_promotion_compared_with_no_champion_is_fine_and_otherwise_stale():
    assert inconsistencies([move(None, "1", "2026-12-01T10:00:00+00:00")]) == []
    [problem] = inconsistencies([move("1", "2", "2026-12-01T10:00:00+00:00", compared_with=None)])
    assert "compared with no champion" in problem


def test_append_then_read_round_trips_on_a_local_path(tmp_path):
    prefix = str(tmp_path / "deployments")
    assert read_moves(prefix, MODEL) == []
    for each in MOVES:
        append_move(prefix, MODEL, each)
    assert read_moves(prefix, MODEL) == MOVES
    lines = (tmp_path / "deployments" / MODEL / "history.jsonl").read_text().splitlines()
    assert len(lines) == len(MOVES)
    assert history_uri(prefix, MODEL) == f"{prefix}/{MODEL}/history.jsonl"


def test_a_line_that_is_not_json_is_named(tmp_path):
    ledger = tmp_path / MODEL / "history.jsonl"
    ledger.parent.mkdir()
    ledger.write_text('{"to": "1"}\nnot json\n')
    with pytest.raises(UnreadableFileError, match=f"line 2 of the champion history {ledger}"):
        read_moves(str(tmp_path), MODEL)
