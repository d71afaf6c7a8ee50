"""openic.storage against a real S3-protocol server (moto on 127.0.0.1) through real boto3 calls."""

import json
import multiprocessing
import os
import pickle
import random
import socket
import time
from pathlib import Path

import botocore.exceptions as bex
import botocore.response
import pytest
from boto3.s3.transfer import TransferConfig
from s3_helpers import download_in_child, gets, md5, puts

from openic import storage
from openic.errors import ClientError
from openic.sagemaker.session import Session
from openic.storage import s3cache, s3file

MIB = 1 << 20


def put(bucket, key, data):
    storage.client().put_object(Bucket=bucket, Key=key, Body=data)


def put_multipart(bucket, key, data, tmp_path):
    src = tmp_path / "multipart.src"
    src.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    storage.client().upload_file(str(src), bucket, key, Config=config)


def blob(size, seed=0):
    return random.Random(seed).randbytes(size)


# --- URIs ---------------------------------------------------------------------------------------------------------

def test_parse_s3_uri_and_is_s3():
    assert storage.parse_s3_uri("s3://my-bucket/a/b.rec") == ("my-bucket", "a/b.rec")
    assert storage.parse_s3_uri("s3://my.bucket.1") == ("my.bucket.1", "")
    assert storage.parse_s3_uri("s3://abc//lead/") == ("abc", "lead/")
    assert storage.parse_s3_uri(Path("s3://abc/x")) == ("abc", "x")  # Path collapses the double slash
    assert storage.is_s3("s3://b/k") and storage.is_s3(Path("s3://bkt/k"))
    assert not storage.is_s3("/data/s3/x") and not storage.is_s3(3) and not storage.is_s3("S3://b/k")
    for bad, says in [("s3://", "names no bucket"), ("s3:///key", "names no bucket"), ("http://b/k", "not an S3 URI"),
                      ("s3://Bad_Bucket/k", "'Bad_Bucket' is not a valid"), ("s3://ab/k", "'ab' is not a valid"),
                      ("s3://1.2.3.4/k", "not a valid"), ("s3://a..b/k", "not a valid"), ("s3://-ab/k", "not a valid")]:
        with pytest.raises(ClientError, match=says) as info:
            storage.parse_s3_uri(bad)
        assert bad.split("/")[0] in str(info.value)


def test_local_path_refuses_keys_escaping_the_cache(tmp_path):
    for key in ("pre/../../etc/passwd", "pre//x", "pre/./x", "../x"):
        with pytest.raises(ClientError, match="cannot be stored"):
            s3cache.local_path(tmp_path, key, "s3://b/pre")
    assert s3cache.local_path(tmp_path, "pre/a..b/x", "s3://b/pre") == tmp_path / "pre" / "a..b" / "x"


# --- listing and errors -------------------------------------------------------------------------------------------

def test_list_objects_prefix_exact_key_and_missing(s3_env):
    b = s3_env
    for key, data in [("ds/train/a.rec", b"aa"), ("ds/train/sub/b.idx", b"bbb"), ("ds/train/", b""),
                      ("ds/trainx/c", b"c"), ("ds/val.rec", b"v")]:
        put(b, key, data)
    listed = storage.list_objects(f"s3://{b}/ds/train")
    assert {(o.key, o.size, o.etag) for o in listed} == {("ds/train/a.rec", 2, md5(b"aa")),
                                                         ("ds/train/sub/b.idx", 3, md5(b"bbb"))}
    assert [o.key for o in storage.list_objects(f"s3://{b}/ds/train/")] == ["ds/train/a.rec", "ds/train/sub/b.idx"]
    assert [o.key for o in storage.list_objects(f"s3://{b}/ds/val.rec")] == ["ds/val.rec"]
    with pytest.raises(ClientError, match=f"no objects under s3://{b}/ds/nothing/"):
        storage.list_objects(f"s3://{b}/ds/nothing")
    with pytest.raises(ClientError, match=rf"S3 bucket 'no-such-{b}' does not exist \(s3://no-such-{b}/x\)"):
        storage.list_objects(f"s3://no-such-{b}/x")


