"""SageMaker's Python SDK names, backed by openic, so the workshop's cells run with only their imports changed.

``import sagemaker`` → ``from openic import sagemaker``; ``from sagemaker.x import y`` →
``from openic.sagemaker.x import y``. Covered: ``Session`` (region, ``default_bucket``, ``upload_data``),
``get_execution_role``, ``estimator.Estimator``, ``session.s3_input``, ``inputs.TrainingInput``,
``amazon.amazon_estimator.get_image_uri``, ``image_uris.retrieve``, ``predictor.Predictor``/``RealTimePredictor``,
``serializers``/``deserializers``, ``model.Model`` (deploy an existing artifact).
"""

from __future__ import annotations

from openic.sagemaker import amazon, deserializers, estimator, image_uris, inputs, predictor, serializers, session
from openic.sagemaker import model as model
from openic.sagemaker.session import Session, get_execution_role, s3_input
from openic.sdk import Estimator, Model, Predictor, TrainingInput

__all__ = ["Estimator", "Model", "Predictor", "Session", "TrainingInput", "amazon", "deserializers", "estimator",
           "get_execution_role", "image_uris", "inputs", "predictor", "s3_input", "serializers", "session"]
