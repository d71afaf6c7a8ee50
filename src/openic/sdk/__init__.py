"""The SageMaker-shaped SDK: ``Estimator`` → ``fit`` → ``deploy`` → ``Predictor.predict``, on this machine.

Layer 5: it drives the training job contract (:mod:`openic.train.job`, in a child process) and the server
(:mod:`openic.serving`, as an ``openic serve`` child); :mod:`openic.sagemaker` re-exports these under the names
SageMaker's own SDK uses, so the workshop's cells run with only their import lines changed.
"""

from __future__ import annotations

from openic.sdk.estimator import Estimator, TrainingJob, UnexpectedStatusException
from openic.sdk.inputs import TrainingInput, s3_input
from openic.sdk.model import Model
from openic.sdk.predictor import ModelError, Predictor

__all__ = ["Estimator", "Model", "ModelError", "Predictor", "TrainingInput", "TrainingJob", "UnexpectedStatusException",
           "s3_input"]
