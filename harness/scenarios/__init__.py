"""Scenarios: a day in production replayed through a real DAG run, and what must come of it.

``load_scenarios`` validates scenario files (every problem at once, before anything starts);
``replay`` runs one on a running stack (``harness.stack``) and returns a ``ScenarioResult``;
``replay_all`` is the main job behind ``python -m harness replay``.
"""

from __future__ import annotations

from harness.scenarios.model import Scenario, ScenarioError, load_scenario, load_scenarios
from harness.scenarios.result import ScenarioResult
from harness.scenarios.runner import REPORTS_DIR, ScenarioSkipped, replay

__all__ = [
    "REPORTS_DIR",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "ScenarioSkipped",
    "load_scenario",
    "load_scenarios",
    "replay",
]
