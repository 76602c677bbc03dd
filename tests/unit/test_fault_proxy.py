"""The fault proxy: passes everything through, fails only what a rule matches, for its window."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from harness.services import fault_proxy
from harness.services.fault_proxy import FaultRule, remove_rule, write_rule


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload = f"{self.command} {self.path} {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Upstream", "echo")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def proxy(tmp_path):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    handler = fault_proxy._handler("s3", _serve(upstream), fault_proxy._Rules(tmp_path))
    handler.log_message = lambda *args: None
    front = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    yield _serve(front), tmp_path
    front.shutdown()
    upstream.shutdown()


def test_requests_pass_through_with_bodies_and_headers(proxy):
    url, _ = proxy
    answer = requests.put(f"{url}/bucket/key?x=1", data=b"12345", timeout=5)
    assert answer.status_code == 200 and answer.text == "PUT /bucket/key?x=1 5"
    assert answer.headers["X-Upstream"] == "echo"
    chunked = requests.post(f"{url}/upload", data=iter([b"abc", b"defg"]), timeout=5)
    assert chunked.text == "POST /upload 7"
    assert requests.head(f"{url}/bucket/key", timeout=5).headers["Content-Length"] == "18"


def test_only_matching_requests_fail_and_only_for_the_window(proxy):
    url, rules = proxy
    write_rule(rules, "run-a", FaultRule("scenarios/a-1", "unavailable", seconds=1.0))
    failed = requests.get(f"{url}/ml-datasets/scenarios/a-1/daily/f.parquet", timeout=5)
    assert failed.status_code == 503 and b"ServiceUnavailable" in failed.content
    assert requests.get(f"{url}/ml-datasets/scenarios/b-2/f.parquet", timeout=5).ok
    # The body counts too (MLflow names models in JSON bodies).
    assert requests.post(f"{url}/api", json={"name": "scenarios/a-1"}, timeout=5).status_code == 503
    time.sleep(1.2)
    assert requests.get(f"{url}/ml-datasets/scenarios/a-1/daily/f.parquet", timeout=5).ok


def test_reset_drops_the_connection_until_the_rule_is_removed(proxy):
    url, rules = proxy
    write_rule(rules, "run-b", FaultRule("model-b", "reset", seconds=None))
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/api/2.0/mlflow/registered-models/get?name=model-b", timeout=5)
    remove_rule(rules, "run-b")
    assert requests.get(f"{url}/api/2.0/mlflow/registered-models/get?name=model-b", timeout=5).ok


def test_a_counted_window_fails_that_many_requests_then_passes_them(proxy):
    url, rules = proxy
    write_rule(rules, "run-c", FaultRule("scenarios/c-3", "unavailable", None, requests=3))
    data = f"{url}/ml-datasets/scenarios/c-3/daily/f.parquet"
    codes = [requests.get(data, timeout=5).status_code for _ in range(5)]
    assert codes == [503, 503, 503, 200, 200]


def test_a_rule_armed_early_begins_with_the_first_request_of_its_task(proxy):
    url, rules = proxy
    rule = FaultRule("scenarios/d-4", "unavailable", None, 2, begins_with="app/validate")
    write_rule(rules, "run-d", rule)
    data = f"{url}/ml-datasets/scenarios/d-4/daily/f.parquet"

    def get(agent: str) -> int:
        return requests.get(data, headers={"User-Agent": agent}, timeout=5).status_code

    # The sensor's requests (another task) pass while the rule waits for its task.
    assert get("Boto3/1.43 md/Botocore#1.43 app/sensor") == 200
    assert get("Boto3/1.43 md/Botocore#1.43 app/validate") == 503
    # Once begun, the window holds for every request of the scope, whichever task sends it.
    assert [get("Boto3/1.43 app/other"), get("Boto3/1.43 app/other")] == [503, 200]


def test_botocore_names_the_task_from_the_pods_environment(monkeypatch):
    """What the pipeline's pods set (AWS_SDK_UA_APP_ID, see ml_pipeline.pods) reaches the
    User-Agent that the proxy reads."""
    import boto3
    from botocore.awsrequest import AWSResponse

    class _Empty:
        def stream(self, **_):
            return iter([b""])

    monkeypatch.setenv("AWS_SDK_UA_APP_ID", "data_preparation.validate_data")
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    agents = []

    def sent(request, **_):
        agent = request.headers["User-Agent"]
        agents.append(agent.decode() if isinstance(agent, bytes) else agent)
        return AWSResponse(request.url, 200, {}, _Empty())

    client.meta.events.register("before-send.s3.HeadBucket", sent)
    client.head_bucket(Bucket="bucket")
    assert "app/data_preparation.validate_data" in agents[0]


def test_an_s3_fault_from_a_pod_task_is_armed_before_the_run_and_mlflow_on_the_poll(tmp_path):
    import json

    from harness.scenarios.disruptions import ServiceOutages
    from harness.scenarios.model import ServiceFault
    from harness.services.proxies import FaultProxies

    proxies = FaultProxies("http://s3", "http://mlflow", tmp_path)
    faults = [
        ServiceFault(service="s3", from_task="data_preparation.validate_data", requests=3),
        ServiceFault(service="mlflow", fault="reset", from_task="select_best_model"),
    ]
    scope = {"s3": "scenarios/x-1/daily", "mlflow": "scenario-x-1"}
    with ServiceOutages(proxies, faults, "run-x", scope) as outages:
        # Before the trigger: no poll has seen any task yet.
        (armed,) = proxies.rules_dir("s3").glob("*.json")
        rule = json.loads(armed.read_text())
        assert rule["begins_with"] == "app/data_preparation.validate_data"
        assert rule["match"] == "scenarios/x-1/daily" and rule["requests"] == 3
        assert not list(proxies.rules_dir("mlflow").glob("*.json"))
        outages.on_progress([{"task_id": "select_best_model", "state": "queued"}])
        (mlflow,) = proxies.rules_dir("mlflow").glob("*.json")
        assert json.loads(mlflow.read_text())["begins_with"] is None
        assert outages.errors == []
    assert not list(tmp_path.rglob("*.json"))  # removed when the run ends
