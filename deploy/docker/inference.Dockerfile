# syntax=docker/dockerfile:1
# finetune-platform/inference: `finetune serve`, one base model with many LoRA adapters behind /predict, on
# ONNX Runtime by default (SERVE_RUNTIME=torch needs the PyTorch this image also carries).
#   docker build -f deploy/docker/inference.Dockerfile -t finetune-platform/inference .

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
# The API's pinned list (ONNX Runtime, tokenizers, MLflow client, ...) next, then the project adds the rest.
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
# /data is the volume shared with the API and workers (the adapters this server loads live there).
RUN groupadd --system --gid 10001 finetune \
    && useradd --system --uid 10001 --gid finetune --no-log-init --create-home --home-dir /home/finetune finetune \
    && mkdir -p /data \
    && chown finetune:finetune /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/finetune
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["finetune"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
