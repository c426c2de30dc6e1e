# ToP's reproducibility image. Three targets (see docs/DOCKER.md for the GPU table):
#   exact   (last)     Python 3.8.8, torch 1.12.1 from PyPI (bundles CUDA 10.2): the paper's
#                      environment, for sm_37..sm_75 GPUs (K80, P100, V100, T4, RTX 20xx)
#   ampere             the same stack with torch 1.12.1+cu113 (adds sm_80/sm_86: A100, A10, RTX 30xx)
#   current            Python 3.11, torch 2.13.0 (PyPI, CUDA 13 wheels), transformers 4.57: H100/H200, L4, ...
# Every target carries Ray Tune for `top grid --backend ray` and the ray-head / ray-worker services:
# 2.10.0 on Python 3.8 (exact, ampere), 2.60.0 on 3.11 (current). A cluster's nodes must share one.
# A plain `docker build .` builds the last stage, exact (the paper's pinned image); docker-compose.yml
# defaults to current (TOP_IMAGE_TARGET), the one that runs on today's data-centre GPUs.
#     docker build -t top:exact .
#     docker build --target ampere -t top:ampere .
#     docker build --target current -t top:current .
#
# No `# syntax=` line: BuildKit's built-in Dockerfile frontend builds this file, so a build never
# pulls a frontend image (which a machine behind a registry mirror, or offline, cannot do).
#
# Base images are pinned by tag, and each is an ARG so that a registry mirror can stand in:
#     docker build --build-arg CUDA_DEVEL_IMAGE=mirror.example/nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04 ...
# To pin them by digest as well, look the digest up once,
#     docker buildx imagetools inspect nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04
# and pass it the same way: --build-arg CUDA_DEVEL_IMAGE=nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04@sha256:<digest>
# (the same for the -runtime- image and python:3.11.7-slim-bookworm). PYTHON_SOURCE_URL points the
# CPython source download at a mirror; the tarball's sha256 is checked whatever its source.
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:11.1.1-cudnn8-devel-ubuntu18.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:11.1.1-cudnn8-runtime-ubuntu18.04
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG PYTHON_SOURCE_URL=https://www.python.org/ftp/python

ARG PYTHON_VERSION=3.8.8
# sha256 of https://www.python.org/ftp/python/3.8.8/Python-3.8.8.tgz, as recorded by pyenv's
# python-build definition for 3.8.8. The build stops if the download does not match.
ARG PYTHON_SHA256=76c0763f048e4f9b861d24da76b7dd5c7a3ba7ec086f40caedeea359263276f7
# The paper's pins, checked against the installed packages at build time; they must equal
# requirements/pinned.txt and pinned-numpy.txt (tests/test_docker_static.py checks that).
# (DL3064 mistakes TOKENIZERS_VERSION for a token; it is a version number.)
ARG TORCH_VERSION=1.12.1
ARG TRANSFORMERS_VERSION=4.16.0
# hadolint ignore=DL3064
ARG TOKENIZERS_VERSION=0.12.1
ARG SCIPY_VERSION=1.7.3
ARG NUMPY_VERSION=1.24.4

############################################################################################
# Build stage: CPython 3.8.8 from the checksum-verified source tarball, then a virtualenv.
FROM ${CUDA_DEVEL_IMAGE} AS python-build
ARG PYTHON_VERSION
ARG PYTHON_SHA256
ARG PYTHON_SOURCE_URL
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu 18.04's archive is frozen, so its package versions no longer move.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential ca-certificates curl libbz2-dev libffi-dev libgdbm-dev liblzma-dev \
        libncursesw5-dev libreadline-dev libsqlite3-dev libssl-dev tk-dev uuid-dev xz-utils zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/python-src
RUN curl -fsSL -o python.tgz "${PYTHON_SOURCE_URL}/${PYTHON_VERSION}/Python-${PYTHON_VERSION}.tgz" \
    && echo "${PYTHON_SHA256}  python.tgz" | sha256sum -c - \
    && tar -xzf python.tgz --strip-components=1 \
    && ./configure --prefix=/opt/python --with-ensurepip=install \
    && make -j"$(nproc)" \
    && make install \
    && /opt/python/bin/python3.8 -c "import sys, ssl, sqlite3, bz2, lzma, ctypes; assert sys.version.split()[0] == '${PYTHON_VERSION}', sys.version" \
    && /opt/python/bin/python3.8 -m venv /opt/venv \
    && rm -rf /tmp/python-src
ENV PATH=/opt/venv/bin:/opt/python/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/top

