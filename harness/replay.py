"""The main job: replay scenarios on the stack, print a table, write an HTML report.

``python -m harness replay [SCENARIO ...] [-j N]`` validates every selected scenario first
(nothing starts when one is invalid), brings the stack up or reuses it, replays the scenarios
N at a time (those that change the cluster alone), and exits 1 on any mismatch. A stack it
started is taken down afterwards unless ``--keep``; a stack that already ran is left running.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

from harness.scenarios import (
    REPORTS_DIR,
    Scenario,
    ScenarioResult,
    ScenarioSkipped,
    load_scenarios,
    replay,
)
from harness.scenarios.report import table, write_html
from harness.stack import RunningStack, Stack, StackConfig, StackInUse
from harness.steps import say


def default_jobs() -> int:
    """Replays at once by default: about half the host's cores and one more, at most 4 (each
    replay mostly waits on its pods; one stack's scheduler serves them all)."""
    return max(1, min(4, (os.cpu_count() or 1) // 2 + 1))


Play = Callable[[Scenario, threading.Event], ScenarioResult | None]


def replay_scenarios(scenarios: list[Scenario], play: Play, jobs: int) -> list[ScenarioResult]:
    """``play`` for each scenario, ``jobs`` at a time; a scenario that changes the cluster
    (``changes_the_cluster``) alone, after the others. Results in the scenarios' order (None,
    a skipped one, left out). Ctrl-C sets every replay's cancel event, waits for each to end
    its runs and pods, and is raised again."""
    cancelled = threading.Event()
    # Batches of the scenarios' positions: each batch's replays go at once.
    numbers = range(len(scenarios))
    if jobs <= 1:
        batches = [[n] for n in numbers]
    else:
        alone = [n for n in numbers if scenarios[n].changes_the_cluster]
        batches = [[n for n in numbers if n not in alone]] + [[n] for n in alone]
    done: dict[int, ScenarioResult | None] = {}
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="replay") as pool:
        for batch in batches:
            futures = {n: pool.submit(_unless, cancelled, play, scenarios[n]) for n in batch}
            try:
                for number, future in futures.items():
                    done[number] = future.result()
            except KeyboardInterrupt:
                say("interrupted: stopping every replay (their runs and pods are ended)")
                for future in futures.values():
                    future.cancel()
                cancelled.set()
                wait(futures.values())
                raise
    return [result for _, result in sorted(done.items()) if result is not None]


def _unless(cancelled: threading.Event, play: Play, scenario: Scenario) -> ScenarioResult | None:
    """``play(scenario)``, unless the replays were cancelled before it began."""
    return None if cancelled.is_set() else play(scenario, cancelled)


def _player(running: RunningStack, reports_dir: Path) -> Play:
    def play(scenario: Scenario, cancelled: threading.Event) -> ScenarioResult | None:
        say(f"==> scenario {scenario.name}: {scenario.description}")
        try:
            result = replay(running, scenario, reports_dir, cancelled=cancelled)
        except ScenarioSkipped as reason:
            say(f"    skipped: {reason}")
            return None
        except Exception as error:  # this scenario fails with the reason; the others go on
            result = ScenarioResult(
                scenario, "(none)", None, [f"the replay raised {error!r}"], 0.0, reports_dir
            )
        verdict = "ok" if result.passed else "MISMATCH"
        say(f"    {scenario.name}: {verdict} in {result.seconds:.0f} s")
        if not result.passed:
            say(result.failure_message())
        return result

    return play


def replay_all(
    selected: list[str],
    config: StackConfig,
    keep: bool,
    reports_dir: Path = REPORTS_DIR,
    jobs: int = 1,
) -> tuple[list[ScenarioResult], Path]:
    """Replays the selected scenarios (all when empty), ``jobs`` at a time; returns the
    results and the HTML report."""
    scenarios = load_scenarios(selected)
    say(
        f"replaying {len(scenarios)} scenario(s), {jobs} at a time: "
        f"{', '.join(s.name for s in scenarios)}"
    )
    stack = Stack(config, keep=keep)
    # Leased while replaying: another process's `down` leaves the stack to this one.
    stack.hold()
    already_running = stack.is_running()
    results: list[ScenarioResult] = []
    try:
        running = stack.up()
        results = replay_scenarios(scenarios, _player(running, reports_dir), jobs)
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


def main_replay(selected: list[str], config: StackConfig, keep: bool, jobs: int = 1) -> int:
    """The CLI's replay: 0 when every scenario matched, 1 otherwise."""
    started = time.monotonic()
    results, report = replay_all(selected, config, keep, jobs=jobs)
    print(table(results))
    failed = [r for r in results if not r.passed]
    print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed in "
        f"{time.monotonic() - started:.0f} s; report: {report}"
    )
    return 1 if failed else 0
