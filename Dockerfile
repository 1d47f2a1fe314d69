# syntax=docker/dockerfile:1
#
# elmo-dist GPU image: Ray + a CUDA build of torch + the elmo-dist package and its job scripts.
# One image serves the Ray head, the GPU workers, the KubeRay submitter pod and the cluster launcher.
#
#   docker build -t ghcr.io/OWNER/elmo-dist:0.1.0 .
#   docker run --rm ghcr.io/OWNER/elmo-dist:0.1.0                       # prints `elmo-dist --help`
#   docker run --rm --gpus all ghcr.io/OWNER/elmo-dist:0.1.0 elmo-dist embed ...
#
# Base image. rayproject/ray tags read {ray version}-{pyXY}-{platform}, where platform is `cpu`,
# `cuXYZ` (built FROM nvidia/cuda X.Y.Z) or `gpu`. `gpu` is only an alias for one default CUDA
# build, and that default has lagged (it still pointed at CUDA 12.1 in recent 2.x releases), so
# we name the CUDA variant explicitly: 2.60.0-py311-cu128 = Ray 2.60.0, Python 3.11, CUDA 12.8.
# The torch wheel below is the matching cu128 build. (torch's CUDA wheels carry their own CUDA
# runtime, so what must match the nodes is the NVIDIA driver: CUDA 12.8 wants driver >= 570, or
# >= 525 with CUDA minor-version compatibility.)
#
# RAY_VERSION and TORCH_VERSION must equal the pins CI tests with (`ray[data]==` and `torch==` in
# .ci/run); tests/infra/test_manifests.py checks that, and that KubeRay's rayVersion matches.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG CUDA_TAG=cu128
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}

ARG RAY_VERSION
ARG PYTHON_TAG
ARG CUDA_TAG
ARG TORCH_VERSION=2.13.0
# PyTorch wheel index of the base image's CUDA: https://download.pytorch.org/whl/${TORCH_CUDA}
ARG TORCH_CUDA=${CUDA_TAG}
ARG ELMO_DIST_VERSION=0.1.0

LABEL org.opencontainers.image.title="elmo-dist" \
      org.opencontainers.image.description="Distributed ELMo (AllenNLP biLM) corpus embeddings on Ray, CUDA build" \
      org.opencontainers.image.version="${ELMO_DIST_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/OWNER/elmo-dist" \
      org.opencontainers.image.base.name="docker.io/rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# /app holds the package source and the Ray job scripts (/app/jobs/*.py), owned by the image's
# non-root user `ray` (uid 1000, group users = 100) that rayproject/ray images run as. USER is
# numeric so that Kubernetes' runAsNonRoot can verify it without a runAsUser.
USER 0
RUN mkdir -p /app && chown 1000:100 /app
USER 1000:100
WORKDIR /app

# CUDA torch first: the biggest layer, and it changes only when the pin does. Only the PyTorch
# index is used so that pip cannot pick the PyPI wheel (built for a different CUDA).
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
        "torch==${TORCH_VERSION}"

# Only what the package build needs, plus the job scripts.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 elmo_dist/ ./elmo_dist/
COPY --chown=1000:100 jobs/ ./jobs/

# The constraints keep pip from replacing the image's Ray or the CUDA torch while it resolves the
# package's (deliberately loose) dependencies. boto3 comes in through s3fs's extra so that its
# botocore matches the one aiobotocore (s3fs) accepts; the cluster launcher's head needs it.
RUN printf 'ray==%s\ntorch==%s\n' "${RAY_VERSION}" "${TORCH_VERSION}" > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt . "s3fs[boto3]" \
    && rm -rf /tmp/constraints.txt build ./*.egg-info \
    && python -c "import ray, torch, elmo_dist; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__" \
    && elmo-dist --help > /dev/null

# No ENTRYPOINT on purpose: KubeRay replaces the container command with
# `/bin/bash -lc -- "ulimit -n 65536; ray start ..."` (and `ray job submit ...` in the submitter),
# and the Ray cluster launcher starts containers as `docker run ... IMAGE bash`; an ENTRYPOINT of
# `elmo-dist` would turn the latter into `elmo-dist bash`. A plain CMD keeps `docker run IMAGE`
# printing the CLI help and `docker run IMAGE elmo-dist embed ...` working.
CMD ["elmo-dist", "--help"]
