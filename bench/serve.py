"""Benchmarks REST scoring of small_cnn: trains or loads a 224x224 model, serves it, prints latency, throughput and payload sizes.

Ways to score one 224x224 image, measured in one run:
  1. `mlflow models serve` of the medimg pyfunc, sent the PNG file as base64 (what serve.client does),
     without and with the param explain=true (a Grad-CAM heatmap in the answer);
  2. `mlflow models serve` of a plain tensor-input pyfunc around the same Keras model, sent the decoded
     image as a JSON float tensor {"inputs": [[[[r, g, b], ...]]]} (the common pattern in tutorials);
  3. in-process decode + predict (ImageClassifier.predict on the same base64 PNG, no HTTP);
  4. the clinician app (`python -m serve.app`), sent the PNG file as a multipart upload to /predict,
     without and with ?explain=true; these two and the two of 1. are timed in turns, request after
     request, so that other work on the machine slows all four alike.
Besides the RGB cell image, a grayscale 224x224 chest-radiograph-like PNG (how NIH ChestX-ray14 and most
radiographs are stored) is served, since its payload is what chest X-ray clients send.
Targets: the PNG payload at least 10x smaller than the tensor JSON; served p50 within 2x of in-process.
Then a 2,000 x 2,000 12-bit radiograph as a hospital sends it: in-process decode+predict of the same picture
as a 16-bit PNG (sBIT 12) and as uncompressed, JPEG 2000 lossless and JPEG Lossless (SV1) DICOM.
Usage (a temporary sqlite store is used unless --model-uri and MLFLOW_TRACKING_URI are given):

    .venv/bin/python bench/serve.py --requests 100
    .venv/bin/python bench/serve.py --sixteen-bit-only --radiograph-requests 20
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from serve.common import free_port, stop_process_group  # noqa: E402

TENSOR_MODEL_CODE = '''"""Tensor-input twin of the medimg classifier for bench/serve.py: float32 [N, S, S, 3] in 0-255 -> probabilities."""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class TensorClassifier(PythonModel):
    def load_context(self, context):
        import keras

        import models.layers  # noqa: F401

        self.model = keras.models.load_model(context.artifacts["keras_model"], compile=False)

    def predict(self, context, model_input, params=None):
        return np.asarray(self.model.predict_on_batch(np.asarray(model_input, dtype=np.float32)))


mlflow.models.set_model(TensorClassifier())
'''


# NIH ChestX-ray14: 42 GB of PNGs for 112,120 images of 1024x1024, about 2.9 bits per pixel.
NIH_BITS_PER_PIXEL = 42e9 * 8 / (112_120 * 1024 * 1024)


def render_radiograph(generator: np.random.Generator, size: int = 1024, noise: float = 1.5) -> np.ndarray:
    """A grayscale frontal chest-radiograph-like image: body, dark lungs, spine, heart, ribs, sensor noise.

    With noise 1.5 its 1024 px PNG takes more bits per pixel than NIH's real files, so the payload measured
    for it is not flattered by an unrealistically smooth picture.
    """
    from PIL import Image, ImageFilter

    y, x = np.mgrid[0:size, 0:size] / size
    image = 40 + 150 * np.exp(-(((x - 0.5) / 0.42) ** 8 + ((y - 0.55) / 0.5) ** 8))
    for centre in (0.32, 0.68):
        image -= 90 * np.exp(-((((x - centre) / 0.14) ** 2 + ((y - 0.5) / 0.26) ** 2) ** 2))
    image += 80 * np.exp(-(((x - 0.5) / 0.07) ** 2) - ((y - 0.6) / 0.35) ** 4)
    image += 60 * np.exp(-((((x - 0.55) / 0.12) ** 2 + ((y - 0.66) / 0.1) ** 2) ** 2))
    ribs_side = (np.abs(x - 0.5) > 0.06) & (np.abs(x - 0.5) < 0.4)
    for rib in range(9):
        curve = 0.25 + 0.065 * rib + 0.3 * (x - 0.5) ** 2
        image += 25 * np.exp(-(((y - curve) / 0.008) ** 2)) * ribs_side
    smooth = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(smooth, dtype=np.float64) + generator.normal(0.0, noise, (size, size))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_request(png: bytes, params: dict | None = None) -> bytes:
    encoded = base64.b64encode(png).decode("ascii")
    from serve.contract import IMAGE_COLUMN

    body: dict = {"dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[encoded]]}}
    if params:
        body["params"] = params
    return json.dumps(body).encode()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="", help="a medimg model URI (default: train a small_cnn at 224)")
    parser.add_argument("--image-size", type=int, default=224, help="model input size when training one")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests before each measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel clients for the throughput measurement")
    parser.add_argument("--workdir", default="", help="folder for the tracking store and logs (default: temporary)")
    parser.add_argument(
        "--radiograph-requests", type=int, default=20, help="timed 2,000 px radiograph scorings (0 skips)"
    )
    parser.add_argument("--sixteen-bit-only", action="store_true", help="measure only the 2,000 px radiograph rows")
    return parser.parse_args(argv)


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(np.asarray(values), share))


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def train_model(workdir: Path, image_size: int) -> str:
    """A quickly trained small_cnn; its accuracy does not matter for timing."""
    import mlflow

    from train.job.trainer import train
    from train.settings import MainSettings
    from train.tracking import names

    mlflow.set_experiment("bench-serve")
    config = MainSettings.from_dict(
        {"image_size": image_size, "epochs": 1, "batch_size": 16, "max_examples": 64, "augment": "false"}
    )
    run_id = train(config).run_id
    return mlflow.get_run(run_id).data.tags[names.MODEL_URI_TAG]


def log_tensor_model(classifier, workdir: Path) -> str:
    """Log the Keras model again as a pyfunc that takes a float32 tensor [-1, S, S, 3]."""
    import mlflow
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = classifier.config.image_size
    keras_path = workdir / "tensor_model.keras"
    classifier.model.save(keras_path)
    code_path = workdir / "tensor_model.py"
    code_path.write_text(TENSOR_MODEL_CODE)
    outputs = len(classifier.config.output_columns)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, outputs))]),
    )
    with mlflow.start_run(run_name="bench tensor-input model"):
        info = mlflow.pyfunc.log_model(
            name="tensor_model",
            python_model=str(code_path),
            artifacts={"keras_model": str(keras_path)},
            code_paths=[str(REPO_ROOT / "models")],
            signature=signature,
            pip_requirements=["mlflow", "tensorflow", "keras", "numpy"],
        )
    return info.model_uri


class Server:
    """`mlflow models serve --env-manager local` in its own process group, stopped on exit."""

    ready_path = "/ping"

    def __init__(self, model_uri: str, workdir: Path, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m", model_uri]
        command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port)]
        self.start(command, workdir)

    def start(self, command: list[str], workdir: Path) -> None:
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def __enter__(self) -> Server:
        import requests

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-2000:]}")

    def __exit__(self, *exc_info) -> None:
        stop_process_group(self.process)


class AppServer(Server):
    """`python -m serve.app` (the clinician page and /predict) from the repository, stopped on exit."""

    ready_path = "/health"

    def __init__(self, model_uri: str, workdir: Path, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        command = [sys.executable, "-m", "serve.app", "--model", model_uri, "--port", str(self.port)]
        self.start(command, REPO_ROOT)


def request_timer(url: str, body: bytes, *, upload: str = ""):
    """A function that sends one request with a requests session and returns its latency in seconds.

    It posts `body` as JSON to /invocations, or with upload="?query" the PNG `body` as the multipart
    field `file` to the app's /predict?query.
    """
    headers = {"Content-Type": "application/json"}

    def post(client) -> float:
        started = time.perf_counter()
        if upload:
            response = client.post(f"{url}/predict{upload}", files={"file": ("image.png", body)}, timeout=120)
        else:
            response = client.post(f"{url}/invocations", data=body, headers=headers, timeout=120)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        return elapsed

    return post


def measure_in_turns(timers: dict, requests_count: int, warmup: int) -> dict[str, dict[str, float]]:
    """Latency percentiles of several request kinds sent in turns, one of each per round."""
    import requests

    sessions = {name: requests.Session() for name in timers}
    for _ in range(warmup):
        for name, post in timers.items():
            post(sessions[name])
    latencies: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(requests_count):
        for name, post in timers.items():
            latencies[name].append(post(sessions[name]))
    return {name: summary(values) for name, values in latencies.items()}


def measure_server(url: str, body: bytes, requests_count: int, warmup: int, concurrency: int) -> dict[str, float]:
    """Sequential latency percentiles, sequential requests/s and requests/s with `concurrency` clients."""
    import requests

    session = requests.Session()
    post = request_timer(url, body)

    for _ in range(warmup):
        post(session)
    started = time.perf_counter()
    latencies = [post(session) for _ in range(requests_count)]
    sequential_seconds = time.perf_counter() - started
    sessions = [requests.Session() for _ in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda index: post(sessions[index % concurrency]), range(requests_count)))
    parallel_seconds = time.perf_counter() - started
    return {
        **summary(latencies),
        "requests_per_s": requests_count / sequential_seconds,
        f"requests_per_s_x{concurrency}": requests_count / parallel_seconds,
    }


def measure_in_process(classifier, encoded: str, requests_count: int, warmup: int) -> dict[str, float]:
    from serve.contract import request_frame

    frame = request_frame(encoded)
    for _ in range(warmup):
        classifier.predict(None, frame)
    latencies = []
    for _ in range(requests_count):
        started = time.perf_counter()
        classifier.predict(None, frame)
        latencies.append(time.perf_counter() - started)
    return {**summary(latencies), "requests_per_s": 1.0 / statistics.fmean(latencies)}


def sixteen_bit_payloads(workdir: Path, size: int = 2000) -> dict[str, bytes]:
    """One 12-bit radiograph of size x size as a 16-bit PNG (sBIT 12) and as DICOM in three transfer syntaxes."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1

    from tests.dicom_files import image_dataset, write_sixteen_bit_png, write_variant

    generator = np.random.default_rng(1)
    picture = render_radiograph(generator, size).astype(np.float64) * 16.0 + generator.normal(0.0, 4.0, (size, size))
    pixels = np.clip(np.rint(picture), 0, 4095).astype(np.uint16)
    dataset = image_dataset(pixels, window=(2048.0, 4096.0))
    payloads = {"16-bit PNG (sBIT 12)": write_sixteen_bit_png(workdir / "radiograph16.png", pixels, 12).read_bytes()}
    for label, syntax in (
        ("DICOM, uncompressed", ExplicitVRLittleEndian),
        ("DICOM, JPEG 2000 lossless", JPEG2000Lossless),
        ("DICOM, JPEG Lossless SV1", JPEGLosslessSV1),
    ):
        payloads[label] = write_variant(dataset, workdir / f"radiograph_{syntax}.dcm", syntax).read_bytes()
    return payloads


