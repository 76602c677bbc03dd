"""The pipeline's settings module (dags/ml_pipeline/settings.py), as the harness reads it.

The DAG owns those values; the harness imports them rather than copying any (GPU resource name,
node labels and taint, namespaces, claim name, buckets).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_DIR = REPO_ROOT / "dags"

if not (DAGS_DIR / "ml_pipeline").is_dir():
    # dags/ is Airflow's DAG folder, deployed as files, not a package: the harness reads it from
    # the clone it runs in.
    raise ImportError(
        f"the pipeline's DAG folder is not at {DAGS_DIR}: the harness runs from a clone of the "
        "repository; install it editable there (`pip install -e '.[test]'`) or run it with tox"
    )
if str(DAGS_DIR) not in sys.path:
    # Airflow puts the DAG folder on sys.path the same way.
    sys.path.append(str(DAGS_DIR))

from ml_pipeline.settings import PipelineSettings  # noqa: E402

PIPELINE = PipelineSettings()
# An image no node has (the missing_image fault); the harness profile lets trials name it.
MISSING_IMAGE = "ml-testbed/trainer:missing-image-fault"
