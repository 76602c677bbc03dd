"""trainer.storage on local paths and on moto's S3, including the shared-volume cache."""

import pandas as pd
import pytest

from trainer.errors import InputNotFoundError, TrainerError
from trainer.storage import join_uri, read_bytes, read_parquet, write_json, write_parquet

FRAME = pd.DataFrame({"f00": [1.0, 2.0], "label": [0, 1]})


def test_local_round_trip_creates_parent_directories(tmp_path):
    uri = str(tmp_path / "a" / "b" / "frame.parquet")
    write_parquet(FRAME, uri)
    pd.testing.assert_frame_equal(read_parquet(uri), FRAME)
    pd.testing.assert_frame_equal(read_parquet(f"file://{uri}"), FRAME)


def test_missing_local_file_names_the_uri(tmp_path):
    with pytest.raises(InputNotFoundError, match=f"input {tmp_path}/absent.parquet does not"):
        read_parquet(str(tmp_path / "absent.parquet"))


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    (tmp_path / "notes.parquet").write_text("not parquet")
    with pytest.raises(TrainerError, match=f"{tmp_path}/notes.parquet is not a readable parquet"):
        read_parquet(str(tmp_path / "notes.parquet"))


def test_unsupported_scheme_says_what_is_supported():
    with pytest.raises(TrainerError, match="use s3://BUCKET/KEY or a local path"):
        read_bytes("gs://bucket/key")


def test_join_uri_uses_single_slashes():
    assert join_uri("s3://b/prefix/", "/model/", "v1.json") == "s3://b/prefix/model/v1.json"


def test_s3_round_trip(s3_client):
    s3_client.create_bucket(Bucket="storage")
    write_parquet(FRAME, "s3://storage/frames/one.parquet")
    write_json({"a": 1}, "s3://storage/frames/one.json")
    pd.testing.assert_frame_equal(read_parquet("s3://storage/frames/one.parquet"), FRAME)
    assert read_bytes("s3://storage/frames/one.json") == b'{\n  "a": 1\n}'


@pytest.mark.parametrize("uri", ["s3://storage-empty/absent.parquet", "s3://no-such-bucket/x"])
def test_missing_s3_object_names_the_uri(s3_client, uri):
    s3_client.create_bucket(Bucket="storage-empty")
    with pytest.raises(InputNotFoundError, match=f"input {uri} does not exist"):
        read_parquet(uri)


def test_cache_serves_repeat_reads_and_refetches_a_rewritten_object(s3_client, tmp_path):
    s3_client.create_bucket(Bucket="cached")
    uri, cache = "s3://cached/train.parquet", tmp_path / "shared-data"
    write_parquet(FRAME, uri)
    pd.testing.assert_frame_equal(read_parquet(uri, str(cache)), FRAME)
    (cached,) = cache.iterdir()
    assert cached.name.endswith("-train.parquet")
    cached_at = cached.stat().st_mtime_ns
    pd.testing.assert_frame_equal(read_parquet(uri, str(cache)), FRAME)
    assert cached.stat().st_mtime_ns == cached_at
    rewritten = FRAME.assign(f00=[3.0, 4.0])
    write_parquet(rewritten, uri)
    pd.testing.assert_frame_equal(read_parquet(uri, str(cache)), rewritten)
    assert len(list(cache.iterdir())) == 2
