# syntax=docker/dockerfile:1
# finetune-platform/ui: the Streamlit web UI. It talks to the API over HTTP only, so it installs exactly
# deploy/requirements/ui.txt plus the project (--no-deps): no PyTorch, no database drivers.
#   docker build -f deploy/docker/ui.Dockerfile -t finetune-platform/ui .

FROM python:3.11.11-slim-bookworm AS builder
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY deploy/requirements/ui.txt deploy/requirements/ui.txt
RUN pip install --requirement deploy/requirements/ui.txt
COPY pyproject.toml README.md ./
COPY src src
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/finetune_platform-*.whl

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 finetune \
    && useradd --system --uid 10001 --gid finetune --no-log-init --create-home --home-dir /home/finetune finetune
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/finetune
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
ENTRYPOINT ["finetune"]
CMD ["ui", "--host", "0.0.0.0", "--port", "8501", "--api-url", "http://api:8000"]
