"""Benchmarks batch scoring: trains a small_cnn at 128 px, writes 2,000 PNGs of 256 px and prints images/s of every way to score them, and the local engine's peak memory.

Measured in one run, on the same files and the same registered model:
  1. the local engine (`python -m train batch`, engine=local: parallel decode, 32-image predictions);
  2. a loop that calls the pyfunc once per file (a one-row DataFrame each, in-process);
  3. one REST request per file to `mlflow models serve` (what a loop over serve.client does);
  4. the Spark engine on local[2] (binaryFile + mlflow.pyfunc.spark_udf), with its start-up;
  5. one 32-image `predict` against 32 single-image `predict` calls (ms per image);
  6. the local engine's peak resident memory on 2,000 and on 20,000 files (each job in its own process,
     the kernel's high-water mark of that process, VmHWM).
Targets: local engine >= 5x the per-file pyfunc loop; 32-image predict >= 2x faster per image than single
calls; peak memory on 20,000 files within 1.5x of that on 2,000.
Usage (a temporary sqlite store and folder are used unless --workdir is given):

    .venv/bin/python bench/batch.py
    .venv/bin/python bench/batch.py --files 500 --skip-spark --skip-rest --memory-files 0
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.serve import Server  # noqa: E402


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="PNG files every way scores")
    parser.add_argument("--file-size", type=int, default=256, help="side of the PNGs in pixels")
    parser.add_argument("--image-size", type=int, default=128, help="model input size")
    parser.add_argument("--memory-files", type=int, default=20000, help="files of the large memory run (0 skips)")
    parser.add_argument("--skip-spark", action="store_true", help="leave out the Spark engine")
    parser.add_argument("--skip-rest", action="store_true", help="leave out the REST loop")
    parser.add_argument("--workdir", default="", help="folder for the store, the files and the outputs")
    return parser.parse_args(argv)


def register_model(image_size: int) -> str:
    """A quickly trained small_cnn registered as bench-batch; its accuracy does not matter for timing."""
    import mlflow

    from train.job.trainer import train
    from train.settings import MainSettings

    mlflow.set_experiment("bench-batch")
    settings = MainSettings.from_dict(
        {
            "image_size": image_size,
            "epochs": 1,
            "batch_size": 16,
            "max_examples": 64,
            "augment": "false",
            "register_as": "bench-batch",
        }
    )
    train(settings)
    return "models:/bench-batch/1"


def write_files(folder: Path, count: int, size: int) -> list[Path]:
    """`count` synthetic cell PNGs of size x size in 10 subfolders."""
    from PIL import Image

    from train.data.synthetic import render_cell

    paths = []
    for index in range(count):
        path = folder / f"batch{index % 10}" / f"cell{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_cell(np.random.default_rng(index), size, {"dots": index % 2 == 0})).save(path)
        paths.append(path)
    return paths


def linked_copies(source: Path, target: Path, copies: int) -> None:
    """`copies` hard-linked copies of a folder tree (new paths, no new bytes on disk)."""
    for copy in range(copies):
        for path in source.rglob("*.png"):
            destination = target / f"copy{copy}" / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)


def batch_command(model_uri: str, folder: Path, output: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "train", "batch", "--model-uri", model_uri, "--input", str(folder)]
    return [*command, "--output", str(output), *extra]


def peak_memory_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB; 0 when it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_batch(command: list[str], workdir: Path) -> tuple[float, float]:
    """Run one batch job in its own process; (wall seconds, peak resident memory in MB of that process).

    The peak is the kernel's high-water mark of the job's own memory (VmHWM), read until it exits. Its
    ru_maxrss would not do: Linux carries the parent's resident size at fork over into the child's
    ru_maxrss, and this benchmark process holds a model and a server of its own.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    peak = 0.0
    with open(workdir / "batch.log", "ab") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            peak = max(peak, peak_memory_mb(process.pid))
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed; see {workdir / 'batch.log'}")
    return seconds, peak


def engine_rate(store: str) -> float:
    """images/s of the newest batch run, as the run logged it (scoring only, without start-up)."""
    from mlflow.tracking import MlflowClient

    from train.tracking import names

    client = MlflowClient(store)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    run = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1)[0]
    return run.data.metrics[names.IMAGES_PER_S_METRIC]


def pyfunc_loop(model, paths: list[Path]) -> float:
    """images/s of one pyfunc predict per file."""
    from serve.contract import request_frame

    frames = [request_frame(path.read_bytes()) for path in paths]
    model.predict(frames[0])
    started = time.perf_counter()
    for frame in frames:
        model.predict(frame)
    return len(frames) / (time.perf_counter() - started)


