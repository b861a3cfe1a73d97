"""Benchmarks the serving image against MLflow's own for one registered version: reads the registry and a Docker engine, builds both images, prints their sizes, seconds from `docker run` to the first answer and the p50/p99 latency of /invocations beside in-process predict.

The two images are built from the same base (BASE_IMAGE: a Debian-made one from `make base-image` where Docker Hub
cannot be reached) so that only what each puts on top differs:
  1. medimg's serving image (`python -m serve.image`, docker/serving/Dockerfile);
  2. MLflow's: the Dockerfile `mlflow models generate-dockerfile` writes (what `mlflow models build-docker` builds),
     its FROM line pointed at the same base with a virtual environment, built with the same `docker build` flags.
Both answer MLflow's scoring protocol; one image is sent to /invocations at a time, request after request, the two
containers in turns so that other work on the machine slows both alike. Target: medimg's image at most half the size.
Usage (MLFLOW_TRACKING_URI names the store that holds the model):

    MEDIMG_DOCKER_BUILD_FLAGS="--network host" .venv/bin/python bench/images.py \
        --model models:/demo-classifier@champion --base-image medimg-base:bookworm --docker /usr/bin/docker --requests 50
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from serve.common import free_port  # noqa: E402
from serve.contract import IMAGE_COLUMN  # noqa: E402

MLFLOW_IMAGE_PORT = 8080


def docker(client: str, *arguments: str, timeout: float = 3600) -> str:
    result = subprocess.run([client, *arguments], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"docker {' '.join(arguments[:2])} failed: {result.stderr.strip()[-1500:]}")
    return result.stdout.strip()


def build_mlflow_image(uri: str, tag: str, base_image: str, client: str, flags: list[str]) -> float:
    """MLflow's serving image of `uri` on `base_image` (plus a venv, as python:*-slim has pip on PATH); seconds taken."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        context = Path(workdir) / "mlflow-image"
        command = [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", uri, "-d", str(context)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        dockerfile = (context / "Dockerfile").read_text()
        venv_base = (
            f"FROM {base_image} AS medimg_bench_base\nRUN python3 -m venv /opt/venv\nENV PATH=/opt/venv/bin:$PATH\n\n"
        )
        dockerfile = venv_base + re.sub(r"^FROM \S+", "FROM medimg_bench_base", dockerfile, count=1, flags=re.M)
        (context / "Dockerfile").write_text(dockerfile)
        subprocess.run(
            [client, "build", "-t", tag, *flags, str(context)],
            check=True,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            timeout=3600,
        )
    return time.perf_counter() - started


def first_answer_seconds(client: str, image: str, port: int, environment: list[str], body: dict) -> tuple[str, float]:
    """Start `image` on the host network; (container name, seconds until /invocations first answers 200)."""
    import requests

    name = f"medimg-bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    docker(client, "run", "--detach", "--name", name, "--network", "host", *environment, image)
    deadline = started + 600
    while time.perf_counter() < deadline:
        try:
            if requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30).status_code == 200:
                return name, time.perf_counter() - started
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    logs = subprocess.run([client, "logs", name], capture_output=True, text=True).stderr[-1500:]
    subprocess.run([client, "rm", "--force", name], capture_output=True)
    raise SystemExit(f"{image} did not answer in 600 s:\n{logs}")


def latencies(url: str, body: dict, requests_count: int) -> list[float]:
    import requests

    seconds = []
    for _ in range(requests_count):
        started = time.perf_counter()
        response = requests.post(f"{url}/invocations", json=body, timeout=60)
        seconds.append(time.perf_counter() - started)
        response.raise_for_status()
    return seconds


def percentiles(seconds: list[float]) -> str:
    cut = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else seconds * 99
    return f"{statistics.median(seconds) * 1000:7.1f} {cut[98] * 1000:7.1f}"


def in_process(uri: str, body: dict, requests_count: int) -> list[float]:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame(body["dataframe_split"]["data"], columns=body["dataframe_split"]["columns"])
    model.predict(frame)
    seconds = []
    for _ in range(requests_count):
        started = time.perf_counter()
        model.predict(frame)
        seconds.append(time.perf_counter() - started)
    return seconds


def sample_body() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "train.samples", folder], check=True, cwd=REPO_ROOT, capture_output=True)
        image = base64.b64encode((Path(folder) / "cell.png").read_bytes()).decode("ascii")
    return {"dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[image]]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a registered version: models:/NAME@ALIAS or models:/NAME/N")
    parser.add_argument("--base-image", required=True, help="the FROM of both images")
    parser.add_argument("--docker", default=os.environ.get("DOCKER", "docker"), help="docker client with BuildKit")
    parser.add_argument(
        "--build-flags",
        default=os.environ.get("MEDIMG_DOCKER_BUILD_FLAGS", ""),
        help="extra `docker build` flags, e.g. '--network host' (default: $MEDIMG_DOCKER_BUILD_FLAGS)",
    )
    parser.add_argument("--requests", type=int, default=50, help="timed /invocations requests per container")
    arguments = parser.parse_args(argv)
    from serve.image import ImageOptions, build_image
    from serve.model_uri import resolve_model_uri

    flags = shlex.split(arguments.build_flags)
    resolved = resolve_model_uri(arguments.model)
    body = sample_body()
    options = ImageOptions(base_image=arguments.base_image, docker=arguments.docker, build_flags=flags)
    started = time.perf_counter()
    ours = build_image(resolved.load_uri, "medimg-bench-serve:latest", options).tag
    ours_build = time.perf_counter() - started
    theirs = "medimg-bench-mlflow:latest"
    theirs_build = build_mlflow_image(resolved.load_uri, theirs, arguments.base_image, arguments.docker, flags)
    port = free_port()
    containers = [
        first_answer_seconds(arguments.docker, ours, port, ["--env", f"MEDIMG_PORT={port}"], body),
        first_answer_seconds(arguments.docker, theirs, MLFLOW_IMAGE_PORT, [], body),
    ]
    try:
        urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{MLFLOW_IMAGE_PORT}"]
        timed: list[list[float]] = [[], []]
        for _ in range(arguments.requests):
            for index, url in enumerate(urls):
                timed[index] += latencies(url, body, 1)
    finally:
        for name, _ in containers:
            subprocess.run([arguments.docker, "rm", "--force", name], capture_output=True)
    local = in_process(resolved.load_uri, body, arguments.requests)
    sizes = [
        int(docker(arguments.docker, "inspect", "--type=image", "--format", "{{.Size}}", image))
        for image in (ours, theirs)
    ]
    print(
        f"{resolved.label}, one {len(body['dataframe_split']['data'])}-image request, {arguments.requests} requests each"
    )
    print(f"{'':32} {'size MB':>8} {'build s':>8} {'first s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    rows = [("medimg serving image", sizes[0], ours_build, containers[0][1], timed[0])]
    rows += [("mlflow models build-docker image", sizes[1], theirs_build, containers[1][1], timed[1])]
    for label, size, build, first, seconds in rows:
        print(f"{label:32} {size / 1e6:8.0f} {build:8.0f} {first:8.1f} {percentiles(seconds)}")
    print(f"{'in-process pyfunc predict':32} {'':8} {'':8} {'':8} {percentiles(local)}")
    print(f"size ratio medimg / mlflow: {sizes[0] / sizes[1]:.2f} (target <= 0.50)")
    print(
        f"container p50 / in-process p50: {statistics.median(timed[0]) / statistics.median(local):.2f} (medimg), "
        f"{statistics.median(timed[1]) / statistics.median(local):.2f} (mlflow)"
    )
    print(f"load average: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
