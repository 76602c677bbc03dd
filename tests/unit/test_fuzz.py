"""Fuzzing: whatever a scenario file or the command line holds, the answer is a valid result or
an error that names the file (or the argument) and says what is wrong, never a crash."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import build_parser
from harness.scenarios.model import SCENARIOS_DIR, Scenario, ScenarioError, parse_scenario

SOURCE = "fuzzed.yaml"
FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
VALID = {
    path.stem: yaml.safe_load(path.read_text()) for path in sorted(SCENARIOS_DIR.glob("*.yaml"))
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _parsed_or_named_error(text: str) -> None:
    try:
        assert isinstance(parse_scenario(text, SOURCE), Scenario)
    except ScenarioError as error:
        assert str(error).startswith(f"{SOURCE}:"), error
        assert len(str(error).splitlines()[0]) > len(SOURCE) + 2


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_is_a_scenario_or_a_scenario_error(text):
    _parsed_or_named_error(text)


@FUZZ
@given(st.dictionaries(st.text(max_size=16), values, max_size=8))
def test_arbitrary_yaml_mappings_are_a_scenario_or_a_scenario_error(document):
    _parsed_or_named_error(yaml.safe_dump(document))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*prefix, index))


def _mutate(document, path, action, value):
    if not path:
        return value if action == "replace" else document
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = value
    elif isinstance(parent, dict):
        parent[f"{last}_unknown"] = value
    return document


@st.composite
def mutated_scenarios(draw):
    import copy

    name = draw(st.sampled_from(sorted(VALID)))
    document = copy.deepcopy(VALID[name])
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(document)) if isinstance(document, dict | list) else [()]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        document = _mutate(document, path, action, draw(values))
    return document


@FUZZ
@given(mutated_scenarios())
def test_mutated_valid_scenarios_are_a_scenario_or_a_scenario_error(document):
    _parsed_or_named_error(yaml.safe_dump(document, sort_keys=False))


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_valid_scenario_survives_a_yaml_round_trip(name):
    assert isinstance(parse_scenario(yaml.safe_dump(VALID[name]), SOURCE), Scenario)


words = st.sampled_from(
    ["up", "down", "status", "logs", "replay", "cluster", "--name", "--provider", "--keep",
     "--gpu-capacity", "--kubeconfig", "--lines", "kind", "local-up", "ml-testbed", "-1", "4",
     "/", "..", "", "late_data", "--help-me"]
)  # fmt: skip


@FUZZ
@given(st.lists(st.one_of(words, st.text(max_size=12)), max_size=6))
def test_any_command_line_parses_or_exits_2_naming_the_problem(argv):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            assert isinstance(build_parser().parse_args(argv), argparse.Namespace)
    except SystemExit as exit_:
        if exit_.code == 0:  # --help
            return
        assert exit_.code == 2
        assert "error: " in stderr.getvalue()
