# syntax=docker/dockerfile:1.7
# medimg clinician app image: reads requirements.txt and the serve and models packages from the repository root
# (the build context); writes an image that runs `python -m serve.app` on port 8080 as a non-root user, serving
# $MEDIMG_MODEL_URI from $MLFLOW_TRACKING_URI. Built by `docker compose -f monitoring/docker-compose.yaml build`.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# requirements.txt is the one source of versions. All of it, not a list of the packages the model and the app
# import: a list here would fall behind when the model gains a decoder (a few hundred MB on a TensorFlow image).
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin medimg
COPY models/ /opt/medimg/models/
COPY serve/ /opt/medimg/serve/

USER 10001:10001
WORKDIR /opt/medimg
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"]

ENTRYPOINT ["python", "-m", "serve.app", "--host", "0.0.0.0", "--port", "8080"]