def test_missing_key_and_bucket_are_named(s3_env, tmp_path):
    b = s3_env
    with pytest.raises(ClientError, match=f"S3 object s3://{b}/none.rec does not exist"):
        storage.open_ranged(f"s3://{b}/none.rec")
    with pytest.raises(ClientError, match=f"S3 bucket 'gone-{b}' does not exist"):
        storage.open_ranged(f"s3://gone-{b}/x.rec")
    with pytest.raises(ClientError, match=f"no objects under s3://{b}/none/"):
        storage.download_prefix(f"s3://{b}/none", tmp_path)
    with pytest.raises(ClientError, match=f"S3 bucket 'gone-{b}' does not exist"):
        storage.download_dir(f"s3://gone-{b}/ckpt", tmp_path)
    with pytest.raises(ClientError, match=f"S3 bucket 'gone-{b}' does not exist"):
        storage.upload_file(__file__, f"s3://gone-{b}/x.py")


def test_unreachable_endpoint_fails_in_bounded_time(s3_env, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    started = time.monotonic()
    with pytest.raises(ClientError, match="cannot reach the S3 endpoint") as info:
        storage.list_objects("s3://some-bucket/data")
    assert time.monotonic() - started < 30
    assert url in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value) and "s3://some-bucket/data" in str(
        info.value)


def test_missing_credentials_say_how_to_configure(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ClientError, match="no usable AWS credentials to access s3://x-bucket/k.*AWS_ACCESS_KEY_ID"):
        storage.list_objects("s3://x-bucket/k")


# --- download_prefix ----------------------------------------------------------------------------------------------

