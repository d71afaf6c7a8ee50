"""``sagemaker.predictor`` (v2 ``Predictor``; v1 ``RealTimePredictor`` is the same class)."""

from openic.sdk.predictor import Predictor

RealTimePredictor = Predictor

__all__ = ["Predictor", "RealTimePredictor"]
