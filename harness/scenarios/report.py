"""The replay's report: a table for the terminal and an HTML page with a timeline per scenario.

The timeline draws every task instance and every pod of a run as a bar on one time axis (pods
also show their node and GPU request, and the time they waited Pending), so a person sees at a
glance where a run waited and what ran at once.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.scenarios.outcome import task_key
from harness.scenarios.result import ScenarioResult
from ml_pipeline.task_ids import PIPELINE_TASK_IDS

# (colour, what it means) of every bar, as the legend shows them.
_LEGEND = {
    "success": ("#3c9d4e", "task succeeded"),
    "failed": ("#d9534f", "task failed"),
    "upstream_failed": ("#f0ad4e", "upstream failed"),
    "skipped": ("#c8c8c8", "skipped"),
    "running": ("#7fb3e6", "task still running"),
    "pending": ("#e8d36b", "pod waiting to be placed and started"),
    "Succeeded": ("#2f7a3d", "pod succeeded"),
    "Failed": ("#a33a37", "pod failed"),
    "Running": ("#5b8dd9", "pod running or stopped"),
}
_OTHER_COLOUR = "#888888"
_WIDTH, _LABEL_WIDTH, _NOTE_WIDTH = 1400, 300, 520
_ROW_HEIGHT = 18
# Tick steps (seconds) the axis chooses from: the smallest giving at most 10 ticks.
_TICK_STEPS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


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


@dataclass
class _Bar:
    start: datetime
    end: datetime
    state: str
    tip: str


@dataclass
class _Row:
    """One line of the timeline: a task instance, or one try's pod of it."""

    label: str
    key: str
    order: tuple[int, int, int]
    bars: list[_Bar] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _order(task_id: str, map_index: int | None, try_number: int) -> tuple[int, int, int]:
    # Pipeline order, then map index; a task's own row (try 0) before its pods' tries.
    position = PIPELINE_TASK_IDS.index(task_id) if task_id in PIPELINE_TASK_IDS else 99
    return position, -1 if map_index is None else map_index, try_number


def _rows(result: ScenarioResult) -> list[_Row]:
    """The timeline's rows in the pipeline's order, each pod try under its task."""
    outcome = result.outcome
    if outcome is None:
        return []
    rows: dict[str, _Row] = {}
    for ti in outcome.task_instances:
        start = _time(ti.get("start_date"))
        if start is None:
            continue
        key = task_key(ti)
        state = ti.get("state") or "running"
        row = _Row(key, key, _order(ti["task_id"], ti.get("map_index"), 0))
        end = _time(ti.get("end_date")) or start
        row.bars.append(_Bar(start, end, state, f"{state}, try {ti.get('try_number')}"))
        rows[key] = row
    for pod in outcome.pods:
        key = task_key({"task_id": pod.task_id, "map_index": pod.map_index})
        label = f"  {key.rsplit('.', 1)[-1]} try {pod.try_number} pod"
        row = rows.setdefault(
            label, _Row(label, key, _order(pod.task_id, pod.map_index, max(pod.try_number, 1)))
        )
        created, started = pod.created, pod.started
        if created and started and started > created:
            row.bars.append(_Bar(created, started, "pending", f"waiting ({pod.name})"))
        if started:
            tip = f"{pod.phase} on {pod.node}, {pod.gpus} GPU, exit {pod.exit_code}"
            tip += f" {pod.reason}" if pod.reason else ""
            state = pod.phase if pod.phase in ("Succeeded", "Failed") else "Running"
            row.bars.append(_Bar(started, pod.finished or started, state, f"{tip} ({pod.name})"))
    ordered = sorted((row for row in rows.values() if row.bars), key=lambda row: row.order)
    # The timeline is the first step's run: only that step's mismatches belong beside its rows.
    _attach(result.steps[0].mismatches if result.steps else result.mismatches, ordered)
    return ordered


def _attach(mismatches: list[str], rows: list[_Row]) -> None:
    """Each mismatch that names a task goes beside that task's row (the most specific key)."""
    tasks = {row.key: row for row in rows if not row.label.startswith(" ")}
    for mismatch in mismatches:
        named = [
            key for key in tasks if re.search(rf"(?<![\w.\[]){re.escape(key)}(?![\w\[])", mismatch)
        ]
        if named:
            tasks[max(named, key=len)].notes.append(mismatch)