def test_download_prefix_once_then_only_changes(s3_env, tmp_path):
    b = s3_env
    data = {"ch/a.rec": blob(300_000, 1), "ch/sub/b.idx": b"0\t0\n", "ch/empty": b""}
    for key, value in data.items():
        put(b, key, value)
    put_multipart(b, "ch/big.rec", blob(6 * MIB, 2), tmp_path)
    data["ch/big.rec"] = blob(6 * MIB, 2)
    cache = tmp_path / "cache"
    folder = storage.download_prefix(f"s3://{b}/ch", cache)
    assert folder == cache / b / "ch"
    assert {p.relative_to(cache / b).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == data
    manifest = json.loads((cache / ".openic-s3" / b / "manifest.json").read_text())
    assert manifest["objects"]["ch/a.rec"]["verified"] == "md5"
    assert manifest["objects"]["ch/big.rec"]["verified"] == "size"  # a multipart ETag is not an MD5
    assert all(len(gets(b, k)) == 1 for k in data)

    assert storage.download_prefix(f"s3://{b}/ch/", cache) == folder  # unchanged: nothing fetched again
    assert all(len(gets(b, k)) == 1 for k in data)

    put(b, "ch/a.rec", b"new bytes")
    storage.client().delete_object(Bucket=b, Key="ch/sub/b.idx")
    storage.download_prefix(f"s3://{b}/ch", cache)
    assert (folder / "a.rec").read_bytes() == b"new bytes" and len(gets(b, "ch/a.rec")) == 2
    assert not (folder / "sub" / "b.idx").exists()  # gone from S3, gone from the copy
    assert len(gets(b, "ch/big.rec")) == 1

    one = storage.download_prefix(f"s3://{b}/ch/big.rec", cache)  # one object: its local file
    assert one == folder / "big.rec" and len(gets(b, "ch/big.rec")) == 1


def _interrupt_streams_after_first_chunk(monkeypatch):
    original = botocore.response.StreamingBody.iter_chunks

    def broken(self, chunk_size=1024):
        for i, chunk in enumerate(original(self, chunk_size)):
            if i == 1:
                raise bex.ResponseStreamingError(error="connection reset (test)")
            yield chunk

    monkeypatch.setattr(botocore.response.StreamingBody, "iter_chunks", broken)
    monkeypatch.setattr(s3cache, "ATTEMPTS", 0)
    monkeypatch.setattr(s3cache, "BACKOFF_S", 0.0)


def test_interrupted_download_resumes_with_a_ranged_get(s3_env, tmp_path, monkeypatch):
    b, data = s3_env, blob(3 * MIB + 123, 3)
    put(b, "r/x.rec", data)
    with monkeypatch.context() as m:
        _interrupt_streams_after_first_chunk(m)
        with pytest.raises(ClientError, match=f"downloading s3://{b}/r/x.rec failed"):
            storage.download_prefix(f"s3://{b}/r", tmp_path)
    part = tmp_path / b / "r" / "x.rec.part"
    assert part.stat().st_size == MIB and not (tmp_path / b / "r" / "x.rec").exists()
    folder = storage.download_prefix(f"s3://{b}/r", tmp_path)
    assert (folder / "x.rec").read_bytes() == data and not part.exists()
    assert gets(b, "r/x.rec") == [None, f"bytes={MIB}-"]


def test_corrupted_part_and_cached_file_are_detected(s3_env, tmp_path, monkeypatch):
    b, data = s3_env, blob(2 * MIB + 5, 4)
    put(b, "c/x.rec", data)
    with monkeypatch.context() as m:
        _interrupt_streams_after_first_chunk(m)
        with pytest.raises(ClientError):
            storage.download_prefix(f"s3://{b}/c", tmp_path)
    part = tmp_path / b / "c" / "x.rec.part"
    part.write_bytes(b"\0" * MIB)  # garbage where the first MiB should be
    folder = storage.download_prefix(f"s3://{b}/c", tmp_path)
    assert (folder / "x.rec").read_bytes() == data
    assert gets(b, "c/x.rec") == [None, f"bytes={MIB}-", None]  # resumed, MD5 failed, fetched again whole

    cached = folder / "x.rec"
    cached.write_bytes(b"X" * len(data))  # same size, other bytes
    storage.download_prefix(f"s3://{b}/c", tmp_path)
    assert cached.read_bytes() == data and len(gets(b, "c/x.rec")) == 4


def test_wrong_etag_is_an_error_and_leaves_no_file(s3_env, tmp_path, monkeypatch):
    b = s3_env
    put(b, "w/x.rec", b"payload")
    monkeypatch.setattr(s3cache, "local_etag", lambda path, part_size=None: "0" * 32)
    with pytest.raises(ClientError, match=f"s3://{b}/w/x.rec arrived corrupted: its MD5 differs from its ETag"):
        storage.download_prefix(f"s3://{b}/w", tmp_path)
    assert not (tmp_path / b / "w" / "x.rec").exists()


def test_two_processes_share_one_download(s3_env, tmp_path):
    b = s3_env
    expected = {}
    for i in range(4):
        expected[f"f{i}.rec"] = md5(data := blob(MIB, 10 + i))
        put(b, f"p/f{i}.rec", data)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=download_in_child, args=(f"s3://{b}/p", str(tmp_path), barrier, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    got = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert got == [expected, expected]
    assert all(len(gets(b, f"p/{name}")) == 1 for name in expected)  # fetched once, by whichever came first


# --- open_ranged --------------------------------------------------------------------------------------------------

def test_open_ranged_random_seeks(s3_env):
    b, data = s3_env, blob(3 * MIB + 77, 5)
    put(b, "o/x.rec", data)
    rng = random.Random(0)
    with storage.open_ranged(f"s3://{b}/o/x.rec", chunk_size=256 * 1024, read_ahead=2) as f:
        assert f.seekable() and f.readable() and f.size == len(data)
        for _ in range(60):
            start, length = rng.randrange(len(data) + 10), rng.randrange(600_000)
            assert f.seek(start) == start
            assert f.read(length) == data[start:start + length]
            assert f.tell() == min(len(data), start + length) if start < len(data) else f.tell() == start
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:] and f.read(5) == b""
        f.seek(100)
        f.seek(50, os.SEEK_CUR)
        buf = bytearray(1000)
        assert f.readinto(buf) == 1000 and bytes(buf) == data[150:1150]
        assert f.max_chunks_held <= 3
        with pytest.raises(ValueError):
            f.seek(-1)
    assert f.closed
    with pytest.raises(ValueError):
        f.read(1)


def test_open_ranged_sequential_read_ahead_holds_bounded_chunks(s3_env):
    b, data = s3_env, blob(20_000_000, 6)
    put(b, "o/big.rec", data)
    with storage.open_ranged(f"s3://{b}/o/big.rec", chunk_size=MIB, read_ahead=2) as f:
        pieces = []
        while piece := f.read(300_000):
            pieces.append(piece)
        assert b"".join(pieces) == data
        assert f.gets == 20 and len(gets(b, "o/big.rec")) == 20  # every chunk once, never the whole object
        assert 2 <= f.max_chunks_held <= 3  # read-ahead ran, within 1 + read_ahead chunks


def test_open_ranged_pickles_without_client_or_buffers(s3_env):
    b, data = s3_env, blob(100_000, 7)
    put(b, "o/p.rec", data)
    f = storage.open_ranged(f"s3://{b}/o/p.rec", chunk_size=10_000)
    f.seek(12_345)
    assert f.read(10) == data[12_345:12_355]
    state = pickle.dumps(f)
    assert len(state) < 1000  # no chunk came along
    g = pickle.loads(state)
    assert g.tell() == 12_355 and g.read(20_000) == data[12_355:32_355]
    assert f.read(5) == data[12_355:12_360]
    f.close()
    assert pickle.loads(pickle.dumps(f)).closed


def test_open_ranged_retries_transient_errors_then_names_the_uri(s3_env, monkeypatch):
    b, data = s3_env, blob(50_000, 8)
    put(b, "o/t.rec", data)
    monkeypatch.setattr(s3file, "BACKOFF_S", 0.0)
    s3, real, failures = storage.client(), storage.client().get_object, []

    def flaky(**kwargs):
        if len(failures) < 2:
            failures.append(kwargs["Range"])
            raise bex.ReadTimeoutError(endpoint_url="http://test")
        return real(**kwargs)

    monkeypatch.setattr(s3, "get_object", flaky)
    with storage.open_ranged(f"s3://{b}/o/t.rec", chunk_size=64_000, read_ahead=0) as f:
        assert f.read() == data and f.gets == 3
    failures.clear()
    monkeypatch.setattr(s3, "get_object", lambda **kw: (_ for _ in ()).throw(bex.ReadTimeoutError(endpoint_url="x")))
    with storage.open_ranged(f"s3://{b}/o/t.rec", read_ahead=0) as f:
        with pytest.raises(ClientError, match=f"reading s3://{b}/o/t.rec .* failed 5 times"):
            f.read(10)


# --- uploads, download_dir, buckets, Session ----------------------------------------------------------------------

def test_upload_dir_sends_only_changed_files_and_download_dir_pulls_them(s3_env, tmp_path):
    b = s3_env
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (src / "sub" / "b.bin").write_bytes(blob(1000, 9))
    (src / "big.params").write_bytes(blob(17 * MIB, 9))  # over PART_SIZE: a multipart upload
    (src / ".a.json.tmp-host-123").write_text("in flight")
    (src / "skip.me").write_text("no")
    uri = f"s3://{b}/jobs/j1/checkpoints"
    skip = lambda rel: rel.endswith(".me")  # noqa: E731
    assert storage.upload_dir(src, uri, skip=skip) == 3
    keys = sorted(o.key for o in storage.list_objects(uri))
    assert keys == ["jobs/j1/checkpoints/a.json", "jobs/j1/checkpoints/big.params", "jobs/j1/checkpoints/sub/b.bin"]
    assert "-" in storage.list_objects(f"{uri}/big.params")[0].etag
    sent = len(puts(b))
    assert storage.upload_dir(src, uri, skip=skip) == 0 and len(puts(b)) == sent  # nothing changed: no request
    (src / "a.json").write_text('{"epoch": 2}')
    assert storage.upload_dir(src, uri, skip=skip) == 1

    dst = tmp_path / "pulled"
    assert storage.download_dir(uri, dst) == 3
    assert (dst / "a.json").read_text() == '{"epoch": 2}'
    assert (dst / "big.params").read_bytes() == (src / "big.params").read_bytes()
    assert storage.download_dir(uri, dst) == 0  # already there
    assert storage.download_dir(f"s3://{b}/jobs/none", tmp_path / "empty") == 0  # no checkpoints yet: not an error
    assert storage.upload_file(src / "a.json", f"s3://{b}/one/") == f"s3://{b}/one/a.json"


def test_ensure_bucket_is_idempotent_and_regional(s3_env):
    name = f"{s3_env}-eu"
    storage.ensure_bucket(name, "eu-west-1")
    storage.ensure_bucket(name, "eu-west-1")
    location = storage.client().get_bucket_location(Bucket=name)["LocationConstraint"]
    assert location == "eu-west-1"
    with pytest.raises(ClientError, match="not a valid S3 bucket name"):
        storage.ensure_bucket("Bad_Name", "us-east-1")


def test_session_uploads_to_the_configured_store(s3_env, tmp_path):
    data = tmp_path / "train"
    data.mkdir()
    (data / "a.rec").write_bytes(b"rec")
    (data / "a.idx").write_text("0\t0\n")
    session = Session()
    bucket = session.default_bucket()
    assert bucket == "sagemaker-us-east-1-123456789012"  # moto's account, from STS
    storage.client().head_bucket(Bucket=bucket)  # created
    assert session.upload_data(data, key_prefix="ic/train") == f"s3://{bucket}/ic/train"
    assert sorted(o.key for o in storage.list_objects(f"s3://{bucket}/ic/train")) == ["ic/train/a.idx",
                                                                                     "ic/train/a.rec"]
    assert session.upload_data(data / "a.rec", bucket=s3_env, key_prefix="/one/") == f"s3://{s3_env}/one/a.rec"


def test_session_without_a_store_keeps_the_local_stand_in(s3_env, monkeypatch, tmp_path):
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENIC_HOME", str(tmp_path / "home"))
    assert not storage.is_configured()
    (tmp_path / "f.rec").write_bytes(b"x")
    session = Session()
    assert session.default_bucket() == "sagemaker-us-east-1-000000000000"
    target = Path(session.upload_data(tmp_path / "f.rec", key_prefix="d"))
    assert target == tmp_path / "home" / "s3" / "sagemaker-us-east-1-000000000000" / "d"
    assert (target / "f.rec").read_bytes() == b"x"


def test_client_honours_endpoint_variables_defaults_the_region_and_is_cached(s3_env, s3_server, monkeypatch):
    assert storage.client() is storage.client()
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)  # the S3-only variable, read by boto3 itself
    s3 = storage.client()
    assert s3.meta.endpoint_url == s3_server and s3.meta.region_name == "us-east-1"
    put(s3_env, "e/x", b"x")
    assert [o.key for o in storage.list_objects(f"s3://{s3_env}/e")] == ["e/x"]
    retries = s3.meta.config.retries
    assert retries["mode"] == "standard" and retries["total_max_attempts"] == 3
    assert s3.meta.config.connect_timeout <= 10
