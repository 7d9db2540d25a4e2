# syntax=docker/dockerfile:1
# finetune-platform/worker: a Celery worker that trains (PyTorch, transformers, PEFT) and serves its own
# /metrics. The CPU wheel of PyTorch by default; for the GPU pool pass a CUDA wheel index, e.g.
#   docker build -f deploy/docker/worker.Dockerfile -t finetune-platform/worker .
#   docker build -f deploy/docker/worker.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     -t finetune-platform/worker:cuda .

FROM python:3.11.11-slim-bookworm AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
# PyTorch first, from its own index, so that the project's `torch>=2.4` is already met by this build.
RUN python -m venv /opt/venv \
    && pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"
# The API's pinned list next, so the worker runs the same Celery, SQLAlchemy, MLflow and client versions as the
# API; the project then adds only what training needs on top (transformers, PEFT, datasets, ...).
COPY deploy/requirements/api.txt deploy/requirements/api.txt
RUN pip install --requirement deploy/requirements/api.txt
COPY pyproject.toml README.md ./
COPY src src
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install /wheels/finetune_platform-*.whl

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# /data is the volume shared with the API and inference: created here so a fresh volume is ours to write.
RUN groupadd --system --gid 10001 finetune \
    && useradd --system --uid 10001 --gid finetune --no-log-init --create-home --home-dir /home/finetune finetune \
    && mkdir -p /data \
    && chown finetune:finetune /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/finetune
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=4)"]
ENTRYPOINT ["finetune"]
CMD ["worker", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"]
