"""The images for real (`make test-containers`, not `make test`): a base made from Debian packages, the training image
trained in with `mlflow run docker` against a PostgreSQL-backed server, the serving image of the version it registered,
and the tracking-server image; each built here with the README's make targets and no access to Docker Hub."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from dicom_files import image_dataset, radiograph, write_variant
from serving_helpers import invoke, split_body

from serve.common import free_port

# Image builds on an empty engine take minutes each, within the setup of the first test that needs them.
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("DOCKER") or shutil.which("docker") or "docker"
BASE_IMAGE = "medimg-base:bookworm"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REGISTERED = "containers-trained"
SERVING_TAG = "medimg-serve-containers-test:1"
TRAINING_IMAGE = "medimg-train:0.1.0"
SERVER_IMAGE = "medimg-mlflow-server:containers-test"
# One build or one training may take this long on a 2-core machine with an empty engine.
BUILD_TIMEOUT = 1800


def docker(*arguments: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([DOCKER, *arguments], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(arguments[:3])}: {result.stderr[-2000:]}"
    return result


def make(*arguments: str, environment: dict | None = None) -> subprocess.CompletedProcess:
    """A make target of the README, its output kept for the assertion message."""
    result = subprocess.run(
        ["make", "--no-print-directory", *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, **(environment or {})},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, f"make {arguments[0]}:\n{(result.stdout + result.stderr)[-4000:]}"
    return result


@pytest.fixture(scope="module")
def engine() -> str:
    """A Docker engine that answers; without one the tests skip, or fail where CI should have started it."""
    result = subprocess.run([DOCKER, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if result.returncode != 0:
        message = f"no Docker engine answers to {DOCKER}: {result.stderr.strip()[:200]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def site(engine, tmp_path_factory) -> dict:
    """The make variables of a site with no Docker Hub: the Debian-made base, pip's CA bundle and a pip.conf as
    secrets (the pip.conf carries a canary that must never reach an image), builds on the host network."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        make("base-image", f"DOCKER={DOCKER}", f"SITE_BASE_IMAGE={BASE_IMAGE}", f"SITE_CA={SYSTEM_CA_BUNDLE}")
    canary = f"medimg-canary-{uuid.uuid4().hex}"
    pip_conf = tmp_path_factory.mktemp("site") / "pip.conf"
    pip_conf.write_text(f"[global]\n# {canary}\ntimeout = 120\n")
    variables = {
        "DOCKER": DOCKER,
        "BASE_IMAGE": BASE_IMAGE,
        "CA_BUNDLE": str(SYSTEM_CA_BUNDLE),
        "PIP_CONF": str(pip_conf),
        "DOCKER_BUILD_FLAGS": "--network host",
    }
    return {"variables": variables, "canary": canary}


def make_arguments(site: dict) -> list[str]:
    return [f"{name}={value}" for name, value in site["variables"].items()]


