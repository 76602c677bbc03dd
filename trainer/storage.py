"""Reads and writes of the pipeline's files, on S3 (``s3://bucket/key``) or local paths.

S3 endpoint and credentials come from the standard AWS environment variables (boto3 honours
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` itself); local paths let tests run without S3.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import pandas as pd
import pyarrow
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from trainer.errors import InputNotFoundError, TrainerError, UnreadableFileError

log = logging.getLogger(__name__)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404"})


def join_uri(prefix: str, *parts: str) -> str:
    """``prefix`` and ``parts`` joined with single slashes (works for S3 URIs and local paths)."""
    return "/".join([prefix.rstrip("/"), *(part.strip("/") for part in parts)])


def read_parquet(uri: str, cache_dir: str | None = None) -> pd.DataFrame:
    """The parquet file at ``uri``; S3 objects are cached in ``cache_dir`` when one is given."""
    source = _cached_copy(uri, Path(cache_dir)) if _is_s3(uri) and cache_dir else None
    try:
        return pd.read_parquet(source or io.BytesIO(read_bytes(uri)))
    except pyarrow.ArrowException as error:
        raise UnreadableFileError(
            f"{uri} is not a readable parquet file ({error}); check the URI and the step that "
            "writes it"
        ) from None


def write_parquet(frame: pd.DataFrame, uri: str) -> None:
    """Write ``frame`` as parquet to ``uri`` (without the pandas index)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes(buffer.getvalue(), uri)


def write_json(value: Any, uri: str) -> None:
    """Write ``value`` as indented JSON to ``uri``."""
    write_bytes(json.dumps(value, indent=2, sort_keys=True).encode(), uri)


def read_json(uri: str) -> Any:
    """The JSON document at ``uri``; UnreadableFileError when it is not JSON."""
    try:
        return json.loads(read_bytes(uri))
    except ValueError as error:
        raise UnreadableFileError(f"{uri} is not JSON ({error}); check the URI") from None


def read_bytes(uri: str) -> bytes:
    """The content of ``uri``; InputNotFoundError names the URI when nothing is there."""
    if _is_s3(uri):
        bucket, key = _bucket_and_key(uri)
        try:
            return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            _raise_if_missing(error, uri)
            raise
    path = _local_path(uri)
    if not path.is_file():
        raise InputNotFoundError(
            f"input {uri} does not exist; check the URI and the step that writes it"
        )
    return path.read_bytes()


def write_bytes(data: bytes, uri: str) -> None:
    """Write ``data`` to ``uri``, creating local parent directories as needed."""
    if _is_s3(uri):
        bucket, key = _bucket_and_key(uri)
        _s3().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = _local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _cached_copy(uri: str, cache_dir: Path) -> Path:
    bucket, key = _bucket_and_key(uri)
    try:
        etag = _s3().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except ClientError as error:
        _raise_if_missing(error, uri)
        raise
    # The ETag is part of the key so that an object rewritten under the same URI is fetched again.
    digest = hashlib.sha256(f"{uri}\n{etag}".encode()).hexdigest()[:24]
    cached = cache_dir / f"{digest}-{Path(key).name}"
    if cached.is_file():
        log.info("using cached copy %s of %s", cached, uri)
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Trials share the cache volume: download to a private name, then rename atomically.
    handle, partial = tempfile.mkstemp(dir=cache_dir, prefix=f".{digest}-", suffix=".partial")
    os.close(handle)
    try:
        _s3().download_file(bucket, key, partial)
        os.replace(partial, cached)
    finally:
        Path(partial).unlink(missing_ok=True)
    log.info("downloaded %s to cache %s", uri, cached)
    return cached


def _raise_if_missing(error: ClientError, uri: str) -> None:
    code = error.response.get("Error", {}).get("Code")
    if code in _MISSING_CODES:
        raise InputNotFoundError(
            f"input {uri} does not exist ({code}); check the URI and the step that writes it"
        ) from None


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _bucket_and_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise TrainerError(f"S3 URI {uri!r} needs a bucket and a key: s3://BUCKET/KEY")
    return parsed.netloc, key


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    if "://" in uri:
        raise TrainerError(f"unsupported URI {uri!r}: use s3://BUCKET/KEY or a local path")
    return Path(uri)


def _s3() -> BaseClient:
    # A client per call, not per process: tests change the AWS environment between calls.
    return boto3.client("s3")
