"""Load-tests the clinician app on loopback: reads a registered model (or trains a tiny one into a temporary store), prints throughput, latency percentiles, errors and the app's resident memory.

A fixed number of clients send a fixed number of `POST /predict` uploads (synthetic cell PNGs, each
client cycling through its own few pictures) to `python -m serve.app`, which this script starts on a free
loopback port, or to a running app given by `--url` (loopback addresses only). It stops by itself
after `--requests` requests. The app's resident memory (process_resident_memory_bytes of its /metrics)
is read after the first `--checkpoint` requests and at the end; memory that keeps growing shows a leak.

    .venv/bin/python bench/load.py --clients 4 --requests 2000
    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python bench/load.py --model models:/demo-classifier
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PICTURES_PER_CLIENT = 8


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    parser.add_argument("--requests", type=int, default=2000, help="requests in all (default: 2000)")
    parser.add_argument(
        "--checkpoint", type=int, default=200, help="requests after which memory is first read (default: 200)"
    )
    parser.add_argument("--model", default="", help="model URI to serve (default: train a tiny small_cnn)")
    parser.add_argument("--url", default="", help="a running app on this machine instead of starting one")
    parser.add_argument("--image-size", type=int, default=128, help="input size of the trained model (default: 128)")
    parser.add_argument("--upload-size", type=int, default=256, help="side of the uploaded PNGs (default: 256)")
    arguments = parser.parse_args(argv)
    if arguments.clients < 1 or arguments.requests < 1 or not 0 < arguments.checkpoint < arguments.requests:
        parser.error("--clients and --requests must be positive and --checkpoint between 0 and --requests")
    if arguments.url and urlparse(arguments.url).hostname not in LOOPBACK_HOSTS:
        parser.error(f"--url must be a loopback address ({', '.join(LOOPBACK_HOSTS)}): the load stays on this machine")
    return arguments


def pictures(client: int, size: int) -> list[bytes]:
    """A client's PNG uploads: synthetic cells, half with parasites."""
    from PIL import Image

    from train.data.synthetic import render_cell

    found = []
    for index in range(PICTURES_PER_CLIENT):
        generator = np.random.default_rng([client, index])
        buffer = io.BytesIO()
        Image.fromarray(render_cell(generator, size, {"dots": index % 2 == 0})).save(buffer, format="PNG")
        found.append(buffer.getvalue())
    return found


def resident_bytes(url: str) -> float:
    """The app's resident memory from its own /metrics (prometheus_client's process collector)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                return sample.value
    raise RuntimeError(f"{url}/metrics has no process_resident_memory_bytes")


class Load:
    """Sends numbered requests from a fixed number of clients and records each one's latency and outcome."""

    def __init__(self, url: str, clients: int, upload_size: int):
        self.url = url
        self.clients = clients
        self.uploads = [pictures(client, upload_size) for client in range(clients)]
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.lock = threading.Lock()

    def client(self, client: int, count: int) -> None:
        import requests

        with requests.Session() as session:
            for index in range(count):
                data = self.uploads[client][index % PICTURES_PER_CLIENT]
                started = time.perf_counter()
                try:
                    response = session.post(f"{self.url}/predict", files={"file": ("cell.png", data)}, timeout=120)
                    outcome = "ok" if response.status_code == 200 else f"HTTP {response.status_code}"
                except requests.RequestException as error:
                    outcome = type(error).__name__
                seconds = time.perf_counter() - started
                with self.lock:
                    if outcome == "ok":
                        self.latencies.append(seconds)
                    else:
                        self.errors[outcome] = self.errors.get(outcome, 0) + 1

    def run(self, requests_count: int) -> float:
        """Send `requests_count` requests spread over the clients; the seconds it took."""
        shares = [
            requests_count // self.clients + (client < requests_count % self.clients) for client in range(self.clients)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(self.clients) as pool:
            for future in [pool.submit(self.client, client, share) for client, share in enumerate(shares)]:
                future.result()
        return time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100)) if values else float("nan")


def report(load: Load, seconds: float, requests_count: int, memory: tuple[float, float], checkpoint: int) -> bool:
    """Print the numbers; True when nothing failed and memory stayed within 10% of the checkpoint's."""
    latencies, errors = load.latencies, sum(load.errors.values())
    first, last = memory
    growth = (last - first) / first
    print(
        f"{requests_count} requests from {load.clients} clients in {seconds:.1f} s: {requests_count / seconds:.1f} requests/s"
    )
    print(
        "latency ms: p50 {:.1f}, p95 {:.1f}, p99 {:.1f}, mean {:.1f}, max {:.1f}".format(
            *(1000 * percentile(latencies, share) for share in (0.5, 0.95, 0.99)),
            1000 * statistics.fmean(latencies) if latencies else float("nan"),
            1000 * max(latencies, default=float("nan")),
        )
    )
    print(
        f"errors: {errors}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(load.errors.items()))})" if errors else "")
    )
    print(
        f"app resident memory: {first / 2**20:.1f} MiB after {checkpoint} requests, {last / 2**20:.1f} MiB at the end ({growth:+.1%})"
    )
    passed = errors == 0 and abs(growth) <= 0.10
    print("PASS: no error, memory within 10%" if passed else "FAIL: errors or memory moved by more than 10%")
    return passed


def measure(url: str, arguments: argparse.Namespace) -> bool:
    load = Load(url, arguments.clients, arguments.upload_size)
    seconds = load.run(arguments.checkpoint)
    first = resident_bytes(url)
    seconds += load.run(arguments.requests - arguments.checkpoint)
    return report(load, seconds, arguments.requests, (first, resident_bytes(url)), arguments.checkpoint)


def trained_model(workdir: Path, image_size: int) -> str:
    """A tiny small_cnn trained on synthetic cells into the current tracking store; its accuracy does not matter."""
    from train.job.trainer import train
    from train.settings import MainSettings

    settings = MainSettings.from_dict(
        {"image_size": image_size, "epochs": 1, "batch_size": 16, "max_examples": 120, "register_as": "load-test"}
    )
    train(settings)
    return "models:/load-test"


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.url:
        return 0 if measure(arguments.url.rstrip("/"), arguments) else 1
    from serve.client import running_process
    from serve.common import free_port
    from serve.model_uri import check_model_uri

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench-load-") as temporary:
        workdir = Path(temporary)
        if not arguments.model:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        model = arguments.model or trained_model(workdir, arguments.image_size)
        check_model_uri(model)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "serve.app", "--model", model, "--port", str(port), "--log-level", "warning"]
        print(f"starting python -m serve.app --model {model} on {url} ...", file=sys.stderr, flush=True)
        with running_process(
            command, ready_url=f"{url}/health", log_path=workdir / "app.log", env=dict(os.environ), cwd=REPO_ROOT
        ):
            return 0 if measure(url, arguments) else 1


if __name__ == "__main__":
    sys.exit(main())