############################################################################################
# Python packages of the paper's stack: the hash-locked file, then numpy 1.24.4 alone.
FROM python-build AS deps-exact
ARG TORCH_VERSION
ARG TRANSFORMERS_VERSION
# hadolint ignore=DL3064
ARG TOKENIZERS_VERSION
ARG SCIPY_VERSION
ARG NUMPY_VERSION
COPY requirements/pinned.txt requirements/pinned-numpy.txt requirements/pinned-ray.txt requirements/
# scipy 1.7.3's metadata caps numpy below 1.23, but the paper's environment ran numpy 1.24.4
# with it: pinned.txt resolves a 1.22.x, and pinned-numpy.txt replaces it with --no-deps.
# Between them, Ray 2.10.0 (the newest for Python 3.8, for `top grid --backend ray`), locked
# against pinned.txt so that it moves none of the paper's pins.
RUN pip install --require-hashes -r requirements/pinned.txt \
    && pip install --require-hashes -r requirements/pinned-ray.txt \
    && pip install --no-deps --require-hashes -r requirements/pinned-numpy.txt \
    && python -c "import torch, transformers, tokenizers, scipy, numpy; \
got = (torch.__version__.split('+')[0], transformers.__version__, tokenizers.__version__, scipy.__version__, numpy.__version__); \
want = ('${TORCH_VERSION}', '${TRANSFORMERS_VERSION}', '${TOKENIZERS_VERSION}', '${SCIPY_VERSION}', '${NUMPY_VERSION}'); \
assert got == want, (got, want)"

# The same with torch 1.12.1+cu113 from PyTorch's index in place of the PyPI (cu102) wheel.
FROM python-build AS deps-ampere
COPY requirements/pinned.txt requirements/pinned-numpy.txt requirements/pinned-ray.txt requirements/ampere.txt \
     requirements/
# pinned.txt without its torch entry (the requirement line and its --hash continuation lines).
RUN pip install --no-deps --require-hashes -r requirements/ampere.txt \
    && awk '/^torch==/ {skip = 1; next} skip && /^[[:space:]]/ {next} {skip = 0; print}' \
        requirements/pinned.txt > /tmp/pinned-without-torch.txt \
    && pip install --require-hashes -r /tmp/pinned-without-torch.txt \
    && pip install --require-hashes -r requirements/pinned-ray.txt \
    && pip install --no-deps --require-hashes -r requirements/pinned-numpy.txt \
    && python -c "import torch; assert torch.__version__ == '1.12.1+cu113', torch.__version__"

############################################################################################
# Runtime base: the CUDA 11.1 runtime, the interpreter's shared libraries, no compilers.
FROM ${CUDA_RUNTIME_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libbz2-1.0 libffi6 libgdbm5 liblzma5 libncursesw5 libreadline7 libsqlite3-0 \
        libssl1.1 libuuid1 zlib1g \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash top \
    && mkdir -p /data/glue /home/top/.cache/huggingface /opt/top/outputs \
    && chown -R top:top /data /home/top/.cache /opt/top
COPY --from=python-build /opt/python /opt/python
ENV PATH=/opt/venv/bin:/opt/python/bin:$PATH \
    PYTHONHASHSEED=0 \
    CUBLAS_WORKSPACE_CONFIG=:16:8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/top/.cache/huggingface \
    GLUE_DIR=/data/glue \
    TOP_HOME=/opt/top
VOLUME ["/home/top/.cache/huggingface"]
WORKDIR /opt/top
ENTRYPOINT ["/opt/top/docker/entrypoint.sh"]
CMD ["--help"]

############################################################################################
# GPU generation targets. The project goes in last, without dependencies or network access.
FROM runtime AS ampere
COPY --from=deps-ampere /opt/venv /opt/venv
COPY --chown=top:top . /opt/top
RUN pip install --no-deps --no-build-isolation /opt/top
USER 1000:1000

# Hopper (H100/H200) and newer: the current stack. torch's CUDA libraries come as wheels; the
# host's NVIDIA driver is all it needs.
FROM ${PYTHON_IMAGE} AS current
ENV PYTHONHASHSEED=0 \
    CUBLAS_WORKSPACE_CONFIG=:16:8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/top/.cache/huggingface \
    GLUE_DIR=/data/glue \
    TOP_HOME=/opt/top \
    PATH=/opt/venv/bin:$PATH
WORKDIR /opt/top
COPY requirements/current.txt requirements/
RUN useradd --create-home --uid 1000 --shell /bin/bash top \
    && mkdir -p /data/glue /home/top/.cache/huggingface /opt/top/outputs \
    && python -m venv /opt/venv \
    && pip install --require-hashes -r requirements/current.txt
COPY --chown=top:top . /opt/top
RUN pip install --no-deps --no-build-isolation /opt/top \
    && chown -R top:top /data /home/top/.cache /opt/top
VOLUME ["/home/top/.cache/huggingface"]
USER 1000:1000
ENTRYPOINT ["/opt/top/docker/entrypoint.sh"]
CMD ["--help"]

# The default target (last stage): the paper's exact environment.
FROM runtime AS exact
COPY --from=deps-exact /opt/venv /opt/venv
COPY --chown=top:top . /opt/top
RUN pip install --no-deps --no-build-isolation /opt/top
USER 1000:1000
