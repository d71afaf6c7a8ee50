"""The S3 lease that keeps two hosts off one s3:// output (moto's real S3 server on 127.0.0.1, conditional writes):
a second holder is refused naming the first, a released lease is free, a stale or orphaned one is taken over, a
live one is renewed, and a lease taken over under its holder is never deleted by it."""

import json
import subprocess
import sys
import time

import pytest

from openic.errors import ClientError
from openic.fileio import LockedError
from openic.storage import client
from openic.storage.s3lease import S3Lease, lease_ttl, process_space


def _foreign(bucket: str, key: str, *, space: str = "another-machine/pid:[1]", pid: int = 4242,
             ttl_s: float = 600) -> str:
    """A lease written as another job would write it; returns its ETag."""
    body = {"owner": "x", "host": "algo-1", "pid": pid, "space": space, "ttl_s": ttl_s, "since": 0}
    return client().put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())["ETag"]


def _holder(bucket: str, key: str) -> dict:
    return json.loads(client().get_object(Bucket=bucket, Key=key)["Body"].read())


def test_second_holder_refused_until_released(s3_env):
    uri = f"s3://{s3_env}/out/.openic-job.lock"
    with S3Lease(uri, "the output s3://x/out") as first:
        held = _holder(s3_env, "out/.openic-job.lock")
        assert held["owner"] == first.holder["owner"] and held["space"] == process_space()
        with pytest.raises(LockedError, match=r"the output s3://x/out: another job \(host .*PID \d+\) holds its "
                                              r"lease s3://.*/out/.openic-job.lock"):
            S3Lease(uri, "the output s3://x/out").acquire()
    assert "Contents" not in client().list_objects_v2(Bucket=s3_env, Prefix="out/")
    with S3Lease(uri, "again"):
        pass


def test_live_foreign_lease_is_refused_and_left_alone(s3_env):
    etag = _foreign(s3_env, "o/l")
    with pytest.raises(LockedError, match="host algo-1, PID 4242"):
        S3Lease(f"s3://{s3_env}/o/l", "the output").acquire()
    assert client().head_object(Bucket=s3_env, Key="o/l")["ETag"] == etag


def test_stale_lease_taken_over_after_its_ttl(s3_env, caplog):
    _foreign(s3_env, "o/l", ttl_s=1)
    time.sleep(2.2)  # the store's clock: LastModified against the response's Date, both to the second
    with S3Lease(f"s3://{s3_env}/o/l", "the output") as lease:
        assert _holder(s3_env, "o/l")["owner"] == lease.holder["owner"]
    assert "Took over the stale lease" in caplog.text and "not renewed for" in caplog.text


def test_lease_of_a_dead_process_on_this_machine_is_taken_at_once(s3_env, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _foreign(s3_env, "o/l", space=process_space(), pid=int(gone.stdout))
    with S3Lease(f"s3://{s3_env}/o/l", "the output"):
        pass
    assert f"its process {int(gone.stdout)} on this machine is gone" in caplog.text
    _foreign(s3_env, "o/l", space="elsewhere", pid=int(gone.stdout))  # the same PID elsewhere means nothing here
    with pytest.raises(LockedError):
        S3Lease(f"s3://{s3_env}/o/l", "the output").acquire()


def test_held_lease_is_renewed_and_a_lost_one_not_deleted(s3_env, caplog):
    uri = f"s3://{s3_env}/o/l"
    lease = S3Lease(uri, "the output", ttl_s=1.2).acquire()
    try:
        first = client().head_object(Bucket=s3_env, Key="o/l")["ETag"]
        time.sleep(1.0)  # renewed every ttl/4 = 0.3 s
        assert client().head_object(Bucket=s3_env, Key="o/l")["ETag"] != first and lease.etag != first
        time.sleep(1.5)  # older than its TTL in all, yet fresh: a competitor is still refused
        with pytest.raises(LockedError):
            S3Lease(uri, "the output").acquire()
        theirs = _foreign(s3_env, "o/l")  # another job took it over (as after a long stall of this one)
        time.sleep(0.8)
        assert lease.lost and "Lost the lease" in caplog.text
    finally:
        lease.release()
    assert client().head_object(Bucket=s3_env, Key="o/l")["ETag"] == theirs  # theirs stays


def test_a_lease_already_ours_is_kept(s3_env):
    """A create botocore retried after it had gone through finds our own lease: it is ours, not a refusal."""
    lease = S3Lease(f"s3://{s3_env}/o/l", "the output")
    client().put_object(Bucket=s3_env, Key="o/l", Body=json.dumps(lease.holder).encode())
    with lease:
        assert lease.etag is not None and not lease.lost
    assert "Contents" not in client().list_objects_v2(Bucket=s3_env, Prefix="o/")


def test_missing_bucket_named(s3_env):
    with pytest.raises(ClientError, match="bucket 'no-such-lease-bucket' does not exist"):
        S3Lease("s3://no-such-lease-bucket/o/l", "the output").acquire()


@pytest.mark.parametrize("raw", ["0", "abc", "100000"])
def test_ttl_from_the_environment_is_bounded(monkeypatch, raw):
    monkeypatch.setenv("OPENIC_S3_LEASE_TTL_S", raw)
    with pytest.raises(ClientError, match=f"OPENIC_S3_LEASE_TTL_S='{raw}' is not valid: expected seconds from 1"):
        lease_ttl()
