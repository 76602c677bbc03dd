"""``python -m harness capture``: one run of a (production) Airflow into a scenario file.

Credentials come from the command line or the environment (``ML_TESTBED_AIRFLOW_USER`` and
``ML_TESTBED_AIRFLOW_PASSWORD``, or ``ML_TESTBED_AIRFLOW_TOKEN``); none is ever written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.scenarios.model import NAME_PATTERN, SCENARIOS_DIR

USER_ENV = "ML_TESTBED_AIRFLOW_USER"
PASSWORD_ENV = "ML_TESTBED_AIRFLOW_PASSWORD"
TOKEN_ENV = "ML_TESTBED_AIRFLOW_TOKEN"
DEFAULT_DAG_ID = "ml_full_training_pipeline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The capture command's options."""
    parser.add_argument("--airflow", required=True, help="the api-server's URL (https://...)")
    parser.add_argument("--run-id", required=True, help="the DAG run to capture")
    parser.add_argument("--dag-id", default=DEFAULT_DAG_ID, help=f"default {DEFAULT_DAG_ID}")
    parser.add_argument("--user", help=f"Airflow user (default ${USER_ENV})")
    parser.add_argument(
        "--password", help=f"its password (default ${PASSWORD_ENV}; the environment is safer)"
    )
    parser.add_argument("--token", help=f"an Airflow API token instead (default ${TOKEN_ENV})")
    parser.add_argument("--ca-cert", type=Path, help="CA bundle the Airflow's TLS is signed by")
    parser.add_argument("--kubeconfig", type=Path, help="the cluster the run's pods ran on")
    parser.add_argument("--context", help="the kubeconfig's context (default: its current one)")
    parser.add_argument(
        "--namespace",
        action="append",
        help="namespace of the run's pods (repeatable; default the pipeline's training and "
        "serving namespaces)",
    )
    parser.add_argument("--mlflow", help="the MLflow tracking URL (the registry)")
    parser.add_argument("--model-name", help="the registered model (default: the run's conf)")
    parser.add_argument("--out", type=Path, help="the scenario file (default scenarios/NAME.yaml)")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="what the run should have done instead (repeatable), e.g. branch=skip_deployment",
    )
    parser.add_argument("--evidence", type=Path, help="also keep the evidence read, as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def scenario_name(run_id: str) -> str:
    """A scenario name made of a run id: ``incident_`` and its letters and digits."""
    words = re.sub(r"[^a-z0-9]+", "_", run_id.lower()).strip("_")
    return f"incident_{words}"[:40].rstrip("_")


class CaptureRefused(ValueError):
    """An option is wrong: the message names it and says what to do."""


def _no_credentials_in(url: str, option: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as error:
        raise CaptureRefused(f"{option} {url!r}: not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CaptureRefused(f"{option} {url!r}: give an http:// or https:// URL")
    if parts.password is not None or parts.username is not None:
        raise CaptureRefused(
            f"{option}: the URL holds a user or password; give them with --user/--password or "
            f"the environment ({USER_ENV}, {PASSWORD_ENV}), so that no file or message shows them"
        )
    return url


def _airflow(args: argparse.Namespace) -> Any:
    """The Airflow client: the command line's credentials before the environment's, a token
    before a login."""
    from harness.airflow.client import AirflowClient

    url = _no_credentials_in(args.airflow, "--airflow")
    if args.token or args.user or args.password:
        token, user, password = args.token, args.user, args.password
        user = user or os.environ.get(USER_ENV)
        password = password or os.environ.get(PASSWORD_ENV)
    else:
        token = os.environ.get(TOKEN_ENV) or None
        user = args.user or os.environ.get(USER_ENV)
        password = args.password or os.environ.get(PASSWORD_ENV)
    if not token and not (user and password):
        raise CaptureRefused(
            f"no Airflow credentials: pass --user and --password (or set {USER_ENV} and "
            f"{PASSWORD_ENV}), or --token (or {TOKEN_ENV})"
        )
    verify: bool | str = True
    if args.ca_cert is not None:
        if not args.ca_cert.is_file():
            raise CaptureRefused(f"--ca-cert {args.ca_cert}: no such file")
        verify = str(args.ca_cert)
    return AirflowClient(url, user or "", password or "", token=token, verify=verify)


def _core_api(args: argparse.Namespace) -> Any:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    if args.kubeconfig is None:
        return None
    if not args.kubeconfig.is_file():
        raise CaptureRefused(f"--kubeconfig {args.kubeconfig}: no such file")
    try:
        api_client = k8s_config.new_client_from_config(
            config_file=str(args.kubeconfig), context=args.context
        )
    except k8s_config.ConfigException as error:
        raise CaptureRefused(f"--kubeconfig {args.kubeconfig} (--context): {error}") from None
    return k8s.CoreV1Api(api_client)


def _out(args: argparse.Namespace) -> tuple[Path, str]:
    if args.out is None:
        name = scenario_name(args.run_id)
        return SCENARIOS_DIR / f"{name}.yaml", name
    name = args.out.stem
    if args.out.suffix not in (".yaml", ".yml") or not re.fullmatch(NAME_PATTERN, name):
        raise CaptureRefused(
            f"--out {args.out}: a scenario file is NAME.yaml, NAME of lower-case letters, "
            "digits and _ (starting with a letter, at most 40), since NAME is the scenario's"
        )
    if args.out.exists() and not args.force:
        raise CaptureRefused(f"--out {args.out} exists: choose another, or pass --force")
    return args.out, name


def _checked(args: argparse.Namespace) -> tuple[Path, str]:
    """Every option that can be checked before anything is read."""
    from harness.capture import ExpectError, check_expectations

    try:
        check_expectations(args.expect)
    except ExpectError as error:
        raise CaptureRefused(str(error)) from None
    if args.evidence is not None and not args.evidence.parent.is_dir():
        raise CaptureRefused(f"--evidence {args.evidence}: its folder does not exist")
    _no_credentials_in(args.airflow, "--airflow")
    if args.mlflow:
        _no_credentials_in(args.mlflow, "--mlflow")
    return _out(args)


def main(args: argparse.Namespace) -> int:
    """Reads the run, writes the scenario; prints what was read and what was not mapped.
    0: written; 1: the run could not be read; 2: an option or the result was refused."""
    try:
        out, name = _checked(args)
        sources = _sources(args)
    except CaptureRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return _capture(args, sources, out, name)


def _sources(args: argparse.Namespace) -> Any:
    from harness.capture import Sources
    from ml_pipeline import registry
    from ml_pipeline.settings import PipelineSettings

    settings = PipelineSettings()
    namespaces = args.namespace or [settings.training_namespace, settings.serving_namespace]
    return Sources(
        airflow=_airflow(args),
        dag_id=args.dag_id,
        core_api=_core_api(args),
        namespaces=tuple(namespaces),
        mlflow=registry.client_for(args.mlflow) if args.mlflow else None,
        mlflow_url=args.mlflow or "",
        model_name=args.model_name,
    )


def _capture(args: argparse.Namespace, sources: Any, out: Path, name: str) -> int:
    from harness.airflow.client import AirflowApiError
    from harness.capture import (
        ExpectError,
        RunNotFinished,
        apply_expectations,
        evidence_summary,
        read_evidence,
        scenario_from,
        write_scenario,
    )
    from harness.capture.records import public_url
    from harness.paths import write_private
    from harness.scenarios.model import ScenarioError

    print(f"reading run {args.run_id} of {args.dag_id} from {public_url(args.airflow)}")
    try:
        evidence = read_evidence(sources, args.run_id, show=print)
    except (AirflowApiError, RunNotFinished) as error:
        print(f"error: cannot capture run {args.run_id} of {args.dag_id}: {error}", file=sys.stderr)
        return 1
    print(evidence_summary(evidence))
    if args.evidence:
        write_private(args.evidence, json.dumps(evidence, indent=1, default=str))
        print(f"evidence kept in {args.evidence} (secrets withheld; readable by you alone)")
    capture = scenario_from(evidence, name)
    try:
        apply_expectations(capture, args.expect)
        write_scenario(capture, f"{public_url(args.airflow)} run {args.run_id}", out, args.force)
    except (ExpectError, ScenarioError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in capture.notes:
        print(f"  {note}")
    for item in capture.unmapped:
        print(f"  NOT MAPPED: {item}")
    print(f"wrote {out}; replay it with `python -m harness replay {out}`")
    return 0
