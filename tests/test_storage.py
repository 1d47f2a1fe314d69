"""storage: URIs (no credentials), atomic writes locally and on S3 (moto server on loopback)."""

import json
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from elmo_dist import storage
from elmo_dist.config import ConfigError, JobConfig


def test_credentials_in_uris_are_refused_without_echoing_them():
    for uri in ("s3://AKIAEXAMPLE:topsecret123@bucket/corpus/",
                "s3://bucket/corpus/?access_key=AKIAEXAMPLE&secret_key=topsecret123"):
        with pytest.raises(storage.StorageError, match="credentials in a URI are refused") as e:
            storage.filesystem(uri)
        assert "topsecret123" not in str(e.value) and "AWS_ACCESS_KEY_ID" in str(e.value)
        with pytest.raises(ConfigError) as e:
            JobConfig.build(inputs=["in/"], output=uri)
        assert "topsecret123" not in str(e.value)
        with pytest.raises(ConfigError) as e:
            JobConfig.build(inputs=[uri], output="out")
        assert "topsecret123" not in str(e.value)
    assert storage.redact("s3://k:s@b/p?secret_key=x&region=us") == "s3://***@b/p?secret_key=***&region=us"
    assert storage.check_uri("s3://bucket/key?region=us-east-1") == "s3://bucket/key?region=us-east-1"


def test_resolved_paths_and_overlap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    assert storage.is_within("corpus/out", str(tmp_path / "corpus"))
    assert storage.is_within(str(tmp_path / "corpus"), "corpus")
    assert not storage.is_within("corpus2", "corpus")
    os.symlink(tmp_path / "corpus", tmp_path / "link")
    assert storage.is_within("link/emb", "corpus")  # symlinks resolved
    assert storage.is_within("s3://b/corpus/emb", "s3://b/corpus/")
    assert not storage.is_within("s3://b/corpus2", "s3://b/corpus")


def test_local_atomic_writes(tmp_path):
    fs = pafs.LocalFileSystem()
    path = str(tmp_path / "d" / "x.json")
    assert storage.write_json(fs, path, {"a": 1}) == os.path.getsize(path)
    assert storage.read_json(fs, path) == {"a": 1}
    # A writer that fails leaves the previous content and no temporary behind.
    with pytest.raises(RuntimeError):
        with storage.atomic_local_path(path) as tmp:
            open(tmp, "w").write('{"a": 2')
            raise RuntimeError("killed mid-write")
    assert storage.read_json(fs, path) == {"a": 1}
    assert sorted(os.listdir(tmp_path / "d")) == ["x.json"]
    table = pa.table({"v": list(range(100))})
    size = storage.write_parquet(fs, str(tmp_path / "d" / "t.parquet"), table)
    assert size == os.path.getsize(tmp_path / "d" / "t.parquet")
    assert pq.read_table(tmp_path / "d" / "t.parquet").equals(table)


def test_torn_json_and_temporaries(tmp_path):
    fs = pafs.LocalFileSystem()
    (tmp_path / "torn.json").write_text('{"unit": "ab')
    assert storage.read_json(fs, str(tmp_path / "torn.json")) is None
    with pytest.raises(storage.CorruptFileError, match="torn.json: unreadable JSON"):
        storage.read_json(fs, str(tmp_path / "torn.json"), strict=True)
    assert storage.read_json(fs, str(tmp_path / "absent.json"), strict=True) is None
    (tmp_path / "sub").mkdir()
    dead = tmp_path / "sub" / f".part-x-0000.parquet.tmp-{'a' * 32}"
    dead.write_bytes(b"half")
    keep = [tmp_path / "part-x-0000.parquet", tmp_path / ".hidden", tmp_path / "x.tmp-1"]
    for p in keep:
        p.write_bytes(b"keep")
    assert storage.remove_temporaries(fs, str(tmp_path)) == 1
    assert not dead.exists() and all(p.exists() for p in keep)


@pytest.mark.s3
def test_s3_write_is_complete_or_absent(s3_endpoint):
    bucket = s3_endpoint()
    fs, root = storage.filesystem(f"s3://{bucket}/out")
    client = s3_endpoint.client
    # A small object is one PutObject (no multipart upload left behind) and reads back whole.
    table = pa.table({"v": list(range(1000))})
    size = storage.write_parquet(fs, f"{root}/part-0.parquet", table)
    head = client.head_object(Bucket=bucket, Key="out/part-0.parquet")
    assert head["ContentLength"] == size and "-" not in head["ETag"]  # a multipart ETag has "-N"
    assert pq.read_table(f"{root}/part-0.parquet", filesystem=fs).equals(table)
    # A writer that raises after writing more than a multipart part leaves no object and no upload.
    with pytest.raises(RuntimeError):
        with storage.atomic_output(fs, f"{root}/big.bin") as fh:
            fh.write(b"y" * (12 << 20))
            raise RuntimeError("failed after the first part")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["out/part-0.parquet"]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # JSON control files round-trip; a missing one reads as None.
    storage.write_json(fs, f"{root}/_job/config.json", {"k": [1, 2]})
    assert storage.read_json(fs, f"{root}/_job/config.json") == {"k": [1, 2]}
    assert storage.read_json(fs, f"{root}/_job/none.json") is None
    assert json.loads(client.get_object(Bucket=bucket, Key="out/_job/config.json")["Body"].read()) == {"k": [1, 2]}


@pytest.mark.s3
def test_s3_large_object_multipart(s3_endpoint, monkeypatch):
    """Above SINGLE_PUT_BYTES the object goes up as a multipart upload, and is complete."""
    bucket = s3_endpoint()
    fs, root = storage.filesystem(f"s3://{bucket}/out")
    monkeypatch.setattr(storage, "SINGLE_PUT_BYTES", 12 << 20)
    data = os.urandom(1 << 20) * 20  # 20 MiB
    assert storage.write_bytes(fs, f"{root}/big.bin", data) == len(data)
    head = s3_endpoint.client.head_object(Bucket=bucket, Key="out/big.bin")
    assert head["ContentLength"] == len(data) and "-" in head["ETag"]
    assert storage.read_bytes(fs, f"{root}/big.bin") == data
