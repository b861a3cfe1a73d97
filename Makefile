# medimg: the README's commands. `make setup` creates .venv; every other target uses it, from any shell
# (the venv need not be activated: targets put .venv/bin first on PATH, as `mlflow models serve` and
# `mlflow run --env-manager local` need).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
RUN := PATH="$(BIN):$$PATH"
# The tracking store of every target: MLFLOW_TRACKING_URI when set (e.g. by `eval "$$(make -s server)"`),
# else mlflow.db in this folder.
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_TRACKING_URI
# The model `make serve`, `make client` and `make serve-app` use, and the samples the client scores.
DEMO_MODEL ?= demo-classifier
MODEL_URI ?= models:/$(DEMO_MODEL)@champion
DEMO_EXPERIMENT ?= medimg-demo
PORT ?= 5001
UI_PORT ?= 5000
# The UI of the store in effect: a tracking server's own address, or the one `make ui` starts.
UI_URL = $(if $(filter http://% https://%,$(MLFLOW_TRACKING_URI)),$(MLFLOW_TRACKING_URI),http://127.0.0.1:$(UI_PORT))
SAMPLES := samples/cell.png samples/cell.jpg samples/cell.dcm

.PHONY: setup demo serve client ui test lint format

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-jax.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/jax -r requirements-jax.txt
	touch $@

# Train a small_cnn on synthetic cells through the eval-and-deploy pipeline (first run: version 1 becomes
# @champion), write sample inputs and score them through a temporarily served model.
demo: setup
	$(RUN) mlflow run . --env-manager local --experiment-name $(DEMO_EXPERIMENT) -e pipeline \
		-P registered_model=$(DEMO_MODEL) -P dataset=synthetic -P model=small_cnn -P image_size=64 -P epochs=3
	$(BIN)/python -m train.samples samples
	$(RUN) python -m serve.client --serve $(MODEL_URI) $(SAMPLES)
	@echo ""
	@echo "Demo finished (tracking store: $(MLFLOW_TRACKING_URI)). Next, from this folder:"
	@echo "  make ui        # the MLflow UI: runs, metrics, the registered model and its model card; then open"
	@$(BIN)/python -m train.tracking.experiments --ui $(UI_URL) --experiment $(DEMO_EXPERIMENT) | sed 's/^[^ ]* /                  /'
	@echo "  make serve     # serve $(MODEL_URI) over REST on port $(PORT)"
	@echo "  make client    # in a second shell: score $(SAMPLES) with the served model"
	@echo "  make serve-app # the clinician page on http://127.0.0.1:8080"

serve: setup
	$(RUN) mlflow models serve -m $(MODEL_URI) --env-manager local --port $(PORT)

client: setup
	$(RUN) python -m serve.client --url http://127.0.0.1:$(PORT) $(SAMPLES)

# A tracking server has its UI already; a sqlite store gets one here. Either way the links open each experiment's
# runs table in the model-training view.
ui: setup
	@echo "Runs of each experiment in the MLflow UI:"
	@$(BIN)/python -m train.tracking.experiments --ui $(UI_URL) || true
	@case "$(MLFLOW_TRACKING_URI)" in \
		http://*|https://*) ;; \
		*) $(RUN) mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --port $(UI_PORT);; \
	esac

# Three workers on two cores: most long tests wait on subprocesses (mlflow run, servers) part of the time.
# Files go out longest first (tests/conftest.py LONGEST_FIRST; --no-loadscope-reorder keeps xdist from
# reordering them by test count), and the 25 slowest tests are printed at the end.
test: setup
	$(RUN) python -m pytest -n 3 --dist loadfile --no-loadscope-reorder --durations=25 -m "not containers"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Images (docs/CONTAINERS.md): every Dockerfile takes these. BASE_IMAGE empty = the Dockerfile's pinned
# python:3.11.x-slim-bookworm; where Docker Hub cannot be reached, `make base-image` makes one from Debian packages
# and BASE_IMAGE=medimg-base:bookworm uses it. CA_BUNDLE (a PEM file) and PIP_CONF (a pip.conf naming the site's
# index and its credentials) reach pip as BuildKit secrets, never a layer. DOCKER_BUILD_FLAGS go to `docker build`
# (e.g. --network host). DOCKER is the client: it must do BuildKit builds (Debian's docker.io does).
DOCKER ?= docker
BASE_IMAGE ?=
CA_BUNDLE ?=
PIP_CONF ?=
JPEG_DECODER ?= gdcm
DOCKER_BUILD_FLAGS ?=
SITE_BASE_IMAGE ?= medimg-base:bookworm
SITE_CA ?=
comma := ,
BUILD := DOCKER_BUILDKIT=1 $(DOCKER) build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	$(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(abspath $(CA_BUNDLE))) \
	$(if $(PIP_CONF),--secret id=pip_conf$(comma)src=$(abspath $(PIP_CONF))) \
	--build-arg JPEG_DECODER=$(JPEG_DECODER) $(DOCKER_BUILD_FLAGS)
.PHONY: base-image server-image serving-image test-containers
# A Python 3.11 base from Debian bookworm packages (MIRROR= a site's Debian mirror), with SITE_CA's certificates.
base-image:
	DOCKER=$(DOCKER) docker/base-image.sh $(SITE_BASE_IMAGE) $(SITE_CA)

# The serving image of one registered version (SERVE_MODEL; docs/CONTAINERS.md): MLflow's scoring protocol, the
# clinician page and /metrics, non-root, no GPL package unless JPEG_DECODER=libjpeg. SERVING_TAG names it.
SERVING_TAG ?=
serving-image: setup
	$(RUN) python -m serve.image --model $(SERVE_MODEL) $(if $(SERVING_TAG),--tag $(SERVING_TAG)) --docker $(DOCKER) \
		--jpeg-decoder $(JPEG_DECODER) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) \
		$(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE)) $(if $(PIP_CONF),--pip-conf $(PIP_CONF)) \
		--build-flags "$(DOCKER_BUILD_FLAGS)"

