"""``sagemaker.image_uris.retrieve``: the algorithm's image name (openic runs it locally, not from ECR)."""

from __future__ import annotations

from openic.errors import ClientError, shown

ALGORITHM = "image-classification"
ACCOUNT = "811284229777"  # the account SageMaker's us-east-1 image-classification images live in


def retrieve(framework: str = ALGORITHM, region: str | None = None, version: str | None = "1",
             **ignored: object) -> str:
    """The URI SageMaker would give; openic accepts it (or any URI naming image-classification) in ``Estimator``."""
    if framework != ALGORITHM:
        raise ClientError(f"openic implements only the {ALGORITHM!r} algorithm, got framework {shown(framework)}")
    from openic.sagemaker.session import default_region

    region = region or default_region()
    return f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{ALGORITHM}:{version or 'latest'}"
