"""SageMaker's ``Model``: deploy an existing artifact (openic's, or one SageMaker's own algorithm trained) locally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openic.errors import ClientError, shown
from openic.sdk.jobs import default_job_name


class Model:
    """``Model(image_uri, model_data, role).deploy(...)``: a ``model.tar.gz`` (path or ``s3://``) behind a local
    endpoint. SageMaker's MXNet-trained image-classification artifacts are served as they are (no conversion)."""

    def __init__(self, image_uri: str | None = None, model_data: str | Path | None = None, role: str | None = None,
                 sagemaker_session: Any = None, name: str | None = None, **kwargs: Any) -> None:
        if not isinstance(model_data, (str, Path)) or not str(model_data):
            raise ClientError(f"Model needs model_data: the model.tar.gz path or s3:// URI, got {shown(model_data)}")
        self.image_uri, self.model_data, self.role, self.name = image_uri, str(model_data), role, name
        self.sagemaker_session = sagemaker_session

    def deploy(self, initial_instance_count: int = 1, instance_type: str | None = None, serializer: Any = None,
               deserializer: Any = None, endpoint_name: str | None = None, **kwargs: Any) -> Any:
        """Check the artifact's listing and metadata (a foreign or malformed one fails here, naming the file), then
        serve it with ``openic serve``; weights that do not load stop the server, whose log the error names.
        SageMaker's other arguments (``env``, ``predictor_cls``, ...) are accepted and have no effect here."""
        from openic.artifacts.model import read_model_metadata
        from openic.sdk.predictor import check_deploy, start_endpoint
        from openic.storage.local import local_path

        check_deploy(initial_instance_count, instance_type)
        path = local_path(self.model_data)
        read_model_metadata(path)
        name = endpoint_name or self.name or default_job_name("image-classification-model")
        return start_endpoint(str(path), name, serializer, deserializer, **kwargs)
