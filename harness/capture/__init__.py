"""Capture one run of the pipeline into a scenario file that replays it.

``read_evidence`` reads what the run left (Airflow, the cluster, the registry); ``scenario_from``
maps it to a scenario (``harness.capture.mapping``); ``write_scenario`` writes it as YAML with
what was inferred and what could not be mapped in a comment at the top, after checking that it
loads as any scenario does. ``python -m harness capture`` is the shell around the three.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

from harness.capture.evidence import Sources, read_evidence, scrub
from harness.capture.mapping import Capture, scenario_from
from harness.scenarios.model import (
    Expectations,
    ScenarioError,
    parse_scenario,
)

__all__ = [
    "Capture",
    "ExpectError",
    "Sources",
    "apply_expectations",
    "read_evidence",
    "render",
    "scenario_from",
    "scrub",
    "write_scenario",
]


class ExpectError(ValueError):
    """An ``--expect FIELD=VALUE`` names no expectation, or its value is not valid there."""


def apply_expectations(capture: Capture, overrides: list[str]) -> None:
    """Sets what the run should have done: each ``FIELD=VALUE`` (a YAML value) replaces what it
    ended with, e.g. ``branch=skip_deployment``, ``champion.after=seeded``,
    ``tasks.deploy_model=skipped``, ``notification.outcome=skipped``."""
    expect = capture.scenario["expect"]
    for override in overrides:
        path, sep, text = override.partition("=")
        if not sep or not path:
            raise ExpectError(
                f"--expect {override!r}: write FIELD=VALUE, e.g. branch=skip_deployment"
            )
        value = yaml.safe_load(text) if text else None
        field, _, rest = path.partition(".")
        if field not in Expectations.model_fields:
            raise ExpectError(
                f"--expect {override!r}: {field!r} is no expectation; they are "
                f"{', '.join(Expectations.model_fields)}"
            )
        if not rest:
            expect[field] = value
        else:
            nested = expect.setdefault(field, {})
            sub_model = Expectations.model_fields[field].annotation
            sub, _, key = rest.partition(".")
            is_model = isinstance(sub_model, type) and hasattr(sub_model, "model_fields")
            if is_model and key and sub in sub_model.model_fields:
                nested.setdefault(sub, {})[key] = value
            else:
                nested[rest] = value
        capture.notes.append(f"expectation {path} set to {value!r} (--expect)")
    try:
        Expectations.model_validate(expect)
    except ValueError as error:
        raise ExpectError(f"--expect: the expectations are not valid: {error}") from None


def render(capture: Capture, source: str) -> str:
    """The scenario file's text: a comment on how it was made, then the scenario."""
    lines = [f"Captured by `python -m harness capture` from {source}."]
    lines += [
        "Expectations are what the run ended with; edit them (or capture with --expect) to what "
        "it should have done, and the scenario fails until the bug is fixed.",
        "",
        "How it was inferred:",
    ]
    lines += [f"- {note}" for note in capture.notes]
    if capture.unmapped:
        lines += ["", "NOT MAPPED (evidence no rule of the capture explains; check these):"]
        lines += [f"- {item}" for item in capture.unmapped]
    comment = []
    for line in lines:
        wrapped = textwrap.wrap(line, 96, subsequent_indent="  " if line[:1] == "-" else "")
        comment += [f"# {part}".rstrip() for part in wrapped or [""]]
    body = yaml.safe_dump(scrub(capture.scenario), sort_keys=False, width=100)
    return "\n".join(comment) + "\n" + body


def write_scenario(capture: Capture, source: str, path: Path, overwrite: bool = False) -> str:
    """Writes the scenario to ``path`` once it loads as a scenario; returns its text."""
    text = render(capture, source)
    try:
        parse_scenario(text, str(path))
    except ScenarioError as error:
        raise ScenarioError(
            f"the captured scenario is not valid, so {path} was not written: {error}"
        ) from None
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: choose another --out, or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def evidence_summary(evidence: dict[str, Any]) -> str:
    """One line: what was read."""
    pods = evidence.get("pods")
    return (
        f"run {evidence['run_id']} ({evidence['dag_run'].get('state')}): "
        f"{len(evidence['task_instances'])} task instances, "
        f"{sum(len(t) for t in evidence['tries'].values())} tries, "
        f"{'no' if pods is None else len(pods)} pods, "
        f"{'no' if evidence.get('events') is None else len(evidence['events'])} events, "
        f"registry {'not read' if evidence.get('registry') is None else 'read'}"
    )
