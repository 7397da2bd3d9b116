# syntax=docker/dockerfile:1
# canarycast: one image for every process (serve, route, rollout, train, models).
#
#   docker build -t canarycast:0.1.0 .                    # with a seed registry (model "temps")
#   docker build --target runtime -t canarycast:0.1.0 .  # without: bring your own registry
#
# The image installs canarycast with its `server` extra (torch, pandas, scipy, ...): every
# process runs from it. A client alone needs only `pip install canarycast`.
# torch is pinned (pyproject.toml, the `server` extra) to a CPU build: point
# PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index when the default index would give a CUDA
# build for your platform.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment with canarycast and its dependencies ----------------
FROM ${PYTHON_IMAGE} AS builder
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
RUN python -m venv /opt/canarycast/venv
ENV PATH=/opt/canarycast/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so that a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p canarycast server router \
    && touch canarycast/__init__.py server/__init__.py router/__init__.py \
    && pip install '.[server]' && pip uninstall -y canarycast
COPY canarycast ./canarycast
COPY server ./server
COPY router ./router
COPY cli ./cli
RUN pip install --no-deps . && canarycast --version

# ---- runtime: slim, non-root, no compilers, no pip cache ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="canarycast" \
      org.opencontainers.image.description="LSTM time-series forecasts over gRPC, with canary rollouts judged on online error" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 canarycast \
    && useradd --system --uid 10001 --gid canarycast --home-dir /home/canarycast \
       --create-home --shell /usr/sbin/nologin canarycast
COPY --from=builder /opt/canarycast/venv /opt/canarycast/venv
ENV PATH=/opt/canarycast/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/canarycast \
    CANARYCAST_REGISTRY=/var/lib/canarycast/registry
WORKDIR /home/canarycast
USER 10001:10001
# gRPC (servers 50051, routers 50050), Prometheus /metrics, OTLP/gRPC receiver
EXPOSE 50050 50051 9100 9101 4317
ENTRYPOINT ["canarycast"]
CMD ["--help"]

# ---- seed: a registry trained on the bundled real data, baked into the image ------------
FROM runtime AS seed
RUN canarycast train --dataset seattle-temps --registry /opt/canarycast/registry \
        --name temps --alias stable --no-progress

FROM runtime AS bundled
COPY --from=seed --chown=10001:10001 /opt/canarycast/registry /opt/canarycast/registry