@pytest.fixture(scope="module")
def tracking_server(engine):
    """`python -m mlflow_server up`: PostgreSQL and `mlflow server` on this machine, reachable from host-network
    containers."""
    # PostgreSQL runs as the postgres user, which must reach the folder (pytest's temporary root is private).
    data_dir = Path(tempfile.mkdtemp(prefix="medimg-containers-"))
    data_dir.chmod(0o755)
    command = [sys.executable, "-m", "mlflow_server"]
    started = subprocess.run(
        [*command, "up", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert started.returncode == 0, started.stderr[-2000:]
    state = json.loads((data_dir / "state.json").read_text())
    yield {"uri": f"http://127.0.0.1:{state['port']}", "postgres_port": state["postgres_port"], "dir": data_dir}
    subprocess.run([*command, "down", "--data-dir", str(data_dir)], capture_output=True, timeout=120, cwd=REPO_ROOT)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_training(site, tracking_server) -> dict:
    """`make image`, then `make gpu-train GPUS=` (mlflow run docker on the CPU) registering version 1."""
    make("image", *make_arguments(site))
    arguments = "-P dataset=synthetic -P epochs=2 -P image_size=32 -P max_examples=300"
    result = make(
        "gpu-train",
        "GPUS=",
        f"ARGS={arguments} -P register_as={REGISTERED}",
        environment={"MLFLOW_TRACKING_URI": tracking_server["uri"]},
    )
    return {"output": result.stdout + result.stderr}


def test_mlflow_run_docker_trains_in_the_image_as_non_root_and_records_the_image(docker_training, tracking_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_server["uri"])
    version = client.get_model_version(REGISTERED, "1")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    image_id = docker("image", "inspect", "--format", "{{.Id}}", TRAINING_IMAGE).stdout.strip()
    assert run.data.tags["mlflow.docker.image.uri"] == TRAINING_IMAGE
    assert run.data.tags["mlflow.docker.image.id"] == image_id.strip()
    assert run.data.tags["hardware.image_tag"] == TRAINING_IMAGE
    assert run.data.tags["hardware.device"] == "cpu" and run.data.metrics["epochs_run"] == 2
    # The image's user: numeric, not root; MLflow's "Failed to import Git" block is quiet in the container.
    assert docker("image", "inspect", "--format", "{{.Config.User}}", TRAINING_IMAGE).stdout.strip() == "1000:1000"
    assert docker("run", "--rm", "--network", "host", TRAINING_IMAGE, "id", "-u").stdout.strip() == "1000"
    assert "Failed to import Git" not in docker_training["output"]
    # pyspark stays out of the training image; the GPL decoder too, unless JPEG_DECODER=libjpeg.
    listed = docker("run", "--rm", "--network", "host", TRAINING_IMAGE, "python", "-m", "pip", "list").stdout.lower()
    assert "pyspark" not in listed and "pylibjpeg-libjpeg" not in listed and "python-gdcm" in listed


# The serving image of the version trained above.


def sample_files(folder: Path) -> dict[str, bytes]:
    """The demo's PNG, JPEG and DICOM, and a JPEG Lossless DICOM radiograph that only GDCM decodes in the image."""
    subprocess.run([sys.executable, "-m", "train.samples", str(folder)], check=True, cwd=REPO_ROOT, timeout=120)
    files = {name: (folder / name).read_bytes() for name in ("cell.png", "cell.jpg", "cell.dcm")}
    lossless = write_variant(image_dataset(radiograph()), folder / "lossless.dcm", "1.2.840.10008.1.2.4.70")
    files["lossless.dcm"] = lossless.read_bytes()
    return files


@pytest.fixture(scope="module")
def serving_container(site, docker_training, tracking_server, tmp_path_factory):
    """`make serving-image` of version 1 from the PostgreSQL-backed registry, run with a 2 s health interval."""
    make(
        "serving-image",
        f"SERVE_MODEL=models:/{REGISTERED}/1",
        f"SERVING_TAG={SERVING_TAG}",
        *make_arguments(site),
        environment={"MLFLOW_TRACKING_URI": tracking_server["uri"]},
    )
    port, name = free_port(), f"medimg-test-serving-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "--detach", "--name", name, "--network", "host", "--env", f"MEDIMG_PORT={port}",
        "--health-interval", "2s", "--health-start-period", "120s", SERVING_TAG,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, name)
        yield {"url": url, "name": name, "samples": sample_files(tmp_path_factory.mktemp("samples"))}
    finally:
        docker("rm", "--force", name, check=False)


def wait_until_ready(url: str, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
            break
        time.sleep(1)
    pytest.fail(f"the serving container did not answer /ping: {docker('logs', name, check=False).stderr[-3000:]}")


def in_process_answers(tracking_uri: str, images: list[bytes]) -> list[dict]:
    """What the same version answers loaded in this process (pyfunc predict), as records."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1")
    finally:
        mlflow.set_tracking_uri(None)
    frame = pd.DataFrame({"image": [base64.b64encode(image).decode("ascii") for image in images]})
    return model.predict(frame).to_dict(orient="records")


def assert_same_answers(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected)
    for row, reference in zip(served, expected, strict=True):
        assert set(row) == set(reference)
        for column, value in reference.items():
            if isinstance(value, float) and not np.isnan(value):
                assert abs(row[column] - value) <= 1e-6, column
            elif not (isinstance(value, float) and np.isnan(value)):
                assert row[column] == value, column


def test_serving_container_answers_png_jpeg_and_dicom_as_the_model_does_in_process(serving_container, tracking_server):
    samples = serving_container["samples"]
    images = list(samples.values())
    body = split_body([base64.b64encode(image).decode("ascii") for image in images])
    response = invoke(serving_container["url"], body)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert_same_answers(served, in_process_answers(tracking_server["uri"], images))
    # The page's route answers with the same numbers and names the version it was built from.
    answer = requests.post(
        f"{serving_container['url']}/predict", files={"file": ("cell.dcm", samples["cell.dcm"])}, timeout=60
    ).json()
    assert answer["model"]["name"] == REGISTERED and answer["model"]["version"] == "1"
    assert abs(answer["answer"]["parasitized"] - served[2]["parasitized"]) <= 1e-6


def test_serving_container_is_non_root_healthy_and_rejects_bad_uploads(serving_container):
    url, name = serving_container["url"], serving_container["name"]
    assert docker("exec", name, "id", "-u").stdout.strip() not in ("", "0")
    deadline = time.monotonic() + 60
    while docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() != "healthy":
        assert time.monotonic() < deadline, "HEALTHCHECK never reported healthy"
        time.sleep(1)
    assert requests.get(f"{url}/ping", timeout=10).status_code == 200
    assert (
        requests.get(f"{url}/version", timeout=10).text
        == docker("exec", name, "python", "-c", "import mlflow; print(mlflow.__version__, end='')").stdout
    )
    bad = requests.post(f"{url}/predict", files={"file": ("scan.png", b"not an image at all")}, timeout=30)
    assert bad.status_code == 400 and bad.json()["reason"]
    bad_invocation = invoke(url, split_body([base64.b64encode(b"not an image").decode("ascii")]))
    assert bad_invocation.status_code == 400
    page = requests.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert 'route="/predict",status="400"' in metrics and "medimg_monitoring_answers_total" in metrics


def test_serving_image_holds_no_gpl_package_and_no_build_secret(serving_container, site):
    listing = docker("run", "--rm", "--network", "host", "--entrypoint", "cat", SERVING_TAG, "/opt/medimg/licences.tsv")
    rows = [line.split("\t") for line in listing.stdout.splitlines()[1:]]
    names = {re.sub(r"[-_.]+", "-", row[0].lower()) for row in rows}
    assert {"tensorflow-cpu", "mlflow-skinny", "python-gdcm", "pyjpegls"} <= names
    assert not names & {"pylibjpeg-libjpeg", "pyspark", "tensorflow", "mlflow"}
    assert not [row for row in rows if "GPL" in row[2].replace("LGPL", "")]
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", SERVING_TAG).stdout)
    assert labels["io.medimg.model.uri"] == f"models:/{REGISTERED}/1" and labels["io.medimg.jpeg-decoder"] == "gdcm"
    # The pip.conf secret's canary is in no layer and no history line.
    assert site["canary"] not in docker("history", "--no-trunc", SERVING_TAG).stdout
    with subprocess.Popen([DOCKER, "save", SERVING_TAG], stdout=subprocess.PIPE) as saved:
        found = subprocess.run(["grep", "-c", "-a", site["canary"]], stdin=saved.stdout, capture_output=True, text=True)
    assert found.stdout.strip() == "0"


def test_tracking_server_image_starts_against_the_test_postgres(site, tracking_server, tmp_path):
    """mlflow_server/Dockerfile from the same base, on the suite's PostgreSQL: its /health answers."""
    make("server-image", f"SERVER_IMAGE={SERVER_IMAGE}", *make_arguments(site))
    pgpass = (tracking_server["dir"] / "pgpass").read_text().strip().split(":")
    password = tmp_path / "postgres_password"
    password.write_text(pgpass[-1] + "\n")
    password.chmod(0o644)
    port, name = free_port(), f"medimg-test-server-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "--detach", "--name", name, "--network", "host",
        "--env", "POSTGRES_HOST=127.0.0.1", "--env", f"POSTGRES_PORT={tracking_server['postgres_port']}",
        "--env", "MLFLOW_WORKERS=1", "--volume", f"{password}:/run/secrets/postgres_password:ro",
        SERVER_IMAGE, "--port", str(port),
    )  # fmt: skip
    try:
        deadline, status = time.monotonic() + 180, None
        while time.monotonic() < deadline and status != 200:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
            except requests.ConnectionError:
                time.sleep(1)
        assert status == 200, docker("logs", name, check=False).stderr[-3000:]
        experiments = requests.get(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get", params={"name": REGISTERED}, timeout=10
        )
        assert experiments.status_code in (200, 404)
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    finally:
        docker("rm", "--force", name, check=False)


def test_the_pipeline_builds_the_serving_image_of_the_version_it_promotes(docker_training, site, tracking_server):
    """`-P build_image=true` builds docker/serving/Dockerfile through serve.image, with the site's options."""
    from mlflow.tracking import MlflowClient

    variables = site["variables"]
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_server["uri"],
        "DOCKER": variables["DOCKER"],
        "MEDIMG_BASE_IMAGE": variables["BASE_IMAGE"],
        "MEDIMG_CA_BUNDLE": variables["CA_BUNDLE"],
        "MEDIMG_DOCKER_BUILD_FLAGS": variables["DOCKER_BUILD_FLAGS"],
    }
    name = f"containers-pipeline-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "train", "pipeline", "--registered-model", name]
    command += ["--challenger", f"models:/{REGISTERED}/1", "--build-image", "true"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    client = MlflowClient(tracking_server["uri"])
    assert client.get_model_version_by_alias(name, "champion").version in (1, "1")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    (parent,) = client.search_runs(experiments, f"attributes.run_name = 'pipeline {name}'")
    tag = parent.data.tags["medimg.serving_image"]
    assert tag == f"medimg-serve-{name}:1"
    assert (
        parent.data.tags["medimg.serving_image_id"]
        == docker("inspect", "--type=image", "--format", "{{.Id}}", tag).stdout.strip()
    )
    labels = json.loads(docker("inspect", "--type=image", "--format", "{{json .Config.Labels}}", tag).stdout)
    assert labels["io.medimg.model.uri"] == f"models:/{name}/1"
    docker("rmi", tag, check=False)