def rest_loop(model_uri: str, paths: list[Path], workdir: Path) -> float:
    """images/s of one REST request per file to `mlflow models serve`."""
    import requests

    from bench.serve import png_request

    bodies = [png_request(path.read_bytes()) for path in paths]
    headers = {"Content-Type": "application/json"}
    with Server(model_uri, workdir, "rest") as server, requests.Session() as session:
        session.post(f"{server.url}/invocations", data=bodies[0], headers=headers, timeout=120).raise_for_status()
        started = time.perf_counter()
        for body in bodies:
            session.post(f"{server.url}/invocations", data=body, headers=headers, timeout=120).raise_for_status()
        return len(bodies) / (time.perf_counter() - started)


def batched_against_single(model, paths: list[Path], rounds: int = 5) -> tuple[float, float]:
    """ms per image of one 32-image predict and of 32 single-image predicts (best of `rounds`)."""
    from serve.contract import request_frame

    images = [base64.b64encode(path.read_bytes()).decode("ascii") for path in paths[:32]]
    together = request_frame(images)
    alone = [request_frame(image) for image in images]
    model.predict(together)
    batched, single = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        model.predict(together)
        batched.append((time.perf_counter() - started) * 1000 / len(images))
        started = time.perf_counter()
        for frame in alone:
            model.predict(frame)
        single.append((time.perf_counter() - started) * 1000 / len(images))
    return min(batched), min(single)


def measure(arguments: argparse.Namespace, workdir: Path) -> dict:
    from serve.loaded import LoadedModel

    store = os.environ["MLFLOW_TRACKING_URI"]
    model_uri = register_model(arguments.image_size)
    files = workdir / "files"
    paths = write_files(files, arguments.files, arguments.file_size)
    results: dict = {}
    seconds, results["memory_small_mb"] = run_batch(batch_command(model_uri, files, workdir / "local.parquet"), workdir)
    results["local"], results["local_wall"] = engine_rate(store), seconds
    model = LoadedModel.load(model_uri).pyfunc
    results["batched_ms"], results["single_ms"] = batched_against_single(model, paths)
    results["pyfunc_loop"] = pyfunc_loop(model, paths)
    if not arguments.skip_rest:
        results["rest"] = rest_loop(model_uri, paths, workdir)
    if not arguments.skip_spark:
        spark = ["--engine", "spark", "--spark-master", "local[2]"]
        seconds, _ = run_batch(batch_command(model_uri, files, workdir / "spark.parquet", *spark), workdir)
        results["spark"], results["spark_wall"] = engine_rate(store), seconds
    if arguments.memory_files:
        large = workdir / "large"
        linked_copies(files, large, max(1, arguments.memory_files // arguments.files))
        count = sum(1 for _ in large.rglob("*.png"))
        command = batch_command(model_uri, large, workdir / "large.parquet")
        results["memory_large_wall"], results["memory_large_mb"] = run_batch(command, workdir)
        results["memory_large_files"] = count
    return results


def report(arguments: argparse.Namespace, results: dict) -> None:
    count = arguments.files
    print(
        f"\n{count} PNGs of {arguments.file_size} px, small_cnn at {arguments.image_size} px, "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )
    print(f"{'':44} {'images/s':>9} {'x loop':>7}")
    loop = results["pyfunc_loop"]
    rows = [
        ("local engine (scoring, as its run logs it)", results["local"]),
        ("per-file pyfunc loop (in-process)", loop),
        ("one REST request per file (models serve)", results.get("rest")),
        ("Spark local[2] (scoring, as its run logs it)", results.get("spark")),
    ]
    for label, rate in rows:
        if rate is not None:
            print(f"{label:44} {rate:>9.1f} {rate / loop:>6.1f}x")
    print(f"local engine wall time with start-up: {results['local_wall']:.1f} s")
    if "spark_wall" in results:
        print(f"Spark local[2] wall time with start-up: {results['spark_wall']:.1f} s")
    print(f"local engine / per-file pyfunc loop = {results['local'] / loop:.1f}x (target >= 5x)")
    batched, single = results["batched_ms"], results["single_ms"]
    print(
        f"32-image predict {batched:.2f} ms/image, 32 single-image predicts {single:.2f} ms/image: "
        f"{single / batched:.1f}x (target >= 2x)"
    )
    if "memory_large_mb" in results:
        small, large = results["memory_small_mb"], results["memory_large_mb"]
        print(
            f"local engine peak memory: {small:.0f} MB on {count} files, {large:.0f} MB on "
            f"{results['memory_large_files']} files: {large / small:.2f}x (target <= 1.5x)"
        )


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as temporary:
        workdir = Path(arguments.workdir or temporary).resolve()
        if workdir.exists() and arguments.workdir:
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        results = measure(arguments, workdir)
        report(arguments, results)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"(this benchmark process itself peaked at {usage.ru_maxrss / 1024:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
