"""The HTML report as a person sees it: rendered by headless Chromium (Debian's ``chromium``),
and the layout read back from the browser (what is above what, what overlaps)."""

from __future__ import annotations

import html
import itertools
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.host import apt_install
from harness.pipeline_settings import REPO_ROOT
from harness.scenarios.model import load_scenario
from harness.scenarios.outcome import Outcome
from harness.scenarios.pods import PodRecord
from harness.scenarios.report import write_html
from harness.scenarios.result import ScenarioResult
from tests.requirements import unavailable

TRIAL = "hyperparameter_tuning.train_trial"
ORIGIN = datetime(2026, 11, 2, tzinfo=UTC)
# Measures what the browser laid out and writes it into the page, for --dump-dom to print.
MEASURE = """<script>
const box = e => e.getBoundingClientRect();
const own = t => t.childNodes[0].nodeValue;
const all = s => [...document.querySelectorAll(s)];
const layout = {
  rows: all('svg.timeline text.row-label').map(t => ({text: own(t), top: box(t).top,
                                                      left: box(t).left})),
  ticks: all('svg.timeline text.tick').map(t => ({text: own(t), left: box(t).left,
                                                  right: box(t).right})),
  mismatches: all('svg.timeline text.mismatch').map(t => ({text: own(t), top: box(t).top,
                                                          left: box(t).left})),
  bars: all('svg.timeline rect.bar').map(r => ({top: box(r).top, right: box(r).right})),
  legend: all('.legend-item').map(e => ({text: e.innerText, width: box(e).width})),
};
document.body.insertAdjacentHTML('beforeend',
  '<pre id="layout">' + JSON.stringify(layout).replace(/</g, '\\\\u003c') + '</pre>');
</script>"""


def _at(seconds: float) -> str:
    return (ORIGIN + timedelta(seconds=seconds)).isoformat()


def _pod(try_number: int, start: float, end: float, phase: str) -> PodRecord:
    return PodRecord(
        name=f"train-trial-0-{try_number}-abcd",
        namespace="ml-training",
        task_id=TRIAL,
        map_index=0,
        try_number=try_number,
        gpus=1,
        node="gpu-worker",
        phase=phase,
        exit_code=0 if phase == "Succeeded" else 1,
        created=ORIGIN + timedelta(seconds=start - 2),
        started=ORIGIN + timedelta(seconds=start),
        finished=ORIGIN + timedelta(seconds=end),
    )


def _result() -> ScenarioResult:
    # Task instances in the order the REST API may give them: not the pipeline's.
    tasks = [
        ("send_notification", -1, 70, 72, "success"),
        (TRIAL, 0, 20, 60, "success"),
        ("data_preparation.validate_data", -1, 5, 12, "success"),
        ("wait_for_training_data", -1, 0, 4, "success"),
    ]
    outcome = Outcome(
        run_id="scenario__s3_errors__1",
        run_state="success",
        tasks={},
        task_instances=[
            {"task_id": t, "map_index": i, "state": s, "try_number": 2 if t == TRIAL else 1,
             "start_date": _at(a), "end_date": _at(b)}
            for t, i, a, b, s in tasks
        ],
        pods=[_pod(1, 22, 30, "Failed"), _pod(2, 40, 58, "Succeeded")],
        gpu_nodes=("gpu-worker",), gpu_capacity=4, seeded_champion=None, champion_before=None,
        champion_after="1", candidate_version="1", candidate_tags={}, notification=None,
        sensor_deferred=True, sensor_pokes=1,
    )  # fmt: skip
    mismatch = f"logs of {TRIAL}[0] lack 'ErrImageNeverPull' (17 characters read)"
    scenario = load_scenario(REPO_ROOT / "scenarios" / "s3_errors.yaml")
    return ScenarioResult(scenario, outcome.run_id, outcome, [mismatch], 80.0, Path("r"))


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        apt_install(["chromium"], why="looking at the HTML report as a person would")
    except RuntimeError as error:
        unavailable("stack", f"no headless Chromium can be had here: {error}")
    return shutil.which("chromium") or "chromium"


def _layout(chromium: str, page: Path) -> dict:
    page.write_text(page.read_text().replace("</body>", f"{MEASURE}</body>"))
    rendered = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    # The last match: the script's own text holds the marker too.
    found = re.findall(r'<pre id="layout">(\{.*?)</pre>', rendered, re.S)
    assert found, f"Chromium rendered no layout: {rendered[-2000:]}"
    return json.loads(html.unescape(found[-1]))


def test_the_report_reads_in_the_pipelines_order_with_its_legend_ticks_and_mismatch(
    chromium, tmp_path
):
    layout = _layout(chromium, write_html([_result()], tmp_path / "report.html"))
    rows = [row["text"] for row in sorted(layout["rows"], key=lambda row: row["top"])]
    assert rows == [
        "wait_for_training_data",
        "data_preparation.validate_data",
        f"{TRIAL}[0]",
        "train_trial[0] try 1 pod",
        "train_trial[0] try 2 pod",
        "send_notification",
    ]
    lefts = {row["text"]: row["left"] for row in layout["rows"]}
    assert lefts["train_trial[0] try 1 pod"] > lefts[f"{TRIAL}[0]"]  # indented under its task
    ticks = layout["ticks"]
    assert [tick["text"] for tick in ticks][:3] == ["0 s", "10 s", "20 s"] and len(ticks) >= 5
    assert all(a["right"] < b["left"] for a, b in itertools.pairwise(ticks))
    legend = {item["text"].strip() for item in layout["legend"] if item["width"] > 0}
    assert {"task succeeded", "task failed", "pod failed"} <= legend
    (mismatch,) = layout["mismatches"]
    trial_top = next(row["top"] for row in layout["rows"] if row["text"] == f"{TRIAL}[0]")
    assert abs(mismatch["top"] - trial_top) < 2 and "ErrImageNeverPull" in mismatch["text"]
    assert mismatch["left"] > max(bar["right"] for bar in layout["bars"])
