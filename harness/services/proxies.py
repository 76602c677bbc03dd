"""The stack's fault proxies: S3 and MLflow as pods and Airflow reach them (see fault_proxy).

Each is a host process of the stack on the pods' host address, started after the services and
restarted when a service's address changed; the harness itself talks to the services directly.
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import processes
from harness.airflow.environment import free_port
from harness.services import Services

SERVICES = ("s3", "mlflow")


@dataclass(frozen=True)
class FaultProxies:
    """Where pods and Airflow reach S3 and MLflow, and where each proxy reads its rules."""

    s3_endpoint: str
    mlflow_uri: str
    state: Path

    def rules_dir(self, service: str) -> Path:
        """The rules folder of ``service``'s proxy (s3 or mlflow)."""
        return rules_dir(self.state, service)


def rules_dir(state: Path, service: str) -> Path:
    """Where the proxy of ``service`` reads its fault rules."""
    return state / "faults" / service


def _process(service: str) -> str:
    return f"fault-proxy-{service}"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _ensure(state: Path, service: str, upstream: str, host: str) -> str:
    """The proxy of ``service`` in front of ``upstream`` (reused when it already is); its URL."""
    record = state / "faults" / f"{service}.json"
    wanted = {"upstream": upstream, "host": host}
    running = processes.running_pid(state, _process(service))
    if running and record.exists():
        known = json.loads(record.read_text())
        if {k: known.get(k) for k in wanted} == wanted:
            return f"http://{host}:{known['port']}"
    processes.stop(state, _process(service))
    port = free_port(host)
    processes.start(
        _process(service),
        [
            *(sys.executable, "-m", "harness.services.fault_proxy", "--service", service),
            *("--listen", f"{host}:{port}", "--upstream", upstream),
            *("--rules", str(rules_dir(state, service))),
        ],
        state=state,
    )
    processes.wait_until(
        lambda: _answers(host, port), state=state, name=[_process(service)], timeout=30
    )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({**wanted, "port": port}))
    return f"http://{host}:{port}"


def up(state: Path, services: Services) -> FaultProxies:
    """Both proxies, in front of ``services``."""
    host = services.host_address
    return FaultProxies(
        s3_endpoint=_ensure(state, "s3", services.s3_endpoint, host),
        mlflow_uri=_ensure(state, "mlflow", services.mlflow_uri, host),
        state=state,
    )


def down(state: Path) -> None:
    """Stops both proxies."""
    for service in SERVICES:
        processes.stop(state, _process(service))
