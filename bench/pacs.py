"""Benchmarks the PACS worker end to end: trains (or takes) a model, starts Orthanc and `python -m serve.pacs`, sends single-image studies with storescu, prints the seconds until each SR is retrievable over QIDO-RS.

One study at a time: a 12-bit CR radiograph (2,000 x 2,000 pixels by default, uncompressed, as a modality
sends it) is sent with DCMTK's storescu; the clock starts when storescu returns and stops when QIDO-RS
lists the study's Comprehensive SR. The worker runs with its default settings (Orthanc change feed, polling
every --poll-seconds) and scores with Grad-CAM, the way it runs in a hospital. Target: median under 5 s.
Needs Debian's orthanc, orthanc-dicomweb and dcmtk. Usage (a temporary sqlite store is used unless
--model-uri and MLFLOW_TRACKING_URI are given):

    .venv/bin/python bench/pacs.py --studies 20
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MODEL_NAME = "bench-pacs-classifier"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    from serve.pacs.settings import DEFAULT_POLL_SECONDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20, help="single-image studies sent, one after the other")
    parser.add_argument("--model-uri", default="", help="a registered medimg model (default: train a small_cnn)")
    parser.add_argument("--image-size", type=int, default=224, help="model input size when training one")
    parser.add_argument("--pixels", type=int, default=2000, help="rows and columns of each sent radiograph")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help="the worker's poll interval")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one SR before giving up")
    parser.add_argument("--workdir", default="", help="folder for the store, Orthanc and logs (default: temporary)")
    return parser.parse_args(argv)


def train_model(image_size: int, workdir: Path) -> str:
    """A quickly trained small_cnn registered as MODEL_NAME@champion; its accuracy does not matter for timing."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from train.job.trainer import train
    from train.settings import MainSettings

    client = MlflowClient()
    if client.get_experiment_by_name("bench-pacs") is None:
        # The model's files stay in the work folder, beside its tracking store.
        client.create_experiment("bench-pacs", artifact_location=(workdir / "artifacts").as_uri())
    mlflow.set_experiment("bench-pacs")
    settings = {"image_size": image_size, "epochs": 1, "batch_size": 16, "max_examples": 64, "augment": "false"}
    train(MainSettings.from_dict({**settings, "register_as": MODEL_NAME}))
    (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
    client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    return f"models:/{MODEL_NAME}@champion"


def write_radiograph_study(folder: Path, number: int, pixels: int) -> Path:
    """A one-image CR study of a smooth 12-bit picture, uncompressed, with synthetic patient attributes."""
    from pydicom.uid import generate_uid

    from tests.dicom_files import image_dataset, radiograph

    dataset = image_dataset(radiograph(pixels, pixels, seed=number), modality="CR")
    dataset.PatientName, dataset.PatientID = f"Bench^Patient{number}", f"BENCH-{number:04d}"
    dataset.PatientBirthDate, dataset.PatientSex = "19700101", "O"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    dataset.StudyDate, dataset.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset.StudyID, dataset.AccessionNumber, dataset.ReferringPhysicianName = "1", f"BENCH{number}", ""
    dataset.SeriesNumber, dataset.InstanceNumber = 1, 1
    path = folder / f"study-{number:03d}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def has_report(client, study_uid: str) -> bool:
    rows = client.search_for_instances(study_uid, fields=["SOPClassUID"])
    return any(row.get("00080016", {}).get("Value", [""])[0] == SR_STORAGE for row in rows)


@contextlib.contextmanager
def running_worker(model_uri: str, orthanc, workdir: Path, poll_seconds: float):
    """`python -m serve.pacs` on the Orthanc's feed until the block ends; waits until its /metrics answers."""
    import requests

    from tests.orthanc import free_port

    port = free_port()
    command = [sys.executable, "-m", "serve.pacs", "--model", model_uri, "--dicomweb", orthanc.dicomweb_url]
    command += ["--state-dir", str(workdir / "state"), "--modalities", "CR,DX", "--metrics-port", str(port)]
    command += ["--poll-seconds", str(poll_seconds)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(workdir / "worker.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{(workdir / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


def measure(orthanc, workdir: Path, arguments: argparse.Namespace) -> list[float]:
    """Seconds from the end of storescu to the SR listed by QIDO-RS, per study."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(orthanc.dicomweb_url)
    seconds = []
    for number in range(1, arguments.studies + 1):
        path = write_radiograph_study(workdir / "studies", number, arguments.pixels)
        study_uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
        orthanc.send([path])
        sent = time.monotonic()
        while not has_report(client, study_uid):
            if time.monotonic() - sent > arguments.timeout:
                raise RuntimeError(f"no SR for study {number} after {arguments.timeout:.0f} s")
            time.sleep(0.05)
        seconds.append(time.monotonic() - sent)
        print(f"study {number:3d}: SR retrievable {seconds[-1]:.2f} s after storescu returned", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tests.orthanc import OrthancServer, missing_tools

    missing = [name for name in missing_tools() if name != "dicom3tools"]
    if missing:
        print(f"install the Debian packages {' '.join(missing)} first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as temporary:
        workdir = Path(arguments.workdir or temporary).resolve()
        (workdir / "studies").mkdir(parents=True, exist_ok=True)
        if not arguments.model_uri or not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        model_uri = arguments.model_uri or train_model(arguments.image_size, workdir)
        orthanc = OrthancServer(workdir / "orthanc")
        orthanc.start()
        try:
            with running_worker(model_uri, orthanc, workdir, arguments.poll_seconds):
                seconds = measure(orthanc, workdir, arguments)
        finally:
            orthanc.stop()
    ordered = sorted(seconds)
    print(
        f"\n{len(seconds)} single-image CR studies of {arguments.pixels}x{arguments.pixels} 12-bit pixels, "
        f"model {model_uri}, worker polling every {arguments.poll_seconds:g} s, with Grad-CAM"
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"seconds from storescu's end to the SR over QIDO-RS: median {statistics.median(seconds):.2f}, "
        f"p90 {ordered[int(0.9 * (len(ordered) - 1))]:.2f}, max {ordered[-1]:.2f} (target: median under 5 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
