"""Latency of the clinician app while its followed alias moves: registers two versions of a model at 224 px into a temporary store, serves @champion under load, moves the alias, prints p50/p99 in the steady state and during the swap.

`python -m serve.app --model models:/swap-bench@champion --follow-seconds 1` is started on a free loopback
port; `--clients` clients send a 224 px PNG to `POST /predict` without pause. The steady state is the
`--seconds` before the alias moves; the swap window runs from the move until `--seconds` after the first
answer of the new version (so it holds the background load, the warm-up and the swap itself). Both
versions are untrained builds of the same family (latency does not depend on the weights). A failed
request, or an answer of the old version after the new one has answered on the same client, is counted.

    .venv/bin/python bench/swap.py                              # small_cnn at 224 px, 4 clients
    .venv/bin/python bench/swap.py --family densenet121 --seconds 30
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

NAME = "swap-bench"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/swap.py", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="small_cnn", help="model family of both versions (default: small_cnn)")
    parser.add_argument("--image-size", type=int, default=224, help="model input size (default: 224)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="steady state, and the tail after the swap (default: 20)"
    )
    parser.add_argument("--follow-seconds", type=float, default=1.0, help="the app's alias check interval (default: 1)")
    arguments = parser.parse_args(argv)
    if arguments.clients < 1 or arguments.seconds <= 0 or arguments.image_size < 32:
        parser.error("--clients and --seconds must be positive and --image-size at least 32")
    return arguments


def register_versions(family: str, image_size: int) -> None:
    """Versions 1 (@champion) and 2 of NAME: untrained builds of `family` logged as medimg pyfuncs."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from models import build_model
    from serve.pyfunc import ClassifierConfig, log_classifier

    config = ClassifierConfig(class_names=["negative", "positive"], task="binary", image_size=image_size)
    example = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    for seed in (1, 2):
        import keras

        keras.utils.set_random_seed(seed)
        model = build_model(family, (image_size, image_size, 3), 1, task="binary")
        with mlflow.start_run(run_name=f"swap bench version {seed}"):
            log_classifier(model, config, example, registered_model_name=NAME)
    MlflowClient().set_registered_model_alias(NAME, "champion", "1")


class Clients:
    """Clients posting one PNG without pause; each answer as (sent, seconds, status, version, client)."""

    def __init__(self, url: str, image: bytes, clients: int):
        import requests

        self.url, self.image, self.requests = url, image, requests
        self.answers: list[tuple[float, float, int, str, int]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(index,), daemon=True) for index in range(clients)]

    def client(self, index: int) -> None:
        session = self.requests.Session()
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                response = session.post(f"{self.url}/predict", files={"file": ("x.png", self.image)}, timeout=120)
                status = response.status_code
                version = response.json()["model"]["version"] if status == 200 else ""
            except self.requests.RequestException:
                status, version = 0, ""
            self.answers.append((sent, time.monotonic() - sent, status, version, index))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def first_answer_of(self, version: str, since: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                sent + seconds
                for sent, seconds, _, answered, _ in list(self.answers)
                if answered == version and sent >= since
            ]
            if found:
                return min(found)
            time.sleep(0.05)
        raise SystemExit(f"version {version} never answered within {timeout:g} s")


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max in milliseconds."""
    if len(latencies) < 2:
        return (float("nan"),) * 3
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1e3, cuts[98] * 1e3, max(latencies) * 1e3


def backwards(answers: list) -> int:
    """Answers of version 1 sent by a client after that client had an answer of version 2."""
    seen, count = set(), 0
    for _sent, _, _, version, client in sorted(answers):
        if version == "2":
            seen.add(client)
        elif version == "1" and client in seen:
            count += 1
    return count


def resident_mib(url: str) -> float:
    """The app's resident memory (process_resident_memory_bytes of its /metrics) in MiB."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                return sample.value / 2**20
    return float("nan")


def report(clients: Clients, moved: float, first_new: float, end: float, arguments: argparse.Namespace) -> None:
    answers = list(clients.answers)
    steady = [seconds for sent, seconds, status, _, _ in answers if moved - arguments.seconds <= sent < moved]
    swap = [seconds for sent, seconds, status, _, _ in answers if moved <= sent < end]
    failed = sum(1 for _, _, status, _, _ in answers if status != 200)
    print(
        f"\n{arguments.family} at {arguments.image_size} px, {arguments.clients} clients, alias checked every "
        f"{arguments.follow_seconds:g} s; {os.cpu_count()} cores\n"
    )
    print("| window | requests | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for label, latencies in (("steady (before the move)", steady), ("during the swap", swap)):
        p50, p99, worst = percentiles(latencies)
        print(f"| {label} | {len(latencies)} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    print(
        f"\nfirst answer of version 2: {first_new - moved:.2f} s after the alias moved; failed requests: {failed}; "
        f"version-1 answers after a client saw version 2: {backwards(answers)}"
    )


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from serve.client import running_process
    from serve.common import free_port

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as temporary:
        workdir = Path(temporary)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        register_versions(arguments.family, arguments.image_size)
        buffer = io.BytesIO()
        pixels = np.random.default_rng(0).integers(0, 256, (arguments.image_size, arguments.image_size, 3), np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "serve.app", "--model", f"models:/{NAME}@champion", "--port", str(port)]
        command += ["--follow-seconds", str(arguments.follow_seconds), "--log-level", "warning"]
        with running_process(
            command, ready_url=f"{url}/health", log_path=workdir / "app.log", env=dict(os.environ), cwd=REPO_ROOT
        ):
            clients = Clients(url, buffer.getvalue(), arguments.clients)
            clients.start()
            time.sleep(arguments.seconds + 2)
            before = resident_mib(url)
            moved = time.monotonic()
            MlflowClient().set_registered_model_alias(NAME, "champion", "2")
            first_new = clients.first_answer_of("2", moved, 300)
            time.sleep(arguments.seconds)
            end = first_new + arguments.seconds
            clients.finish()
            after = resident_mib(url)
        report(clients, moved, first_new, end, arguments)
        print(f"resident memory: {before:.0f} MiB before the move, {after:.0f} MiB after the swap (one model again)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
