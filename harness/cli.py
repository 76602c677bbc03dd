"""The harness from the shell.

``python -m harness up|down|status|logs``: the whole stack (cluster, services, Airflow).
``python -m harness cluster up|down|status``: the cluster alone.
``python -m harness replay [SCENARIO ...]``: the main job, replaying scenarios (harness.replay).
``python -m harness capture --airflow URL --run-id RUN``: a run into a scenario (harness.capture).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness import cluster
from harness.airflow.environment import PASSWORDS_FILE
from harness.cluster import gpus
from harness.cluster.config import ClusterConfig
from harness.paths import UnsafePath, check_name
from harness.steps import StepFailed, tail


def _name(value: str) -> str:
    try:
        return check_name(value, "that")
    except UnsafePath as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _jobs(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 1 or more")
    return int(value)


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 0 or more")
    return int(value)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument(
        "--name", type=_name, default="ml-testbed", help="cluster name (default ml-testbed)"
    )
    parser.add_argument(
        "--provider",
        choices=cluster.PROVIDERS,
        help=f"default: ${cluster.PROVIDER_ENV}, else chosen automatically",
    )
    parser.add_argument("--kubeconfig", type=Path, help="an existing cluster (kubeconfig provider)")
    parser.add_argument(
        "--gpu-capacity", type=_count, default=4, help="simulated GPUs on the GPU node"
    )


def _cluster(args: argparse.Namespace) -> int:
    config = ClusterConfig(name=args.name, gpu_capacity=args.gpu_capacity)
    started = time.monotonic()
    if args.action == "up":
        try:
            ready = cluster.up(config, args.provider, args.kubeconfig)
        except KeyboardInterrupt:
            print("interrupted: removing the half-started cluster", file=sys.stderr)
            cluster.down(config, args.provider, args.kubeconfig)
            raise
        info = ready.info
        print(f"cluster {info.name} ({info.provider}) up in {time.monotonic() - started:.1f} s")
        print(f"  CPU nodes: {', '.join(info.cpu_nodes)}; GPU nodes: {', '.join(info.gpu_nodes)}")
        for line in gpus.describe(info):
            print(f"  {line}")
        print(f"  admin kubeconfig:   {info.admin_kubeconfig}")
        print(
            f"  Airflow kubeconfig: {ready.airflow.kubeconfig} (namespaces "
            f"{', '.join(ready.airflow.namespaces)} only)"
        )
        print(f"  pods reach this host at {info.host_address_for_pods}")
    elif args.action == "down":
        cluster.down(config, args.provider, args.kubeconfig)
        print(f"cluster {config.name} removed in {time.monotonic() - started:.1f} s")
    else:
        info = cluster.status(config, args.provider, args.kubeconfig)
        if info is None:
            print(f"cluster {config.name}: not running")
            return 1
        print(
            f"cluster {info.name} ({info.provider}): running; nodes "
            f"{', '.join(info.cpu_nodes + info.gpu_nodes)}; kubeconfig {info.admin_kubeconfig}"
        )
        config_file = str(info.admin_kubeconfig)
        api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=config_file))
        for line in gpus.holders(info, api, config.gpu_resource):
            print(f"  {line}")
    return 0


def _stack_arguments(parser: argparse.ArgumentParser, action: str) -> None:
    parser.set_defaults(action=action)
    parser.add_argument(
        "--name", type=_name, default="ml-testbed", help="stack name (default ml-testbed)"
    )
    parser.add_argument("--provider", choices=cluster.PROVIDERS, help="cluster provider")
    parser.add_argument(
        "--gpu-capacity", type=_count, default=4, help="simulated GPUs on the GPU node"
    )
    if action == "down":
        parser.add_argument(
            "--force", action="store_true", help="remove it even while another process uses it"
        )
    if action == "logs":
        parser.add_argument("component", nargs="?", help="one process (default: list them)")
        parser.add_argument("--lines", type=_count, default=40)


def _where(state: Path, stack_name: str) -> list[str]:
    """Where a person watches the stack: the Airflow UI and its login, MLflow's UI, moto S3."""
    from harness import services

    home = state / "airflow"
    port_file = home / "api-port"
    lines = []
    if port_file.exists():
        lines.append(
            f"  Airflow UI  http://127.0.0.1:{port_file.read_text().strip()}  (user harness, "
            f"password in {home / PASSWORDS_FILE})"
        )
    for service in services.status(stack_name):
        label = {"mlflow": "MLflow UI", "moto": "S3 (moto)"}.get(service.component)
        if label and service.url:
            lines.append(f"  {label:<10}  {service.url}")
    return lines


