"""The Airflow REST client's trigger when Airflow's SQLite database is slow to take a write.

The HTTP session is faked (the boundary): a POST that timed out or failed may still have created
the run, so the client looks before it tries again, and never creates a run twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from harness.airflow import client as airflow_client
from harness.airflow.client import AirflowApiError, AirflowClient

WHEN = datetime(2026, 11, 22, tzinfo=UTC)


class FakeResponse:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status_code, self._body = status, body
        self.ok = status < 400
        self.content = b"x" if body is not None else b""
        self.text = str(body)

    def json(self) -> Any:
        return self._body


class FakeSession:
    """Answers each request with the next of ``answers`` (an exception is raised)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers, self.calls = answers, []

    def post(self, url: str, **_: Any) -> FakeResponse:
        return FakeResponse(200, {"access_token": "t"})

    def request(self, method: str, url: str, **_: Any) -> FakeResponse:
        self.calls.append((method, url.rsplit("/api/v2", 1)[-1]))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_answering(answers: list[Any], monkeypatch: pytest.MonkeyPatch) -> AirflowClient:
    monkeypatch.setattr(airflow_client.time, "sleep", lambda seconds: None)
    client = AirflowClient("http://airflow", "u", "p")
    client._session = FakeSession(answers)  # type: ignore[assignment]
    return client


def test_a_trigger_that_timed_out_but_created_the_run_returns_that_run(monkeypatch):
    client = client_answering(
        [requests.ReadTimeout("slow"), FakeResponse(200, {"dag_run_id": "r1"})], monkeypatch
    )
    assert client.trigger("dag", WHEN, run_id="r1") == {"dag_run_id": "r1"}
    assert [method for method, _ in client._session.calls] == ["POST", "GET"]


def test_a_trigger_that_failed_without_a_run_is_tried_again(monkeypatch):
    client = client_answering(
        [
            FakeResponse(500, {"detail": "database is locked"}),
            FakeResponse(404, {"detail": "not found"}),
            FakeResponse(200, {"dag_run_id": "r1", "state": "queued"}),
        ],
        monkeypatch,
    )
    assert client.trigger("dag", WHEN, run_id="r1")["state"] == "queued"
    assert [method for method, _ in client._session.calls] == ["POST", "GET", "POST"]


def test_a_refused_trigger_is_not_tried_again(monkeypatch):
    client = client_answering([FakeResponse(400, {"detail": "bad conf"})], monkeypatch)
    with pytest.raises(AirflowApiError, match="HTTP 400"):
        client.trigger("dag", WHEN, run_id="r1")
