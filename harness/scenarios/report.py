"""The replay's report: a table for the terminal and an HTML page with a timeline per scenario.

The timeline draws every task instance and every pod of a run as a bar on one time axis (pods
also show their node and GPU request, and the time they waited Pending), so a person sees at a
glance where a run waited and what ran at once.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.scenarios.result import ScenarioResult

_STATE_COLOURS = {
    "success": "#3c9d4e",
    "failed": "#d9534f",
    "upstream_failed": "#f0ad4e",
    "skipped": "#c8c8c8",
    "Succeeded": "#3c9d4e",
    "Failed": "#d9534f",
    "pending": "#e8d36b",
}
_WIDTH = 900


def expected_summary(result: ScenarioResult) -> str:
    """The scenario's headline expectation: run state, branch, notification outcome (of its
    first step, and how many steps follow)."""
    steps = result.scenario.steps()
    expect = steps[0].expect
    parts = [expect.run_state, expect.branch, expect.notification.outcome]
    more = f" (+{len(steps) - 1} steps)" if len(steps) > 1 else ""
    return ("; ".join(part for part in parts if part) or "(see file)") + more


def actual_summary(result: ScenarioResult) -> str:
    """The same headline for what happened."""
    outcome = result.outcome
    if outcome is None:
        return "no outcome"
    notified = (outcome.notification or {}).get("outcome", "no notification")
    return f"{outcome.run_state}; {outcome.branch}; {notified}"


def table(results: Iterable[ScenarioResult]) -> str:
    """scenario | expected | actual | duration | result, as aligned text."""
    rows = [("scenario", "expected", "actual", "duration", "result")]
    for result in results:
        rows.append(
            (
                result.scenario.name,
                expected_summary(result),
                actual_summary(result),
                f"{result.seconds:.0f} s",
                "ok" if result.passed else f"MISMATCH ({len(result.mismatches)})",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _bars(result: ScenarioResult) -> list[tuple[str, datetime, datetime, str, str]]:
    """(label, start, end, colour, tooltip) for each task instance and pod."""
    outcome = result.outcome
    if outcome is None:
        return []
    bars = []
    for ti in outcome.task_instances:
        start, end = _time(ti.get("start_date")), _time(ti.get("end_date"))
        if start:
            index = ti.get("map_index", -1)
            label = ti["task_id"] + (f"[{index}]" if index is not None and index >= 0 else "")
            state = ti.get("state") or "none"
            bars.append(
                (f"task {label}", start, end or start, _STATE_COLOURS.get(state, "#888"), state)
            )
    for pod in outcome.pods:
        created, started = pod.created, pod.started
        finished = pod.finished or started or created
        if created and started and started > created:
            bars.append((f"pod {pod.name}", created, started, _STATE_COLOURS["pending"], "Pending"))
        if started:
            tip = f"{pod.phase} on {pod.node}, {pod.gpus} GPU, exit {pod.exit_code}"
            tip += f" {pod.reason}" if pod.reason else ""
            colour = _STATE_COLOURS.get(pod.phase, "#5b8dd9")
            bars.append((f"pod {pod.name}", started, finished or started, colour, tip))
    return bars


def timeline_svg(result: ScenarioResult) -> str:
    """An SVG with one row per task instance or pod on a shared time axis."""
    bars = _bars(result)
    if not bars:
        return "<p>No task or pod started.</p>"
    origin = min(start for _, start, _, _, _ in bars)
    span = max((end - origin).total_seconds() for _, _, end, _, _ in bars) or 1.0
    labels = list(dict.fromkeys(label for label, *_ in bars))
    row_height, label_width = 18, 330
    scale = (_WIDTH - label_width - 10) / span
    parts = [
        f'<svg width="{_WIDTH}" height="{row_height * len(labels) + 24}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="monospace" font-size="11">'
    ]
    for row, label in enumerate(labels):
        y = row * row_height
        parts.append(f'<text x="0" y="{y + 13}">{html.escape(label[:48])}</text>')
    for label, start, end, colour, tip in bars:
        y = labels.index(label) * row_height
        x = label_width + (start - origin).total_seconds() * scale
        width = max((end - start).total_seconds() * scale, 2)
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="{row_height - 5}" '
            f'fill="{colour}"><title>{html.escape(label)}: {html.escape(tip)}, '
            f"{(end - start).total_seconds():.1f} s</title></rect>"
        )
    axis_y = row_height * len(labels) + 16
    parts.append(f'<text x="{label_width}" y="{axis_y}">0 s</text>')
    parts.append(f'<text x="{_WIDTH - 60}" y="{axis_y}">{span:.0f} s</text>')
    parts.append("</svg>")
    return "".join(parts)


def _section(result: ScenarioResult) -> str:
    status = "ok" if result.passed else "MISMATCH"
    mismatches = "".join(f"<li>{html.escape(m)}</li>" for m in result.mismatches)
    bundle = (
        f"<p>Forensic bundle: <code>{html.escape(str(result.bundle))}</code></p>"
        if result.bundle
        else ""
    )
    return (
        f'<section id="{result.scenario.name}"><h2>{result.scenario.name}: {status}</h2>'
        f"<p>{html.escape(result.scenario.description)}</p>"
        f"<p>Run <code>{result.run_id}</code>, {result.seconds:.0f} s. Expected: "
        f"{html.escape(expected_summary(result))}. Actual: "
        f"{html.escape(actual_summary(result))}.</p>"
        f"{'<ul>' + mismatches + '</ul>' if mismatches else ''}{bundle}"
        f"{timeline_svg(result)}"
        f'<p><a href="{html.escape(result.run_id)}/outcome.json">outcome.json</a></p></section>'
    )


def write_html(results: list[ScenarioResult], path: Path) -> Path:
    """Writes the HTML report to ``path`` and returns it."""
    rows = "".join(
        f'<tr><td><a href="#{r.scenario.name}">{r.scenario.name}</a></td>'
        f"<td>{html.escape(expected_summary(r))}</td><td>{html.escape(actual_summary(r))}</td>"
        f"<td>{r.seconds:.0f} s</td><td>{'ok' if r.passed else 'MISMATCH'}</td></tr>"
        for r in results
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Scenario replay</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:left}"
        "section{margin-top:2em}</style></head><body><h1>Scenario replay</h1>"
        "<table><tr><th>scenario</th><th>expected</th><th>actual</th><th>duration</th>"
        f"<th>result</th></tr>{rows}</table>"
        + "".join(_section(r) for r in results)
        + "</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