def _tick_step(span: float) -> int:
    return next((step for step in _TICK_STEPS if span / step <= 10), _TICK_STEPS[-1])


def legend_html() -> str:
    """What each bar colour means."""
    items = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{colour}"></span>'
        f"{html.escape(meaning)}</span>"
        for colour, meaning in _LEGEND.values()
    )
    return f'<div class="legend">{items}</div>'


def timeline_svg(result: ScenarioResult) -> str:
    """An SVG with one row per task instance and per pod try on a shared time axis, ticks on
    the axis and each mismatch beside the row of the task it concerns."""
    rows = _rows(result)
    if not rows:
        return "<p>No task or pod started.</p>"
    bars = [bar for row in rows for bar in row.bars]
    origin = min(bar.start for bar in bars)
    span = max((bar.end - origin).total_seconds() for bar in bars) or 1.0
    plot = _WIDTH - _LABEL_WIDTH - _NOTE_WIDTH - 10
    scale = plot / span
    height = _ROW_HEIGHT * len(rows)
    parts = [
        f'<svg class="timeline" width="{_WIDTH}" height="{height + 30}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="monospace" font-size="11">'
    ]
    step = _tick_step(span)
    for second in range(0, int(span) + 1, step):
        x = _LABEL_WIDTH + second * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="#e3e3e3"/>'
            f'<text class="tick" x="{x:.1f}" y="{height + 14}" text-anchor="middle">'
            f"{second} s</text>"
        )
    for index, row in enumerate(rows):
        y = index * _ROW_HEIGHT
        if row.notes:
            parts.append(
                f'<rect x="0" y="{y}" width="{_WIDTH}" height="{_ROW_HEIGHT}" fill="#fdecea"/>'
            )
        # A pod's row is indented under its task's.
        indent = 14 if row.label.startswith(" ") else 0
        parts.append(
            f'<text class="row-label" x="{indent}" y="{y + 13}">'
            f"{html.escape(row.label.strip()[:44])}</text>"
        )
        for bar in row.bars:
            x = _LABEL_WIDTH + (bar.start - origin).total_seconds() * scale
            width = max((bar.end - bar.start).total_seconds() * scale, 2)
            colour = _LEGEND.get(bar.state, (_OTHER_COLOUR, ""))[0]
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y + 3}" width="{width:.1f}" '
                f'height="{_ROW_HEIGHT - 5}" fill="{colour}"><title>{html.escape(row.key)}: '
                f"{html.escape(bar.tip)}, {(bar.end - bar.start).total_seconds():.1f} s"
                "</title></rect>"
            )
        if row.notes:
            note = "; ".join(row.notes)
            # Beside its row the task is known: its group's name would only crowd the note.
            short = note.replace(row.key, row.key.rsplit(".", 1)[-1])
            shown = short if len(short) <= 78 else f"{short[:77]}\u2026"
            parts.append(
                f'<text class="mismatch" x="{_WIDTH - _NOTE_WIDTH}" y="{y + 13}" fill="#a33a37">'
                f"&#9888; {html.escape(shown)}<title>{html.escape(note)}</title></text>"
            )
    parts.append(
        f'<text x="{_LABEL_WIDTH + plot:.1f}" y="{height + 28}" text-anchor="end">'
        f"seconds since the first task started (end: {span:.0f} s)</text></svg>"
    )
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
        f"{legend_html()}{timeline_svg(result)}"
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
        "section{margin-top:2em}.legend{margin:0.5em 0;font-size:12px}"
        ".legend-item{margin-right:1.2em;white-space:nowrap}"
        ".swatch{display:inline-block;width:12px;height:12px;margin-right:4px;"
        "vertical-align:middle}</style></head><body><h1>Scenario replay</h1>"
        "<table><tr><th>scenario</th><th>expected</th><th>actual</th><th>duration</th>"
        f"<th>result</th></tr>{rows}</table>"
        + "".join(_section(r) for r in results)
        + "</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
