"""What a person watching a replay sees while a run goes: each task's state changes, with the
time since the replay began; listeners (the service faults) see every poll too."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness.scenarios.outcome import task_key
from ml_pipeline.task_ids import SENSOR_TASK_ID


class Progress:
    """Prints each task's state changes while the run goes, and notes a deferred sensor."""

    def __init__(self, name: str, started: float, show: Callable[[str], None]) -> None:
        self.name, self.started, self.show = name, started, show
        self.states: dict[str, str] = {}
        self.sensor_deferred = False
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []

    def __call__(self, run: dict[str, Any], task_instances: list[dict[str, Any]]) -> None:
        for listener in self.listeners:
            listener(task_instances)
        for ti in task_instances:
            key, state = task_key(ti), ti.get("state") or "none"
            if key == SENSOR_TASK_ID and state == "deferred":
                self.sensor_deferred = True
            if self.states.get(key, "none") != state:
                self.states[key] = state
                self.show(
                    f"    [{self.name} {time.monotonic() - self.started:5.0f} s] {key}: {state}"
                )
