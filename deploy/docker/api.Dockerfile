# syntax=docker/dockerfile:1
# finetune-platform/api: the REST API, and the MLflow tracking server, which runs from this image.
# What it installs is exactly deploy/requirements/api.txt plus the project (--no-deps): no PyTorch,
# transformers or PEFT. The model recommender's MiniLM embedder comes as an ONNX export made at build time.
#   docker build -f deploy/docker/api.Dockerfile -t finetune-platform/api .

FROM python:3.11.11-slim-bookworm AS builder
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY deploy/requirements/api.txt deploy/requirements/api.txt
RUN pip install --requirement deploy/requirements/api.txt
COPY pyproject.toml README.md ./
COPY src src
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/finetune_platform-*.whl

# Throwaway stage: PyTorch and the project's full dependencies, only to export the embedder to ONNX.
FROM builder AS embedder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}" \
    && pip install /wheels/finetune_platform-*.whl \
    && finetune models export-embedder --output /opt/embedder

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    FINETUNE_EMBEDDER_DIR=/opt/embedder
# /data (the volume shared with workers and inference), the MLflow artifact root and the folder of MLflow's
# user database are created here so that a fresh named volume mounted on them is owned by the unprivileged user.
RUN groupadd --system --gid 10001 finetune \
    && useradd --system --uid 10001 --gid finetune --no-log-init --create-home --home-dir /home/finetune finetune \
    && mkdir -p /data /mlflow/artifacts /mlflow/auth \
    && chown finetune:finetune /data /mlflow/artifacts /mlflow/auth
COPY --from=builder /opt/venv /opt/venv
COPY --from=embedder /opt/embedder /opt/embedder
WORKDIR /home/finetune
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["finetune"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