# The tracking-server image of mlflow_server/docker-compose.yaml, built alone.
SERVER_IMAGE ?= medimg-mlflow-server:latest
server-image:
	$(BUILD) -f mlflow_server/Dockerfile -t $(SERVER_IMAGE) .

# The container tests (tests/test_containers.py): base, training, serving and tracking-server images built here,
# `mlflow run docker` against a PostgreSQL-backed server. Needs a Docker engine; `make test` leaves them out.
test-containers: setup
	$(RUN) python -m pytest -m containers tests/test_containers.py --durations=10

# GPU training in the NVIDIA Docker image (docs/GPU.md).
IMAGE := $(shell sed -n 's/^ *image: *//p' docker/MLproject)
VERSION := $(lastword $(subst :, ,$(IMAGE)))
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_URL ?= $(shell git remote get-url origin 2>/dev/null || echo unknown)
USER_UID ?= $(shell [ "$$(id -u)" = 0 ] && echo 1000 || id -u)
USER_GID ?= $(shell [ "$$(id -g)" = 0 ] && echo 1000 || id -g)
# GPUS=all, a device list (0,1), or empty for the CPU (the same image; TensorFlow falls back).
GPUS ?= all
SHM_SIZE ?= 8g
ARGS ?=
GPU_PASSTHROUGH := MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD MLFLOW_S3_ENDPOINT_URL \
	AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_DEFAULT_REGION \
	MEDIMG_INSTANCE_TYPE MEDIMG_HOURLY_PRICE_USD
.PHONY: image gpu-train
image:
	$(BUILD) -f docker/Dockerfile -t $(IMAGE) \
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
		$(if $(GPUS),$(if $(filter all,$(GPUS)),-A gpus=all,-A "gpus='\"device=$(GPUS)\"'")) \
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
SERVE_MODEL ?= models:/$(DEMO_MODEL)
SERVE_PORT ?= 8080
SERVE_ARGS ?=
.PHONY: serve-app
serve-app: setup
	$(RUN) python -m serve.app --model $(SERVE_MODEL) --port $(SERVE_PORT) $(SERVE_ARGS)

# The PACS worker (docs/PACS.md): watches a DICOMweb PACS (Orthanc's change feed by default) and stores a TID 1500 SR
# and a Secondary Capture overlay into each study it scores with PACS_MODEL. PACS credentials come from the
# environment (MEDIMG_PACS_USERNAME and MEDIMG_PACS_PASSWORD_FILE, or MEDIMG_PACS_TOKEN), never from here.
PACS_MODEL ?= $(MODEL_URI)
PACS_URL ?= http://127.0.0.1:8042/dicom-web
PACS_ARGS ?=
.PHONY: pacs
pacs: setup
	$(RUN) python -m serve.pacs --model $(PACS_MODEL) --dicomweb $(PACS_URL) $(PACS_ARGS)