def _stack(args: argparse.Namespace) -> int:
    from harness import processes
    from harness.stack import Stack, StackConfig, StackInUse

    stack = Stack(StackConfig(args.name, args.provider, args.gpu_capacity))
    if args.action == "up":
        try:
            running = stack.up()
        except KeyboardInterrupt:
            print("interrupted: removing the half-started stack", file=sys.stderr)
            with contextlib.suppress(StackInUse):  # another process's now: it stays
                stack.down()
            raise
        for part, seconds in running.timings.items():
            print(f"  {part:<10} {seconds:6.1f} s")
        print("\n".join(_where(stack.state, args.name)))
    elif args.action == "down":
        stack.down(force=args.force)
    elif args.action == "status":
        names = processes.names(stack.state)
        for name in names:
            alive = processes.running_pid(stack.state, name) is not None
            print(f"  {name:<32} {'running' if alive else 'DEAD'}")
        if names:
            print("\n".join(_where(stack.state, args.name)))
        return 0 if names else 1
    elif args.component:
        print(tail(processes.log_path(stack.state, args.component), args.lines))
    else:
        print("\n".join(processes.names(stack.state)) or "no processes")
    return 0


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    _stack_arguments(parser, "replay")
    parser.add_argument(
        "scenarios", nargs="*", help="scenario names or files (default: every scenarios/*.yaml)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave a stack this command started running"
    )
    from harness.replay import default_jobs

    jobs = default_jobs()
    parser.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=jobs,
        help=f"replays at once (default {jobs} here; those that change the cluster run alone)",
    )


def _replay(args: argparse.Namespace) -> int:
    from harness.replay import main_replay
    from harness.scenarios import ScenarioError
    from harness.stack import StackConfig

    try:
        return main_replay(
            args.scenarios,
            StackConfig(args.name, args.provider, args.gpu_capacity),
            args.keep,
            args.jobs,
        )
    except ScenarioError as error:
        print(f"error: {error}\nNothing was started.", file=sys.stderr)
        return 2


def _capture(args: argparse.Namespace) -> int:
    from harness.capture import command

    return command.main(args)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (bad arguments exit 2 with the usage and what was wrong)."""
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _cluster_arguments(commands.add_parser("cluster", help="the test Kubernetes cluster"))
    for action, text in (
        ("up", "bring the stack up (or reuse it)"),
        ("down", "remove the stack"),
        ("status", "the stack's processes"),
        ("logs", "a process's log tail"),
    ):
        _stack_arguments(commands.add_parser(action, help=text), action)
    _replay_arguments(commands.add_parser("replay", help="replay scenarios through real DAG runs"))
    from harness.capture import command as capture

    capture.add_arguments(
        commands.add_parser("capture", help="capture a DAG run (production's) into a scenario")
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and runs it; failures print the failed step and exit 1."""
    args = build_parser().parse_args(argv)
    handlers = {"cluster": _cluster, "replay": _replay, "capture": _capture}
    try:
        sys.exit(handlers.get(args.command, _stack)(args))
    except (
        StepFailed,
        cluster.ProviderUnavailable,
        ValueError,
        RuntimeError,
        TimeoutError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            "interrupted; run `python -m harness cluster down` to remove what was started",
            file=sys.stderr,
        )
        sys.exit(130)
