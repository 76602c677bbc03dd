"""Capture one run of the pipeline into a scenario file that replays it.

``read_evidence`` reads what the run left (Airflow, the cluster, the registry); ``scenario_from``
maps it to a scenario (``harness.capture.mapping``); ``write_scenario`` writes it as YAML with
what was inferred and what could not be mapped in a comment at the top, after checking that it
loads as any scenario does. ``python -m harness capture`` (``harness.capture.command``) is the
shell around the three.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.capture.evidence import RunNotFinished, Sources, read_evidence
from harness.capture.mapping import Capture, scenario_from
from harness.capture.records import scrub
from harness.scenarios.model import (
    Expectations,
    ScenarioError,
    parse_scenario,
    validation_problems,
)

__all__ = [
    "Capture",
    "ExpectError",
    "RunNotFinished",
    "Sources",
    "apply_expectations",
    "check_expectations",
    "evidence_summary",
    "read_evidence",
    "render",
    "scenario_from",
    "scrub",
    "write_scenario",
]


class ExpectError(ValueError):
    """An ``--expect FIELD=VALUE`` names no expectation, or its value is not valid there."""


def _parsed(override: str) -> tuple[str, str, str, Any]:
    """``FIELD.REST=VALUE`` as (path, field, rest, value); the value is YAML."""
    path, sep, text = override.partition("=")
    if not sep or not path:
        raise ExpectError(f"--expect {override!r}: write FIELD=VALUE, e.g. branch=skip_deployment")
    field, _, rest = path.partition(".")
    if field not in Expectations.model_fields:
        raise ExpectError(
            f"--expect {override!r}: {field!r} is no expectation; they are "
            f"{', '.join(Expectations.model_fields)}"
        )
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError as error:
        raise ExpectError(f"--expect {override!r}: the value is not YAML: {error}") from None
    return path, field, rest, value


def check_expectations(overrides: list[str]) -> None:
    """Refuses, before anything is read, an ``--expect`` that names no expectation."""
    for override in overrides:
        _parsed(override)


def apply_expectations(capture: Capture, overrides: list[str]) -> None:
    """Sets what the run should have done: each ``FIELD=VALUE`` (a YAML value) replaces what it
    ended with, e.g. ``branch=skip_deployment``, ``champion.after=seeded``,
    ``tasks.deploy_model=skipped``, ``notification.trials.succeeded=0``; a mapped field's key
    may hold dots (``tasks.data_preparation.validate_data=failed``)."""
    expect = capture.scenario["expect"]
    for override in overrides:
        path, field, rest, value = _parsed(override)
        if not rest:
            expect[field] = value
        else:
            nested = expect.setdefault(field, {})
            model = Expectations.model_fields[field].annotation
            sub, _, key = rest.partition(".")
            fields = getattr(model, "model_fields", {})
            if not isinstance(nested, dict) or (
                key and sub in fields and not isinstance(nested.get(sub, {}), dict)
            ):
                raise ExpectError(f"--expect {override!r}: {field} has no parts to set")
            if key and sub in fields:
                nested.setdefault(sub, {})[key] = value
            else:
                nested[rest] = value
        capture.notes.append(f"expectation {path} set to {value!r} (--expect)")
    try:
        Expectations.model_validate(expect)
    except ValidationError as error:
        raise ExpectError(
            "--expect: the expectations are not valid:\n"
            + validation_problems(error, prefix="expect.")
        ) from None


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
