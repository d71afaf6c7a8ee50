"""``sagemaker.amazon.amazon_estimator.get_image_uri`` (SDK v1)."""

from __future__ import annotations

from openic.sagemaker.image_uris import retrieve


def get_image_uri(region_name: str, repo_name: str, repo_version: str = "1") -> str:
    return retrieve(repo_name, region_name, repo_version)


__all__ = ["get_image_uri"]
