"""A real S3-protocol server (moto's, in this process) and an environment that points boto3 at it.

* ``s3_server`` (session): starts ``moto.server.ThreadedMotoServer`` on a free port of 127.0.0.1 and yields its
  endpoint URL. Every request it serves is appended to ``REQUESTS`` as ``(method, path, Range header)``, from
  any process (spawned workers too), so tests can count GETs.
* ``s3_env`` (function): ``AWS_ENDPOINT_URL`` at that server, test credentials, us-east-1, nothing read from
  ``~/.aws``, the client cache cleared; yields the name of a fresh, empty bucket.

moto is imported inside the fixture, so test files that do not use S3 do not pay for it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from pathlib import Path

import pytest

REQUESTS: list[tuple[str, str, str | None]] = []
_requests_lock = threading.Lock()


class _Recorder:
    """WSGI middleware in front of moto's app: note each request, then serve it."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        with _requests_lock:
            REQUESTS.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("HTTP_RANGE")))
        return self.app(environ, start_response)


def gets(bucket: str, key: str) -> list[str | None]:
    """The Range headers (None: the whole object) of the GETs the server saw for ``s3://bucket/key``."""
    with _requests_lock:
        return [r for method, path, r in REQUESTS if method == "GET" and path == f"/{bucket}/{key}"]


def puts(bucket: str) -> list[str]:
    """Paths of the PUT/POST requests (object uploads and multipart steps) into ``bucket``."""
    with _requests_lock:
        return [path for method, path, _ in REQUESTS if method in ("PUT", "POST") and path.startswith(f"/{bucket}/")]


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    server._server.app = _Recorder(server._server.app)  # werkzeug's handler reads server.app on every request
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch, tmp_path_factory, s3_server):
    from openic.storage import clear_client_cache, client

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    nowhere = tmp_path_factory.mktemp("aws") / "absent"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    clear_client_cache()
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client().create_bucket(Bucket=bucket)
    with _requests_lock:
        REQUESTS.clear()
    yield bucket
    clear_client_cache()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def download_in_child(uri: str, cache_root: str, barrier, results) -> None:
    """For a spawned process: wait for the others, ``download_prefix``, put ``{relative path: md5}`` (or the
    error's text) on the ``results`` queue."""
    from openic.storage import download_prefix

    barrier.wait(timeout=30)
    try:
        folder = download_prefix(uri, Path(cache_root))
        results.put({p.relative_to(folder).as_posix(): md5(p.read_bytes())
                     for p in sorted(folder.rglob("*")) if p.is_file()})
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(f"{type(e).__name__}: {e}")
