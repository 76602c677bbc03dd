"""The champion history of a model: one JSON line per move of its ``champion`` alias.

The ledger lives at ``RECORD_PREFIX/MODEL/history.jsonl`` (S3 or local) next to the deployment
records. A move is a plain dict a person can read and edit::

    {"model_name": "m", "from": "1", "to": "2", "at": "2026-12-01T10:00:00+00:00",
     "dag_run_id": "scheduled__...", "run_id": "<MLflow run of v2>", "compared_with": "1",
     "evaluation": {"reason": "...", "metric": "accuracy", ...}}

``from`` and ``compared_with`` are None when there was no champion.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from trainer import storage
from trainer.errors import InputNotFoundError, UnreadableFileError

HISTORY_FILE = "history.jsonl"


def history_uri(record_prefix: str, model_name: str) -> str:
    """Where the ledger of ``model_name`` lives under ``record_prefix``."""
    return storage.join_uri(record_prefix, model_name, HISTORY_FILE)


def describe(version: str | None) -> str:
    """``v3``, or ``no champion`` for None: how messages name a champion."""
    return "no champion" if version is None else f"v{version}"


def read_moves(record_prefix: str, model_name: str) -> list[dict[str, Any]]:
    """The moves of ``model_name``'s champion, oldest first; empty when there is no ledger yet."""
    uri = history_uri(record_prefix, model_name)
    try:
        text = storage.read_bytes(uri).decode()
    except InputNotFoundError:
        return []
    return parse_moves(text, uri)


def parse_moves(text: str, where: str) -> list[dict[str, Any]]:
    """The moves in a ledger's ``text`` (read from ``where``, which errors name)."""
    moves = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            moves.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise UnreadableFileError(
                f"line {number} of the champion history {where} is not JSON ({error}); fix or "
                "remove that line"
            ) from None
    return moves


def append_move(record_prefix: str, model_name: str, move: dict[str, Any]) -> None:
    """Add ``move`` at the end of ``model_name``'s ledger."""
    # S3 has no append, so the whole file is read and written back. This read-modify-write is
    # safe because deploys are serialized by an Airflow pool of one slot.
    moves = [*read_moves(record_prefix, model_name), move]
    text = "".join(json.dumps(each, sort_keys=True) + "\n" for each in moves)
    storage.write_bytes(text.encode(), history_uri(record_prefix, model_name))


def champion_at(moves: list[dict[str, Any]], when: datetime) -> str | None:
    """The version that was champion at ``when`` (timezone-aware); None before the first move."""
    if when.tzinfo is None:
        raise ValueError(f"champion_at needs a timezone-aware time, got {when.isoformat()}")
    champion = None
    for move in moves:
        if datetime.fromisoformat(move["at"]) > when:
            break
        champion = move["to"]
    return champion


def inconsistencies(moves: list[dict[str, Any]]) -> list[str]:
    """What does not add up in the ordered ``moves``: broken chains and stale comparisons."""
    problems = []
    previous_to: str | None = None
    for number, move in enumerate(moves, start=1):
        label = (
            f"move {number} ({describe(move['from'])} -> {describe(move['to'])} at {move['at']} "
            f"by run {move.get('dag_run_id')})"
        )
        if number > 1 and move["from"] != previous_to:
            problems.append(
                f"{label}: it replaced {describe(move['from'])} but the move before made "
                f"{describe(previous_to)} the champion"
            )
        # Older lines may lack compared_with; only a recorded comparison can be stale.
        if "compared_with" in move and move["compared_with"] != move["from"]:
            problems.append(
                f"{label}: its evaluation compared with {describe(move['compared_with'])}, not "
                f"with the champion it replaced, {describe(move['from'])} (a stale comparison)"
            )
        previous_to = move["to"]
    return problems
