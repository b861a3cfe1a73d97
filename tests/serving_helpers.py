"""Helpers shared by the tests of the served model: DICOM writing, request bodies, ports; reads and writes tmp files."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import numpy as np
import pytest
import requests

MODEL_NAME = "served-classifier"
MAX_PIXELS = 1_000_000


@contextlib.contextmanager
def tracking_at(tracking_uri: str):
    """MLflow tracks into `tracking_uri` inside the block (MLFLOW_TRACKING_URI and mlflow's own setting), as before after."""
    import os

    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    bits_stored: int = 12,
    shape: tuple[int, int] = (64, 64),
) -> Path:
    """A small uncompressed (Explicit VR Little Endian) DICOM file; pixels=None leaves out the pixel data."""
    from dicom_files import image_dataset

    dataset = image_dataset(pixels, photometric=photometric, bits_stored=bits_stored, window=window, shape=shape)
    dataset.save_as(path, enforce_file_format=True)
    return path


def cell_image(size: int, seed: int) -> np.ndarray:
    from train.data.synthetic import render_cell

    return render_cell(np.random.default_rng(seed), size, {"dots": seed % 2 == 0})


def encode(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def invoke(url: str, body, *, timeout: float = 120) -> requests.Response:
    if isinstance(body, bytes | str):
        return requests.post(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=timeout
        )
    return requests.post(f"{url}/invocations", json=body, timeout=timeout)


def split_body(images: list, params: dict | None = None, column: str = "image") -> dict:
    body: dict = {"dataframe_split": {"columns": [column], "data": [[image] for image in images]}}
    if params is not None:
        body["params"] = params
    return body


def load_pyfunc(model: dict):
    """The pyfunc model of a fixture's `{"tracking_uri", "uri"}`, loaded from its tracking store."""
    import mlflow

    mlflow.set_tracking_uri(model["tracking_uri"])
    try:
        return mlflow.pyfunc.load_model(model["uri"])
    finally:
        mlflow.set_tracking_uri(None)


@contextlib.contextmanager
def running_server(command: list[str], *, ready_url: str, log_path: Path, env: dict, cwd: Path, timeout: float = 240):
    """serve.client.running_process for tests: a server that does not come up fails the test with its log."""
    from serve.client import ServerError, running_process

    try:
        with running_process(
            command, ready_url=ready_url, log_path=log_path, env=env, cwd=cwd, timeout=timeout
        ) as process:
            yield process
    except ServerError as error:
        pytest.fail(str(error))


# Runs `python -m MODULE` with an audit hook that reports every file opened for writing once the process listens
# on the port its PORT_FLAG names, so a test can prove that patient data never reaches the disk.
AUDITED_RUNNER = """
import os, runpy, sys
port = int(sys.argv[sys.argv.index("PORT_FLAG") + 1])
armed = []
def hook(event, args):
    if event == "open" and armed:
        path, mode, flags = args
        writing = any(letter in str(mode or "") for letter in "wax+") or (flags or 0) & (os.O_WRONLY | os.O_RDWR)
        if writing:
            print(f"AUDIT write-open {path!r}", file=sys.stderr, flush=True)
    elif event == "socket.bind" and isinstance(args[1], tuple) and args[1][1:2] == (port,):
        armed.append(True)
sys.addaudithook(hook)
sys.argv = ["MODULE", *sys.argv[1:]]
runpy.run_module("MODULE", run_name="__main__", alter_sys=True)
"""


def audited_runner(module: str, port_flag: str) -> str:
    """The `python -c` code that runs `module` under the write audit (AUDITED_RUNNER)."""
    return AUDITED_RUNNER.replace("PORT_FLAG", port_flag).replace("MODULE", module)
