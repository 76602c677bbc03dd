"""The result of one replayed scenario: what it expected, what happened, where the evidence is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.scenarios.model import Scenario
from harness.scenarios.outcome import Outcome, StepResult


@dataclass
class ScenarioResult:
    """A replayed scenario: what it expected, what happened, and where the evidence is."""

    scenario: Scenario
    run_id: str
    outcome: Outcome | None
    mismatches: list[str]
    seconds: float
    report_dir: Path
    # Every step of the timeline (one for a one-run scenario); ``outcome`` is the first's.
    steps: list[StepResult] = field(default_factory=list)
    bundle: Path | None = None

    @property
    def passed(self) -> bool:
        """Whether everything matched."""
        return not self.mismatches

    def failure_message(self) -> str:
        """Every mismatch, and where the forensic bundle is."""
        lines = "\n".join(f"  - {m}" for m in self.mismatches)
        where = f"\nforensic bundle: {self.bundle}" if self.bundle else ""
        return f"scenario {self.scenario.name} (run {self.run_id}):\n{lines}{where}"
