# syntax=docker/dockerfile:1
# The trainscope image: `trainscope operator`, `trainscope api`, `trainscope db upgrade`.
#   docker build -t ghcr.io/trainscope/trainscope:0.1.0 .
# Two stages: the build stage installs the package and its runtime dependencies into a virtualenv, with the parquet
# extra (the W&B source reads W&B's history export for long catch-ups) and no other (no embedded PostgreSQL, no test
# tools); the final stage copies only that virtualenv onto the same slim base.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/trainscope
WORKDIR /src
# Only what the package is built from (package-dir in pyproject.toml); tests, docs and benchmarks stay out.
COPY pyproject.toml README.md ./
COPY trainscope/ trainscope/
COPY collector/ collector/
COPY operator/ operator/
COPY api/ api/
RUN /opt/trainscope/bin/pip install '.[parquet]' \
    && /opt/trainscope/bin/trainscope --version

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/trainscope/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed non-root uid/gid (the chart's podSecurityContext uses the same), no login shell, no home to write to:
# the root filesystem is mounted read-only in the cluster.
RUN groupadd --system --gid 65532 trainscope \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin trainscope
COPY --from=build /opt/trainscope /opt/trainscope
USER 65532:65532
WORKDIR /tmp
# 9090: Prometheus /metrics of the operator; 8081: kopf liveness; 8080: the REST API.
EXPOSE 9090 8081 8080
ENTRYPOINT ["trainscope"]
CMD ["operator"]
