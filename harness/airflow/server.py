"""Airflow's components as host processes of one stack, and their health."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from harness import processes
from harness.airflow.environment import PASSWORDS_FILE, USER
from harness.steps import run, step

COMPONENTS = {
    "airflow-api-server": ["api-server"],
    # Log serving would listen on every interface; the api-server reads the local files instead.
    "airflow-scheduler": ["scheduler", "--skip-serve-logs"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer", "--skip-serve-logs"],
}


@dataclass(frozen=True)
class AirflowServer:
    """A running Airflow: where its API is and how to log in."""

    home: Path
    api_url: str
    user: str
    password: str


def airflow_bin() -> str:
    """The airflow command of this Python environment."""
    return str(Path(sys.executable).parent / "airflow")


def _password(home: Path) -> str:
    return json.loads((home / PASSWORDS_FILE).read_text())[USER]


def healthy(api_url: str) -> bool:
    """Whether the metadatabase, scheduler, dag-processor and triggerer all report healthy."""
    try:
        health = requests.get(f"{api_url}/api/v2/monitor/health", timeout=3).json()
    except (requests.RequestException, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all((health.get(part) or {}).get("status") == "healthy" for part in parts)


def start(state: Path, env: dict[str, str], timeout: float = 120) -> AirflowServer:
    """Migrates the database and starts every component that is not running."""
    home = Path(env["AIRFLOW_HOME"])
    api_url = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"
    _restart_if_changed(state, home, env)
    if not all(processes.running_pid(state, name) for name in COMPONENTS):
        with step("Airflow database migration"):
            run(
                [airflow_bin(), "db", "migrate"],
                env=env,
                log=processes.log_path(state, "airflow-db"),
            )
    with step("Airflow api-server, scheduler, dag-processor, triggerer"):
        for name, arguments in COMPONENTS.items():
            if processes.running_pid(state, name) is None:
                processes.start(name, [airflow_bin(), *arguments], state=state, env=env)
        processes.wait_until(
            lambda: healthy(api_url), state=state, name=list(COMPONENTS), timeout=timeout
        )
    return AirflowServer(home=home, api_url=api_url, user=USER, password=_password(home))


def _restart_if_changed(state: Path, home: Path, env: dict[str, str]) -> None:
    """Stops running components whose environment is not ``env`` (so that start restarts them).

    Airflow reads connections and the pipeline settings (the trainer image's tag among them)
    from its environment once, at start: a rebuilt trainer image would otherwise be a tag the
    running Airflow never heard of.
    """
    fingerprint = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()
    recorded = home / ".environment-sha256"
    running = running_components(state)
    if running and recorded.exists() and recorded.read_text() != fingerprint:
        with step("Airflow restart: its settings changed (e.g. a rebuilt trainer image)"):
            stop(state)
    home.mkdir(parents=True, exist_ok=True)
    recorded.write_text(fingerprint)


def running_components(state: Path) -> list[str]:
    """The stack's Airflow components that run now."""
    return [name for name in COMPONENTS if processes.running_pid(state, name)]


def stop(state: Path) -> None:
    """Stops every Airflow component of the stack (and the task processes they started)."""
    for name in reversed(list(COMPONENTS)):
        processes.stop(state, name, timeout=20)
