# openic as a SageMaker "bring your own algorithm" image: `docker run IMAGE train` and `docker run IMAGE serve`
# (docker/entrypoint.sh maps them; docs/container.md has the whole story).
#
#   CPU (default):  docker build -t openic:cpu .
#   GPU (CUDA):     docker build -t openic:gpu --build-arg TORCH_INDEX=https://pypi.org/simple .
#
# The GPU image needs no nvidia/cuda base: PyTorch's Linux wheels on PyPI bring their CUDA runtime, cuDNN and NCCL as
# pip packages, and only the driver comes from the host (the NVIDIA container runtime mounts it, as on SageMaker's
# GPU instances; the NVIDIA_* variables below ask it to). For an older host driver, pin a CUDA build instead:
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 (any CUDA index PyTorch publishes for the version).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# optional extras of pyproject.toml, comma-separated (e.g. "onnx" for `openic serve --backend onnx`)
ARG EXTRAS=

# unbuffered: log lines reach CloudWatch (and the metric regexes) as they are printed
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# torch first, from the chosen index, so `pip install .` finds it satisfied and never pulls another build
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/openic
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY docker/entrypoint.sh /usr/local/bin/openic-entrypoint
RUN pip install ".${EXTRAS:+[${EXTRAS}]}" \
    && chmod 755 /usr/local/bin/openic-entrypoint \
    && openic --help > /dev/null

# SageMaker's endpoint port (GET /ping, POST /invocations)
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/openic-entrypoint"]
