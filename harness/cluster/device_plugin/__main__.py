"""``python -m harness.cluster.device_plugin --topology FILE [--plugin-dir DIR]``: serves the
simulated GPUs in FILE to the kubelet until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from harness.cluster.device_plugin.plugin import ENDPOINT, PLUGIN_DIR, DevicePlugin
from harness.cluster.device_plugin.topology import Topology


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.cluster.device_plugin")
    parser.add_argument("--topology", type=Path, required=True, help="the devices (JSON)")
    parser.add_argument("--plugin-dir", type=Path, default=PLUGIN_DIR, help="the kubelet's")
    parser.add_argument("--endpoint", default=ENDPOINT, help="the plugin's socket name")
    args = parser.parse_args()
    try:
        Topology.read(args.topology)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plugin = DevicePlugin(args.topology, args.plugin_dir, args.endpoint)
    signal.signal(signal.SIGTERM, lambda *_: plugin.stop())
    with contextlib.suppress(KeyboardInterrupt):
        plugin.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
