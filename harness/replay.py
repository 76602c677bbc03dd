"""The main job: replay scenarios on the stack, print a table, write an HTML report.

``python -m harness replay [SCENARIO ...]`` validates every selected scenario first (nothing
starts when one is invalid), brings the stack up or reuses it, replays the scenarios one after
another, and exits 1 on any mismatch. A stack it started is taken down afterwards unless
``--keep``; a stack that already ran is left running.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from harness.scenarios import REPORTS_DIR, ScenarioResult, ScenarioSkipped, load_scenarios, replay
from harness.scenarios.report import table, write_html
from harness.stack import Stack, StackConfig, StackInUse
from harness.steps import say


def replay_all(
    selected: list[str], config: StackConfig, keep: bool, reports_dir: Path = REPORTS_DIR
) -> tuple[list[ScenarioResult], Path]:
    """Replays the selected scenarios (all when empty); returns the results and the HTML report."""
    scenarios = load_scenarios(selected)
    say(f"replaying {len(scenarios)} scenario(s): {', '.join(s.name for s in scenarios)}")
    stack = Stack(config, keep=keep)
    # Leased while replaying: another process's `down` leaves the stack to this one.
    stack.hold()
    already_running = stack.is_running()
    results = []
    try:
        running = stack.up()
        for scenario in scenarios:
            say(f"==> scenario {scenario.name}: {scenario.description}")
            try:
                result = replay(running, scenario, reports_dir)
            except ScenarioSkipped as reason:
                say(f"    skipped: {reason}")
                continue
            say(
                f"    {scenario.name}: {'ok' if result.passed else 'MISMATCH'} in "
                f"{result.seconds:.0f} s"
            )
            if not result.passed:
                say(result.failure_message())
            results.append(result)
    finally:
        if not (keep or already_running):
            try:
                stack.down()
            except StackInUse as in_use:
                say(str(in_use))
        elif results:
            say(f"stack {config.name} left running (`python -m harness down` removes it)")
        stack.release()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    report = write_html(results, reports_dir / f"replay-{stamp}.html")
    return results, report


def main_replay(selected: list[str], config: StackConfig, keep: bool) -> int:
    """The CLI's replay: 0 when every scenario matched, 1 otherwise."""
    started = time.monotonic()
    results, report = replay_all(selected, config, keep)
    print(table(results))
    failed = [r for r in results if not r.passed]
    print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed in "
        f"{time.monotonic() - started:.0f} s; report: {report}"
    )
    return 1 if failed else 0
