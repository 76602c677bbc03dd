"""Declared dependencies match the code: every import is declared, nothing declared is unused."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest

from harness.lock import canonical, read_lock
from harness.pipeline_settings import REPO_ROOT

LOCAL = {"trainer", "harness", "ml_pipeline", "ml_training_pipeline", "fixtures", "tests"}
# Which extra each folder's imports must be declared in.
EXTRAS = {"dags": "airflow", "trainer": "trainer", "harness": "harness"}
# Declared and needed, though never imported by name: what runs them is a command or a plugin.
RUN_NOT_IMPORTED = {
    "apache-airflow",  # the distribution of the scheduler's commands; code imports its parts
    "moto",  # `moto_server`, a subprocess
    "pyarrow",  # pandas' parquet engine
    "pyyaml",  # imported as yaml
    "pytest-xdist",  # pytest -n
}


def _extras() -> dict[str, set[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for extra, requirements in project["optional-dependencies"].items():
        names = set()
        for requirement in requirements:
            name = requirement.split(";")[0].split("[")[0]
            for mark in "<>=!~ ":
                name = name.split(mark)[0]
            names.add(canonical(name))
        declared[extra] = names
    return declared


def _imports(folder: str) -> dict[str, tuple[set[str], str]]:
    """Each third-party module imported in ``folder``: the distributions providing it (several
    for a namespace such as ``airflow``) and the first file importing it."""
    owners = packages_distributions()
    found: dict[str, tuple[set[str], str]] = {}
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for top in {module.split(".")[0] for module in modules}:
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    providers = {canonical(name) for name in owners.get(top, [top])}
                    found.setdefault(top, (providers, str(path.relative_to(REPO_ROOT))))
    return found


@pytest.mark.parametrize("folder", sorted(EXTRAS))
def test_every_import_is_declared_in_its_extra(folder):
    declared = _extras()[EXTRAS[folder]]
    undeclared = {
        module: where
        for module, (providers, where) in _imports(folder).items()
        if not providers & declared
    }
    assert not undeclared, f"imported but not declared in [{EXTRAS[folder]}]: {undeclared}"


def test_nothing_declared_is_unused():
    imported = set()
    for folder in (*EXTRAS, "tests"):
        for providers, _ in _imports(folder).values():
            imported |= providers
    declared = set().union(*_extras().values()) - {"airflow-ml-testbed"}
    unused = sorted(declared - imported - RUN_NOT_IMPORTED)
    assert not unused, f"declared but imported nowhere: {unused}"


def test_the_lock_pins_every_declared_dependency():
    pins = read_lock()
    declared = set().union(*_extras().values()) - {"airflow-ml-testbed", "torch"}
    assert not sorted(declared - set(pins)), "regenerate it: python -m harness.lock"


def test_this_environment_was_installed_from_the_lock():
    from importlib.metadata import distributions

    pins = read_lock()
    installed = {canonical(d.metadata["Name"]): d.version for d in distributions()}
    drifted = {
        name: f"{installed[name]} installed, {pin} locked"
        for name, pin in pins.items()
        if name in installed and installed[name] != pin
    }
    assert not drifted, (
        "this environment differs from constraints/lock.txt (install with "
        f"`-c constraints/lock.txt`, as tox does): {drifted}"
    )
