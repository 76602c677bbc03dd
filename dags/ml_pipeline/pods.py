"""What every pod of the pipeline shares: image, namespace, credentials, resources."""

from __future__ import annotations

from typing import Any

from kubernetes.client import models as k8s

from ml_pipeline.settings import PipelineSettings, ResourceSpec


def resources(
    settings: PipelineSettings, spec: ResourceSpec, gpus: int = 0, gpu_resource: str | None = None
) -> k8s.V1ResourceRequirements:
    """Requests and limits; GPUs (``gpu_resource``, default gpu_resource_name) go in both
    (Kubernetes requires them equal for extended resources)."""
    gpu = {gpu_resource or settings.gpu_resource_name: str(gpus)} if gpus else {}
    return k8s.V1ResourceRequirements(
        requests={**spec.requests, **gpu}, limits={**spec.limits, **gpu}
    )


def trial_resources(
    settings: PipelineSettings, gpus: int, gpu_resource: str | None = None
) -> dict[str, dict[str, str]]:
    """A trial pod's requests and limits as plain data (a task returns them for expand_kwargs)."""
    spec = resources(settings, settings.trial_resources, gpus=gpus, gpu_resource=gpu_resource)
    return {"requests": dict(spec.requests), "limits": dict(spec.limits)}


def pod_environment(settings: PipelineSettings) -> list[k8s.V1EnvVar]:
    """Endpoints the trainer needs; credentials come from the Secret (see pod_defaults)."""
    values = {
        "MLFLOW_TRACKING_URI": settings.mlflow_uri_for_pods,
        # AWS's recommended retry mode (3 attempts, capped backoff) instead of boto3's legacy
        # one: a throttled or unavailable S3 fails the pod within seconds, Airflow retries it.
        "AWS_RETRY_MODE": "standard",
        # Models are downloaded through the tracking server, not from presigned URLs: those
        # name the artifact store as the server reaches it, which pods may not (a private S3
        # endpoint; the testbed's moto, known by its container name). The models are small.
        "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        # boto3 names the task in its User-Agent (``app/<task id>``): S3's access logs and
        # CloudTrail, and the testbed's fault proxy, tell which task made a request.
        "AWS_SDK_UA_APP_ID": "{{ ti.task_id }}",
    }
    if settings.pod_s3_endpoint_url:
        values["AWS_ENDPOINT_URL"] = settings.pod_s3_endpoint_url
    values.update(settings.pod_environment)
    return [k8s.V1EnvVar(name=name, value=value) for name, value in values.items()]


def pod_defaults(
    settings: PipelineSettings, namespace: str, with_image: bool = True
) -> dict[str, Any]:
    """KubernetesPodOperator arguments every pipeline pod shares (``image`` unless told not)."""
    image = {"image": settings.trainer_image} if with_image else {}
    return {
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "namespace": namespace,
        **image,
        "image_pull_policy": settings.image_pull_policy,
        "service_account_name": settings.pod_service_account,
        "env_vars": pod_environment(settings),
        "env_from": [
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.credentials_secret))
        ],
        "on_finish_action": settings.on_finish_action,
        "startup_timeout_seconds": settings.pod_startup_timeout_seconds,
        "startup_check_interval_seconds": settings.pod_startup_check_interval_seconds,
        "admission_retries": settings.pod_admission_retries,
        "admission_retry_delay_seconds": settings.pod_admission_retry_delay_seconds,
        "get_logs": True,
        # The trainer's last lines become the termination message, which the task's failure
        # quotes: the streamed log can miss them when a container exits within a second.
        "termination_message_policy": "FallbackToLogsOnError",
        "log_events_on_failure": True,
        "do_xcom_push": True,
    }
