"""openic: SageMaker's built-in Image Classification algorithm on PyTorch, run locally."""

__version__ = "0.1.0"
