"""What a test cluster looks like, whichever provider makes it."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.paths import check_name
from harness.pipeline_settings import PIPELINE

GPU_TAINT_VALUE = "present"


@dataclass(frozen=True)
class ClusterConfig:
    """The cluster the pipeline needs: a CPU node and a GPU node pool with a simulated GPU."""

    name: str = "ml-testbed"
    gpu_capacity: int = 4
    gpu_resource: str = PIPELINE.gpu_resource_name
    gpu_labels: dict[str, str] = field(default_factory=lambda: dict(PIPELINE.gpu_node_selector))
    namespaces: tuple[str, ...] = (PIPELINE.training_namespace, PIPELINE.serving_namespace)

    @property
    def gpu_taint(self) -> str:
        """The GPU node's taint as ``key=value:effect`` (what the trials tolerate)."""
        toleration = PIPELINE.gpu_tolerations[0]
        return f"{toleration.key}={GPU_TAINT_VALUE}:{toleration.effect}"

    def __post_init__(self) -> None:
        check_name(self.name, "cluster")
        if self.gpu_capacity < 0:
            raise ValueError(f"gpu_capacity must be 0 or more, got {self.gpu_capacity}")
