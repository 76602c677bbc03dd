"""The Airflow REST client: its trigger when Airflow's SQLite database is slow to take a write,
and its login to a production Airflow (a token, TLS signed by a private CA).

The HTTP session is faked (the boundary): a POST that timed out or failed may still have created
the run, so the client looks before it tries again, and never creates a run twice. The login is
tested against a small HTTPS server answering as Airflow's api-server does.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.airflow import client as airflow_client
from harness.airflow.client import AirflowApiError, AirflowClient
from harness.cluster import pki

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


class _Airflow(http.server.BaseHTTPRequestHandler):
    """Airflow 3's token login and one DAG run, as a production api-server answers them."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        if self.path == "/auth/token" and body == {"username": "ops", "password": "pw"}:
            self._answer(201, {"access_token": "from-login"})
        else:
            self._answer(401, {"detail": "Invalid credentials"})

    def do_GET(self) -> None:
        if self.headers.get("Authorization") not in ("Bearer from-login", "Bearer issued"):
            self._answer(401, {"detail": "Not authenticated"})
        else:
            self._answer(200, {"dag_run_id": self.path.rsplit("/", 1)[-1], "state": "failed"})

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tls_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS api-server whose certificate a private CA signed: its URL and the CA."""
    folder = tmp_path_factory.mktemp("tls")
    ca = pki.ensure_ca(folder)
    cert = pki.issue(ca, folder, "airflow", common_name="airflow", ip_addresses=("127.0.0.1",))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Airflow)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", ca.cert
    server.shutdown()
    server.server_close()


def test_a_production_airflow_is_read_over_tls_signed_by_its_ca(tls_airflow):
    url, ca = tls_airflow
    client = AirflowClient(url, "ops", "pw", verify=str(ca))
    assert client.dag_run("dag", "r1")["state"] == "failed"
    with pytest.raises(AirflowApiError, match=r"not trusted.*--ca-cert"):
        AirflowClient(url, "ops", "pw").dag_run("dag", "r1")


def test_a_token_is_used_as_given_and_a_refused_one_says_so(tls_airflow):
    url, ca = tls_airflow
    assert AirflowClient(url, token="issued", verify=str(ca)).dag_run("dag", "r2")["state"]
    with pytest.raises(AirflowApiError, match="refused the token"):
        AirflowClient(url, token="expired", verify=str(ca)).dag_run("dag", "r2")
    with pytest.raises(AirflowApiError, match="login as ops failed"):
        AirflowClient(url, "ops", "wrong", verify=str(ca)).dag_run("dag", "r2")
