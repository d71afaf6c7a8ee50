"""``Predictor``: a local endpoint (a real ``openic serve`` child on a free loopback port) and SageMaker's verbs.

``predict(data, initial_args={"ContentType": ..., "Accept": ...})`` posts to the endpoint's ``/invocations`` and
returns the body as bytes (SageMaker v2's default), or what the ``deserializer`` makes of it. Endpoints live as
long as this interpreter: ``delete_endpoint()`` stops one, and the rest stop at exit. Each endpoint's server log
is ``$OPENIC_HOME/endpoints/NAME.log`` (``~/.openic`` by default).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from openic.errors import ClientError, shown
from openic.sdk.serde import IdentitySerializer
from openic.storage.local import local_path

_ENDPOINTS: dict[str, tuple[subprocess.Popen, str]] = {}  # endpoint name -> (server process, base URL)
START_TIMEOUT_S = 240  # SageMaker waits up to 4 minutes for /ping


class ModelError(ClientError):
    """The endpoint refused the request (SageMaker's runtime raises ``ModelError`` for a 4xx/5xx from the model)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"An error occurred (ModelError) when calling the InvokeEndpoint operation: Received "
                         f"client error ({status}) from primary with message \"{message}\"")
        self.status = status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_deploy(initial_instance_count: object, instance_type: object) -> None:
    """``deploy()``'s arguments as SageMaker takes them, refused where one local process cannot honour them."""
    from openic.sdk.instances import device_for

    if instance_type is not None:
        device_for(instance_type)
    if initial_instance_count != 1:
        raise ClientError(f"initial_instance_count {shown(initial_instance_count)}: one local endpoint process "
                          "serves each deploy(); use openic serve --workers N for more processes")


def start_endpoint(model_data: str, endpoint_name: str, serializer: Any = None, deserializer: Any = None,
                   **options: Any) -> Predictor:
    """Start ``openic serve`` for ``model_data`` and wait for ``/ping``; a name in use is refused."""
    from openic.sdk.jobs import check_job_name, openic_home

    check_job_name(endpoint_name)  # SageMaker's rule for endpoint names too; it names the log file
    if endpoint_name in _ENDPOINTS and _ENDPOINTS[endpoint_name][0].poll() is None:
        raise ClientError(f"an endpoint named {endpoint_name!r} is already running; delete_endpoint() it first "
                          "or pass endpoint_name=")
    model_data = str(local_path(model_data))  # an s3:// artifact is fetched once here, not by every worker
    port = _free_port()
    argv = [sys.executable, "-m", "openic", "serve", "--model", model_data, "--port", str(port)]
    for key in ("backend", "preprocess", "workers"):
        if key in options:
            argv += [f"--{key}", str(options[key])]
    if options.get("compile"):  # openic's: torch.compile at start-up (openic.serving.compiled)
        argv.append("--compile")
    logs = openic_home() / "endpoints"  # not beside the model: it may sit in a read-only folder
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{endpoint_name}.log", "ab") as log:  # the child keeps its own handle
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ClientError(f"the endpoint for {model_data} did not start (exit {proc.returncode}); see "
                              f"{log.name}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise ClientError(f"the endpoint for {model_data} did not answer /ping in {START_TIMEOUT_S} s")
    _ENDPOINTS[endpoint_name] = (proc, url)
    return Predictor(endpoint_name, serializer=serializer, deserializer=deserializer)


class Predictor:
    """SageMaker's ``Predictor`` (v1 ``RealTimePredictor``) for an endpoint this interpreter started."""

    def __init__(self, endpoint_name: str, sagemaker_session: object = None, serializer: Any = None,
                 deserializer: Any = None, content_type: str | None = None, accept: str | None = None) -> None:
        if endpoint_name not in _ENDPOINTS:
            raise ClientError(f"no local endpoint named {endpoint_name!r} (running: "
                              f"{', '.join(_ENDPOINTS) or 'none'}); deploy() one first")
        self.endpoint_name = endpoint_name
        self.serializer = serializer or IdentitySerializer("application/x-image")
        self.deserializer = deserializer
        if content_type:
            self.content_type = content_type
        self.accept = accept

    @property
    def endpoint(self) -> str:
        return self.endpoint_name

    @property
    def content_type(self) -> str:
        """v1's settable attribute (``predictor.content_type = 'application/x-image'``)."""
        return self.serializer.CONTENT_TYPE

    @content_type.setter
    def content_type(self, value: str) -> None:
        self.serializer = IdentitySerializer(value)

    @property
    def url(self) -> str:
        proc, url = _ENDPOINTS.get(self.endpoint_name, (None, ""))
        if proc is None or proc.poll() is not None:
            raise ClientError(f"endpoint {self.endpoint_name!r} is not running (deleted, or its process ended)")
        return url

    def predict(self, data: Any, initial_args: dict[str, str] | None = None) -> Any:
        """POST ``data`` (serialized) to ``/invocations``; a refusal raises :class:`ModelError` with its message."""
        args = dict(initial_args or {})
        body = self.serializer.serialize(data)
        headers = {"Content-Type": args.get("ContentType", self.serializer.CONTENT_TYPE)}
        accept = args.get("Accept", self.accept or getattr(self.deserializer, "ACCEPT", None))
        if accept:
            headers["Accept"] = accept if isinstance(accept, str) else ", ".join(accept)
        if "CustomAttributes" in args:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = args["CustomAttributes"]
        request = urllib.request.Request(self.url + "/invocations", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                raw, answered = r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            raise ModelError(e.code, e.read().decode("utf-8", "replace")) from None
        return raw if self.deserializer is None else self.deserializer.deserialize(raw, answered)

    def delete_endpoint(self, delete_endpoint_config: bool = True) -> None:
        proc, _ = _ENDPOINTS.pop(self.endpoint_name, (None, ""))
        if proc is not None:
            _stop(proc)

    def delete_model(self) -> None:
        """Nothing to delete locally: the model is the artifact file, which stays."""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=35)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@atexit.register
def _stop_all() -> None:
    for name in list(_ENDPOINTS):
        _stop(_ENDPOINTS.pop(name)[0])
