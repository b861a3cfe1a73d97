# medimg clinician app image: reads docker/serving/requirements.txt and the serve and models packages from the
# repository root (the build context); writes an image that runs `python -m serve.app` on port 8080 as a non-root user,
# serving $MEDIMG_MODEL_URI from $MLFLOW_TRACKING_URI. Built by `docker compose -f monitoring/docker-compose.yaml build`.
# The serving image of one version with no tracking server behind it is docker/serving/Dockerfile (`make serving-image`).
#
# No `# syntax=` line (BuildKit would pull that frontend from Docker Hub); the base is an argument, the pinned official
# image or a site's Debian-made base (`make base-image`, docs/CONTAINERS.md).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GIT_PYTHON_REFRESH=quiet \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The serving image's requirements (written from requirements.txt by `python -m serve.image --requirements`): what the
# model and the app import, no GPL decoder. The site's CA bundle and pip.conf are BuildKit secrets, never a layer.
COPY docker/serving/requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca_bundle \
    --mount=type=secret,id=pip_conf \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    python3 -m venv /opt/venv; \
    python -m pip install -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin medimg
COPY models/ /opt/medimg/models/
COPY serve/ /opt/medimg/serve/

USER 10001:10001
WORKDIR /opt/medimg
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"]

ENTRYPOINT ["python", "-m", "serve.app", "--host", "0.0.0.0", "--port", "8080"]
