"""Regenerates deviceplugin_pb2.py and deviceplugin_pb2_grpc.py from deviceplugin.proto.

A developer's tool, not run by the harness: in an environment with ``grpcio-tools==1.85.1`` (its
protoc writes code for the protobuf runtime in constraints/lock.txt), run
``python harness/cluster/device_plugin/generate.py`` (a script: it needs none of the harness's
dependencies).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO = Path(__file__).with_name("deviceplugin.proto").relative_to(REPO_ROOT)


def main() -> int:
    # Paths relative to the repository root make the generated imports package-qualified.
    arguments = ["-I.", "--python_out=.", "--grpc_python_out=.", str(PROTO)]
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *arguments], cwd=REPO_ROOT)
    if done.returncode != 0:
        print("error: protoc failed (pip install grpcio-tools==1.85.1?)", file=sys.stderr)
        return done.returncode
    print(f"generated the modules of {PROTO}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