def measure_sixteen_bit(classifier, workdir: Path, requests_count: int, warmup: int) -> None:
    """Print in-process decode+predict latency of the 2,000 px radiograph in each format."""
    payloads = sixteen_bit_payloads(workdir)
    size = classifier.config.image_size
    print(
        f"\n2,000 x 2,000 12-bit radiograph, small_cnn at {size}x{size}, in-process decode+predict, {requests_count} runs"
    )
    print(f"{'':28} {'payload bytes':>14} {'p50 ms':>8} {'p95 ms':>8}")
    for label, data in payloads.items():
        numbers = measure_in_process(classifier, base64.b64encode(data).decode("ascii"), requests_count, warmup)
        print(f"{label:28} {len(data):>14,} {numbers['p50_ms']:>8.1f} {numbers['p95_ms']:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temporary:
        workdir = Path(arguments.workdir or temporary).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if not arguments.model_uri or not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        import mlflow
        from PIL import Image

        from serve.contract import EXPLAIN_PARAM
        from serve.loaded import LoadedModel
        from serve.preprocess import load_image_tensor
        from train.data.synthetic import render_cell

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        model_uri = arguments.model_uri or train_model(workdir, arguments.image_size)
        classifier = LoadedModel.load(model_uri).image_classifier()
        size = classifier.config.image_size
        if arguments.radiograph_requests:
            measure_sixteen_bit(classifier, workdir, arguments.radiograph_requests, min(arguments.warmup, 3))
        if arguments.sixteen_bit_only:
            return 0
        tensor_uri = log_tensor_model(classifier, workdir)

        png = png_bytes(render_cell(np.random.default_rng(0), 224, {"dots": True}))
        encoded = base64.b64encode(png).decode("ascii")
        png_body = png_request(png)
        radiograph = render_radiograph(np.random.default_rng(0))
        radiograph_bits = 8 * len(png_bytes(radiograph)) / radiograph.size
        radiograph_png = png_bytes(np.asarray(Image.fromarray(radiograph).resize((224, 224))))
        radiograph_body = png_request(radiograph_png)
        # Its own tensor JSON (size only: the served tensor model is timed with the cell image's tensor).
        radiograph_tensor = np.asarray(load_image_tensor(radiograph_png, size), dtype=np.float32)[None]
        radiograph_tensor_bytes = len(json.dumps({"inputs": radiograph_tensor.tolist()}).encode())
        tensor = np.asarray(load_image_tensor(png, size), dtype=np.float32)[None]
        tensor_body = json.dumps({"inputs": tensor.tolist()}).encode()

        counts = (arguments.requests, arguments.warmup)
        in_process = measure_in_process(classifier, encoded, *counts)
        explain_body = png_request(png, {EXPLAIN_PARAM: True})
        with Server(model_uri, workdir, "png") as server:
            served_png = measure_server(server.url, png_body, *counts, arguments.concurrency)
            served_radiograph = measure_server(server.url, radiograph_body, *counts, arguments.concurrency)
            with AppServer(model_uri, workdir, "app") as app:
                timers = {
                    "mlflow models serve, PNG": request_timer(server.url, png_body),
                    "mlflow models serve, explain": request_timer(server.url, explain_body),
                    "app /predict, PNG": request_timer(app.url, png, upload="?"),
                    "app /predict, explain": request_timer(app.url, png, upload="?explain=true"),
                }
                in_turns = measure_in_turns(timers, *counts)
        with Server(tensor_uri, workdir, "tensor") as server:
            served_tensor = measure_server(server.url, tensor_body, *counts, arguments.concurrency)

    rows = [
        ("served, base64 PNG", len(png_body), served_png),
        ("served, grayscale X-ray PNG", len(radiograph_body), served_radiograph),
        ("served, JSON float tensor", len(tensor_body), served_tensor),
        ("in-process decode+predict", len(png), in_process),
    ]
    print(f"\nsmall_cnn at {size}x{size}, {arguments.requests} requests each, {platform.processor() or 'cpu'}")
    print(
        f"{'':28} {'payload bytes':>14} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'req/s x' + str(arguments.concurrency):>10}"
    )
    for label, payload, numbers in rows:
        parallel = numbers.get(f"requests_per_s_x{arguments.concurrency}")
        parallel_text = "-" if parallel is None else f"{parallel:.1f}"
        print(
            f"{label:28} {payload:>14,} {numbers['p50_ms']:>8.1f} {numbers['p95_ms']:>8.1f} "
            f"{numbers['requests_per_s']:>8.1f} {parallel_text:>10}"
        )
    payload_ratio = len(tensor_body) / len(png_body)
    latency_ratio = served_png["p50_ms"] / in_process["p50_ms"]
    print(f"\npayload: tensor JSON / PNG request = {payload_ratio:.1f}x (target >= 10x)")
    # Many clients send unit-scaled float32 pixels instead, whose JSON digits are longer; size only, not served.
    unit_bytes = len(json.dumps({"inputs": (tensor / np.float32(255.0)).tolist()}).encode())
    print(f"payload: the same tensor scaled to 0-1 would be {unit_bytes:,} bytes ({unit_bytes / len(png_body):.1f}x)")
    print(
        f"payload: grayscale X-ray as tensor JSON ({radiograph_tensor_bytes:,} bytes) / as PNG request = "
        f"{radiograph_tensor_bytes / len(radiograph_body):.1f}x "
        f"(its 1024 px PNG: {radiograph_bits:.1f} bits/pixel; NIH ChestX-ray14 files: {NIH_BITS_PER_PIXEL:.1f})"
    )
    print(f"latency: served PNG p50 / in-process p50 = {latency_ratio:.2f}x (target <= 2x)")
    print(f"latency: served tensor p50 / served PNG p50 = {served_tensor['p50_ms'] / served_png['p50_ms']:.2f}x")
    print(f"\nthe same PNG, {arguments.requests} rounds of one request of each kind, in turns")
    print(f"{'':30} {'p50 ms':>8} {'p95 ms':>8}")
    for label, numbers in in_turns.items():
        print(f"{label:30} {numbers['p50_ms']:>8.1f} {numbers['p95_ms']:>8.1f}")
    served, app = in_turns["mlflow models serve, PNG"], in_turns["app /predict, PNG"]
    print(f"latency: app p50 / mlflow models serve p50 = {app['p50_ms'] / served['p50_ms']:.2f}x")
    for host, plain in (("mlflow models serve", served), ("app /predict", app)):
        explained = in_turns[f"{host}, explain"]
        print(f"latency: {host} explain p50 / plain p50 = {explained['p50_ms'] / plain['p50_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
