"""Each scenario file replayed through a real DAG run on the real stack; its id is its name.

``pytest tests/scenarios -k late_data`` replays one. Every scenario file is validated when the
tests are collected, so an invalid one stops the session before the stack is touched.
"""

from __future__ import annotations

import pytest

from harness.scenarios import Scenario, ScenarioSkipped, load_scenarios, replay
from harness.stack import RunningStack

SCENARIOS = load_scenarios()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario, running_stack: RunningStack) -> None:
    try:
        result = replay(running_stack, scenario)
    except ScenarioSkipped as reason:
        pytest.skip(str(reason))
    assert result.passed, result.failure_message()
