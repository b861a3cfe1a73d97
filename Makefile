# medimg: the README's commands. `make setup` creates .venv; every other target uses it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# mlflow run --env-manager local starts `python -m train ...`: the venv must come first on PATH.
RUN := PATH="$(BIN):$$PATH"
TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: setup demo test lint format ui

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: setup
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(TRACKING_URI)} $(RUN) mlflow run . --env-manager local \
		--experiment-name medimg-demo \
		-P dataset=synthetic -P model=small_cnn -P epochs=3 -P register_as=demo-classifier
	@echo ""
	@echo "Demo finished. Look at the run and the registered model in the MLflow UI:"
	@echo "  $(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING_URI) --port 5000   # then open http://127.0.0.1:5000"
	@echo "Serve the newest registered version over REST:"
	@echo "  MLFLOW_TRACKING_URI=$(TRACKING_URI) $(VENV)/bin/mlflow models serve -m models:/demo-classifier/latest --env-manager local --port 5001"

test: setup
	$(RUN) python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: setup
	$(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) --port 5000

# GPU training in the NVIDIA Docker image (docs/GPU.md).
IMAGE := $(shell sed -n 's/^ *image: *//p' docker/MLproject)
VERSION := $(lastword $(subst :, ,$(IMAGE)))
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_URL ?= $(shell git remote get-url origin 2>/dev/null || echo unknown)
USER_UID ?= $(shell [ "$$(id -u)" = 0 ] && echo 1000 || id -u)
USER_GID ?= $(shell [ "$$(id -g)" = 0 ] && echo 1000 || id -g)
GPUS ?= all
SHM_SIZE ?= 8g
ARGS ?=
GPU_PASSTHROUGH := MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD MLFLOW_S3_ENDPOINT_URL \
	AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_DEFAULT_REGION \
	MEDIMG_INSTANCE_TYPE MEDIMG_HOURLY_PRICE_USD
.PHONY: image gpu-train
image:
	DOCKER_BUILDKIT=1 docker build -f docker/Dockerfile -t $(IMAGE) \
		--build-arg VERSION=$(VERSION) --build-arg IMAGE_TAG=$(IMAGE) \
		--build-arg GIT_COMMIT=$(GIT_COMMIT) --build-arg SOURCE_URL=$(SOURCE_URL) \
		--build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
		--build-arg USER_UID=$(USER_UID) --build-arg USER_GID=$(USER_GID) \
		.
gpu-train: setup
	@case "$$MLFLOW_TRACKING_URI" in http://*|https://*) ;; \
		*) echo "gpu-train logs to a tracking server: set MLFLOW_TRACKING_URI=http://HOST:5000 (docs/GPU.md)" >&2; exit 2;; esac
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || { echo "image $(IMAGE) not found: run 'make image' first" >&2; exit 2; }
	$(foreach name,$(GPU_PASSTHROUGH),$(name)="$${$(name)-}") $(RUN) mlflow run docker \
		$(if $(filter all,$(GPUS)),-A gpus=all,-A "gpus='\"device=$(GPUS)\"'") \
		-A network=host -A shm-size=$(SHM_SIZE) $(ARGS)

# Tracking server (docs/TRACKING_SERVER.md): `make server` needs no Docker; server-up/down use docker compose.
SERVER_DIR ?= .mlflow_server
SERVER_ARGS ?=
COMPOSE := docker compose -f mlflow_server/docker-compose.yaml
.PHONY: server server-status server-stop server-up server-down
server: setup
	$(BIN)/python -m mlflow_server up --data-dir $(SERVER_DIR) $(SERVER_ARGS)
server-status: setup
	$(BIN)/python -m mlflow_server status --data-dir $(SERVER_DIR)
server-stop: setup
	$(BIN)/python -m mlflow_server down --data-dir $(SERVER_DIR)
server-up:
	$(PYTHON) -m mlflow_server compose-init
	$(COMPOSE) up --build --detach --wait
server-down:
	$(COMPOSE) down

# The clinician page, JSON API and /metrics of one registered model (docs/APP.md). models:/NAME serves
# NAME@champion when that alias exists, else its latest version; `make demo` registers demo-classifier.
SERVE_MODEL ?= models:/demo-classifier
SERVE_PORT ?= 8080
SERVE_ARGS ?=
.PHONY: serve-app
serve-app: setup
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(TRACKING_URI)} $(BIN)/python -m serve.app \
		--model $(SERVE_MODEL) --port $(SERVE_PORT) $(SERVE_ARGS)
