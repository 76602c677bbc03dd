"""No secret value in logs, reports or forensic bundles.

The secrets: the pods' S3 secret key (a Kubernetes Secret), the Airflow login password, the
Airflow stack's own keys (fernet, JWT, api secret) and the token of Airflow's restricted
Kubernetes ServiceAccount. A scenario replayed with a wrong expectation makes the harness write
everything it writes on a failure (report, outcome, forensic bundle with task logs, pod
descriptions and events, Airflow log tails); every byte of that and of the stack's logs is
searched.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.scenarios import load_scenario, replay
from harness.scenarios.model import SCENARIOS_DIR
from harness.services import config as services_config
from harness.stack import RunningStack


def _secrets(running: RunningStack) -> dict[str, str]:
    home = running.airflow.home
    kubeconfig = yaml.safe_load(running.cluster.airflow.kubeconfig.read_text())
    found = {
        "S3 secret key": services_config.SECRET_ACCESS_KEY,
        "Airflow password": running.airflow.password,
        "ServiceAccount token": kubeconfig["users"][0]["user"]["token"],
    }
    for key_file in home.glob(".*"):
        found[f"Airflow {key_file.name}"] = key_file.read_text().strip()
    assert all(len(value) >= 12 for value in found.values()), "a secret too short to look for"
    return found


def _files(*roots: Path) -> list[Path]:
    return [path for root in roots if root.exists() for path in root.rglob("*") if path.is_file()]


def test_no_secret_in_logs_reports_or_forensic_bundles(running_stack, tmp_path) -> None:
    scenario = load_scenario(SCENARIOS_DIR / "happy_path.yaml")
    wrong = scenario.model_copy(
        update={"expect": scenario.expect.model_copy(update={"branch": "skip_deployment"})}
    )
    result = replay(running_stack, wrong, reports_dir=tmp_path)
    assert not result.passed and result.bundle is not None and any(result.bundle.iterdir())

    state = running_stack.airflow.home.parent
    files = _files(tmp_path, state / "logs", running_stack.airflow.home / "logs")
    assert len(files) > 10, files
    secrets = _secrets(running_stack)
    leaks = [
        f"{name} in {path}"
        for path in files
        for name, value in secrets.items()
        if value.encode() in path.read_bytes()
    ]
    assert leaks == []
