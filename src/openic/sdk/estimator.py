"""``Estimator``: SageMaker's training verbs on this machine.

``fit`` runs a training job, named as SageMaker names them, in a child process through the same job contract as
``openic train`` (:mod:`openic.sdk.runner` → :func:`openic.train.job.run_job`), streams its log and writes
``OUTPUT_PATH/JOB/output/model.tar.gz``. ``deploy`` serves the artifact with a real ``openic serve`` child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from openic.errors import ClientError, shown
from openic.hyperparams import HyperParameters
from openic.sdk import jobs
from openic.sdk.inputs import TrainingInput, as_inputs
from openic.sdk.instances import check_gpu_hosts, device_for
from openic.sdk.runner import local_output
from openic.storage import is_s3, parse_s3_uri
from openic.train.job import train_config

# SDK v1 spelling -> v2 (the workshop's notebooks use the v1 names)
V1_NAMES = {"train_instance_count": "instance_count", "train_instance_type": "instance_type",
            "train_volume_size": "volume_size", "train_max_run": "max_run", "image_name": "image_uri",
            "train_use_spot_instances": "use_spot_instances", "train_max_wait": "max_wait",
            "train_volume_kms_key": "volume_kms_key"}
ACCEPTED = ("image_uri", "role", "instance_count", "instance_type", "volume_size", "max_run", "input_mode",
            "output_path", "hyperparameters", "sagemaker_session", "base_job_name", "use_spot_instances", "max_wait",
            "volume_kms_key", "tags", "environment", "checkpoint_s3_uri", "enable_network_isolation", "subnets",
            "security_group_ids", "metric_definitions", "output_kms_key", "model_uri",
            "run_options")


class UnexpectedStatusException(ClientError):
    """A job ended other than Completed (SageMaker's exception name); the message holds its FailureReason."""


MAX_LOCAL_INSTANCES = 16  # instances are processes on this machine: more would only share the same cores


class Estimator:
    """SageMaker's ``Estimator`` for the image-classification algorithm (v2 names; v1 names warn and work)."""

    def __init__(self, image_uri: str | None = None, role: str | None = None, instance_count: int = 1,
                 instance_type: str = "local", output_path: str | Path | None = None,
                 hyperparameters: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for old, new in V1_NAMES.items():
            if old in kwargs:
                warnings.warn(f"{old} is SageMaker SDK v1's name; use {new}", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        unknown = sorted(set(kwargs) - set(ACCEPTED))
        if unknown:
            raise ClientError(f"Estimator got unknown argument(s) {', '.join(unknown)}; accepted: "
                              f"{', '.join(ACCEPTED + tuple(V1_NAMES))}")
        image_uri = kwargs.pop("image_uri", image_uri)
        self.input_mode = kwargs.pop("input_mode", None) or "File"
        if self.input_mode not in ("File", "FastFile", "Pipe"):
            raise ClientError(f"input_mode {shown(self.input_mode)} is not valid; expected File, FastFile or Pipe")
        instance_count = kwargs.pop("instance_count", instance_count)
        instance_type = kwargs.pop("instance_type", instance_type)
        if isinstance(instance_count, bool) or not isinstance(instance_count, int) or \
                not 1 <= instance_count <= MAX_LOCAL_INSTANCES:
            raise ClientError(f"instance_count {shown(instance_count)} is not valid: expected an integer from 1 to "
                              f"{MAX_LOCAL_INSTANCES} (each instance is a training process on this machine; for "
                              "several machines use openic train --nnodes, docs/distributed.md)")
        if image_uri is not None and "image-classification" not in str(image_uri):
            raise ClientError(f"image_uri {shown(image_uri)} is not SageMaker's image-classification algorithm, the "
                              "only one openic runs (image_uris.retrieve('image-classification', region))")
        self.device = device_for(instance_type)  # refuses an unknown type before any work
        self.image_uri, self.role, self.instance_type, self.instance_count = image_uri, role, instance_type, \
            instance_count
        if output_path is not None and is_s3(output_path):
            parse_s3_uri(output_path)  # a malformed URI fails here, before any work
            self.output_path: Path | str = str(output_path).rstrip("/")
        else:
            self.output_path = Path(output_path).resolve() if output_path else jobs.openic_home() / "output"
        self.checkpoint_s3_uri = kwargs.pop("checkpoint_s3_uri", None)
        if self.checkpoint_s3_uri is not None:
            parse_s3_uri(self.checkpoint_s3_uri)
        self.base_job_name = kwargs.pop("base_job_name", None) or jobs.BASE_JOB_NAME
        self.max_run = int(kwargs.pop("max_run", 24 * 3600))
        self.model_uri = kwargs.pop("model_uri", None)
        self.sagemaker_session = kwargs.pop("sagemaker_session", None)
        # openic's own: TrainConfig fields (seed, log_every, threads, ...), as `openic train` flags set them
        self.run_options = dict(kwargs.pop("run_options", None) or {})
        self.options = kwargs  # accepted for compatibility; they change nothing on one machine
        self._hyperparameters: dict[str, str] = {}
        self.latest_training_job: TrainingJob | None = None
        if hyperparameters:
            self.set_hyperparameters(**hyperparameters)

    def set_hyperparameters(self, **kwargs: Any) -> None:
        """Validated at once by the same schema as ``openic train`` (unknown names and bad values)."""
        self._hyperparameters |= HyperParameters.check_partial(kwargs)

    def hyperparameters(self) -> dict[str, str]:
        return dict(self._hyperparameters)

    def fit(self, inputs: Any = None, wait: bool = True, logs: bool | str = True, job_name: str | None = None,
            **ignored: Any) -> None:
        """Run a training job; with ``wait``, return once it ends and raise with its reason if it failed."""
        channels = as_inputs(inputs)
        if self.model_uri and "model" not in channels:
            channels["model"] = TrainingInput(self.model_uri)
        HyperParameters.from_strings(self._hyperparameters)  # the whole set, before any work
        name = jobs.check_job_name(job_name or jobs.default_job_name(self.base_job_name))
        out = f"{self.output_path}/{name}/output" if isinstance(self.output_path, str) else \
            self.output_path / name / "output"
        run_options: dict[str, Any] = {"device": self.device, **self.run_options}
        check_gpu_hosts(str(run_options["device"]), self.instance_count, self.instance_type)
        if self.checkpoint_s3_uri is not None:  # SageMaker's spot-resume location: mirrored after every epoch
            run_options.setdefault("checkpoint_dir", self.checkpoint_s3_uri)
        if channels["train"].label_format:
            run_options["label_format"] = channels["train"].label_format
        # unknown or out-of-range options, before any work (S3 locations are staged by the job itself)
        train_config({**run_options, "output_dir": Path("."), "checkpoint_dir": None})
        modes = {k: v.input_mode or self.input_mode for k, v in channels.items() if k in ("train", "validation")}
        for k, mode in modes.items():
            if mode == "Pipe" and not is_s3(channels[k].s3_data):
                raise ClientError(f"{k} channel: Pipe mode reads s3:// RecordIO; {channels[k].s3_data} is a local "
                                  "path (File mode reads it as it is)")
        sharded = sorted(k for k, v in channels.items() if v.distribution == "ShardedByS3Key")
        if sharded and self.instance_count > 1:
            raise ClientError(f"channel(s) {', '.join(sharded)}: ShardedByS3Key with instance_count="
                              f"{self.instance_count}: the local hosts share one copy of each channel, so there is "
                              "no per-host part to give them; use FullyReplicated (openic splits each epoch over "
                              "the ranks itself)")
        spec = {"job_name": name, "output_dir": str(out), "hyperparameters": self._hyperparameters,
                "channels": {k: v.s3_data for k, v in channels.items()}, "run_options": run_options, "mlflow": True,
                "input_modes": modes,
                "instance_count": self.instance_count}
        jobs.create_job({"TrainingJobName": name, "TrainingJobStatus": "InProgress", "CreationTime": jobs.now(),
                         "HyperParameters": self._hyperparameters, "AlgorithmSpecification": {
                             "TrainingImage": self.image_uri or "openic", "TrainingInputMode": self.input_mode},
                         "InputDataConfig": [{"ChannelName": k, "DataSource": v.s3_data,
                                              "ContentType": v.content_type} for k, v in channels.items()],
                         "OutputDataConfig": {"S3OutputPath": str(self.output_path)},
                         "ResourceConfig": {"InstanceType": self.instance_type,
                                            "InstanceCount": self.instance_count},
                         "StoppingCondition": {"MaxRuntimeInSeconds": self.max_run},
                         "OutputDir": str(local_output(spec)), "LogFile": str(jobs.job_dir(name) / "train.log")})
        self.latest_training_job = TrainingJob.start(name, spec)
        if wait:
            self.latest_training_job.wait(logs=bool(logs))

    @property
    def model_data(self) -> str:
        if self.latest_training_job is None:
            raise ClientError("no training job yet: call fit() first (or Estimator.attach(job_name))")
        d = self.latest_training_job.describe()
        if "ModelArtifacts" not in d:
            why = f" ({d['FailureReason'].splitlines()[0]})" if d.get("FailureReason") else ""
            raise ClientError(f"training job {d['TrainingJobName']} is {d['TrainingJobStatus']}: it has no model "
                              f"artifact{why}")
        return d["ModelArtifacts"]["S3ModelArtifacts"]

    @classmethod
    def attach(cls, training_job_name: str, sagemaker_session: object = None) -> Estimator:
        """Reopen an earlier job by name (its hyperparameters, its artifact, its status)."""
        d = jobs.load_job(training_job_name)
        est = cls(instance_type=d.get("ResourceConfig", {}).get("InstanceType", "local"),
                  output_path=d.get("OutputDataConfig", {}).get("S3OutputPath"))
        est._hyperparameters = dict(d.get("HyperParameters", {}))
        est.latest_training_job = TrainingJob(training_job_name)
        return est

    def logs(self) -> None:
        if self.latest_training_job is not None:
            self.latest_training_job.wait(logs=True)

    def deploy(self, initial_instance_count: int = 1, instance_type: str | None = None, serializer: Any = None,
               deserializer: Any = None, endpoint_name: str | None = None, **kwargs: Any) -> Any:
        """Serve the trained model with a real ``openic serve`` child on a free local port."""
        from openic.sdk.predictor import check_deploy, start_endpoint

        if self.latest_training_job is None:
            raise ClientError("deploy() needs a trained model: call fit() first (or Estimator.attach(job_name))")
        check_deploy(initial_instance_count, instance_type)
        return start_endpoint(self.model_data, endpoint_name or self.latest_training_job.name, serializer,
                              deserializer, **kwargs)


class TrainingJob:
    """A job in the store; ``wait`` follows its log until it ends."""

    def __init__(self, name: str, proc: subprocess.Popen | None = None) -> None:
        self.name, self.job_name, self.proc = name, name, proc

    @classmethod
    def start(cls, name: str, spec: dict[str, Any]) -> TrainingJob:
        local_output(spec).mkdir(parents=True, exist_ok=True)
        spec_path = jobs.job_dir(name) / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        log_path = jobs.job_dir(name) / "train.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "openic.sdk.runner", str(spec_path)], stdout=log_file,
                                    stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                    start_new_session=True)
        jobs.update_job(name, Pid=proc.pid)
        return cls(name, proc)

    def describe(self) -> dict[str, Any]:
        code = self.proc.poll() if self.proc is not None else None  # reaps a finished child
        d = jobs.load_job(self.name, refresh=code is None)
        if code is not None and d["TrainingJobStatus"] == "InProgress":  # it died without reporting
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            d = jobs.update_job(self.name, TrainingJobStatus="Failed", TrainingEndTime=jobs.now(),
                                FailureReason=f"AlgorithmError: the training process {how} before reporting a "
                                              "result (out of memory, or stopped from outside)")
        return d

    def wait(self, logs: bool = True, poll: float = 0.2) -> dict[str, Any]:
        """Block until the job ends, printing its log lines as they come; raise if it failed."""
        log_path = jobs.job_dir(self.name) / "train.log"
        position = 0
        while True:
            finished = self.proc.poll() is not None if self.proc is not None else \
                self.describe()["TrainingJobStatus"] != "InProgress"
            if logs and log_path.exists():
                with open(log_path, "rb") as f:
                    f.seek(position)
                    chunk = f.read()
                    position += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
            if finished:
                break
            time.sleep(poll)
        d = self.describe()
        if d["TrainingJobStatus"] != "Completed":
            reason = d.get("FailureReason") or f"the job ended {d['TrainingJobStatus']}"
            raise UnexpectedStatusException(f"Error for Training job {self.name}: {d['TrainingJobStatus']}. "
                                            f"Reason: {reason}")
        return d
