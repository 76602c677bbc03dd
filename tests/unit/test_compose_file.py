"""docker-compose.test.yml is generated from the services' one source of values."""

from pathlib import Path

import yaml

from harness.services import config
from harness.services.compose import render

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.test.yml"


def test_committed_compose_file_is_the_generated_one():
    assert COMPOSE_FILE.read_text() == render(), (
        "docker-compose.test.yml is stale: run "
        "`python -m harness.services.compose > docker-compose.test.yml`"
    )


def test_compose_publishes_only_on_the_chosen_address_and_uses_the_pipeline_buckets():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("${ML_TESTBED_HOST_ADDRESS:-127.0.0.1}:")
    for bucket in config.BUCKETS:
        assert bucket in services["buckets"]["command"][-1]
