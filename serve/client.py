"""Scores image files with a served medimg model over REST: reads PNG, JPEG and DICOM files, prints a table of findings.

    python -m serve.client --url http://127.0.0.1:5001 a.png b.jpg c.dcm [--threshold 0.3] [--top 3] [--frame 0]

The server is `mlflow models serve -m models:/<name>@champion` (docs/SERVING.md). Files go
in requests of --batch-size images; when the server rejects a request, its files are sent one
by one so each bad file gets its own error line and the good ones still get their findings.
Exit code: 0 all files scored, 1 some file failed, 2 the server could not be reached or answered
with an unexpected error.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from serve.common import free_port, stop_process_group
from serve.contract import FRAME_PARAM, IMAGE_COLUMN, THRESHOLD_PARAM, join_labels, read_answer

MESSAGE_LIMIT = 300
# `mlflow models serve` loads TensorFlow and the model before it answers: a cold start takes a while.
SERVER_START_TIMEOUT_S = 300


class ServerError(RuntimeError):
    """The server is unreachable or failed in a way that is not about one request's images."""


class RejectedRequest(ValueError):
    """The server answered HTTP 400: something in the request is bad; the message says what."""


@dataclass
class FileResult:
    """The findings for one file, or the reason it has none."""

    path: str
    probabilities: dict[str, float] = field(default_factory=dict)
    # The threshold each finding was decided at (the model's operating point, or the request's).
    thresholds: dict[str, float] = field(default_factory=dict)
    predicted: str = ""
    frame: int = 0
    error: str = ""


def invocations_url(url: str) -> str:
    """Accept the server's base address (http://host:port) or its /invocations address."""
    url = url.rstrip("/")
    return url if url.endswith("/invocations") else url + "/invocations"


def error_message(response) -> str:
    """One line from an error response: the `message` field, without MLflow's repeat of the request data."""
    try:
        message = str(response.json().get("message", ""))
    except ValueError:
        message = response.text
    # MLflow prefixes some messages with "Failed to predict data '<request>'. Error: "; the cause is the last part.
    if "Error: " in message:
        message = message.rsplit("Error: ", 1)[1]
    message = " ".join(message.split()) or f"HTTP {response.status_code}"
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."


def post_images(
    url: str, images: list[str], *, threshold: float | None, timeout: float, session, frame: int | None = None
) -> list[dict]:
    """POST base64 images as `dataframe_split`; returns one prediction dict per image."""
    import requests

    body: dict = {"dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[image] for image in images]}}
    params = {name: value for name, value in ((THRESHOLD_PARAM, threshold), (FRAME_PARAM, frame)) if value is not None}
    if params:
        body["params"] = params
    try:
        response = session.post(invocations_url(url), json=body, timeout=timeout)
    except requests.RequestException as error:
        raise ServerError(f"cannot reach {invocations_url(url)}: {type(error).__name__}: {error}") from None
    if response.status_code == 400:
        raise RejectedRequest(error_message(response))
    if response.status_code != 200:
        raise ServerError(f"server answered HTTP {response.status_code}: {error_message(response)}")
    predictions = response.json()
    predictions = predictions.get("predictions", predictions) if isinstance(predictions, dict) else predictions
    if not isinstance(predictions, list) or len(predictions) != len(images):
        raise ServerError(f"server answered {type(predictions).__name__} for {len(images)} image(s); is it medimg?")
    return predictions


def to_result(path: str, prediction: dict) -> FileResult:
    """One answer row of the server, read by the answer contract."""
    answer = read_answer(prediction)
    return FileResult(
        path=path,
        probabilities=answer.probabilities,
        thresholds=answer.thresholds,
        predicted=join_labels(answer.predicted),
        frame=answer.frame,
    )


def score_files(
    url: str,
    paths: list[str],
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    timeout: float = 120.0,
    session=None,
    frame: int | None = None,
) -> list[FileResult]:
    """Findings for every file, in the order given; files that cannot be read or scored carry an error.

    frame: the 0-based frame of multi-frame DICOM files to score (None: the server's default, the middle one).
    """
    import requests

    session = session or requests.Session()
    options = dict(threshold=threshold, timeout=timeout, session=session, frame=frame)
    results: dict[int, FileResult] = {}
    readable: list[tuple[int, str, str]] = []
    for index, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            results[index] = FileResult(path=path, error=f"cannot read file: {error.strerror or error}")
            continue
        if not data:
            results[index] = FileResult(path=path, error="file is empty")
            continue
        readable.append((index, path, base64.b64encode(data).decode("ascii")))
    for start in range(0, len(readable), max(1, batch_size)):
        chunk = readable[start : start + max(1, batch_size)]
        try:
            predictions = post_images(url, [image for _, _, image in chunk], **options)
        except RejectedRequest as rejected:
            if len(chunk) == 1:
                index, path, _ = chunk[0]
                results[index] = FileResult(path=path, error=re.sub(r"^row \d+: ", "", str(rejected)))
                continue
            # One bad file fails the whole request; score the files alone to tell which.
            for index, path, image in chunk:
                try:
                    (prediction,) = post_images(url, [image], **options)
                    results[index] = to_result(path, prediction)
                except RejectedRequest as single:
                    results[index] = FileResult(path=path, error=re.sub(r"^row \d+: ", "", str(single)))
            continue
        for (index, path, _), prediction in zip(chunk, predictions, strict=True):
            results[index] = to_result(path, prediction)
    return [results[index] for index in range(len(paths))]


def format_table(results: list[FileResult], top: int = 3) -> str:
    """A plain-text table: file, predicted label(s), and the `top` most probable findings."""
    rows = [("FILE", "PREDICTED", "TOP FINDINGS")]
    for result in results:
        if result.error:
            rows.append((result.path, "ERROR", result.error))
            continue
        ranked = sorted(result.probabilities.items(), key=lambda item: item[1], reverse=True)[: max(1, top)]
        findings = "  ".join(
            f"{name} {probability:.3f}"
            + (f" (threshold {result.thresholds[name]:.3f})" if name in result.thresholds else "")
            for name, probability in ranked
        )
        rows.append((result.path, result.predicted or "(none)", findings))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip() for row in rows)


@contextlib.contextmanager
def running_process(command: list[str], *, ready_url: str, log_path, env: dict, cwd=None, timeout: float = 300):
    """Run a server command in its own process group until `ready_url` answers 200; stop the whole group on exit.

    Raises ServerError (with the end of the log at `log_path`) when the command exits or does not answer in time.
    """
    import subprocess
    import time

    import requests

    with open(log_path, "wb") as log:
        # A new session makes the server and any worker it starts one process group, stopped together below.
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = Path(log_path).read_text(errors="replace")[-3000:]
                raise ServerError(f"{command[0]} exited with {process.returncode}:\n{tail}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                tail = Path(log_path).read_text(errors="replace")[-3000:]
                raise ServerError(f"{ready_url} did not answer within {timeout:.0f} s:\n{tail}")
            time.sleep(0.5)
        yield process
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def temporary_server(model_uri: str, timeout: float = SERVER_START_TIMEOUT_S):
    """`mlflow models serve` of the version `model_uri` resolves to (serve.model_uri), on a free local port; yields its URL.

    The server runs with this Python's folder first on PATH (MLflow starts `uvicorn` by name), so it works
    from a shell where the virtual environment is not activated. Stopped, with its workers, on exit.
    """
    import os
    import tempfile

    port = free_port()
    from serve.model_uri import ModelUriError, resolve_model_uri

    try:
        resolved = resolve_model_uri(model_uri)
    except ModelUriError as error:
        raise ServerError(str(error)) from None
    environment = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", resolved.load_uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    print(
        f"starting mlflow models serve -m {resolved.load_uri} ({resolved.label}) on {url} ...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory() as workdir:
        log_path = Path(workdir) / "server.log"
        try:
            with running_process(command, ready_url=f"{url}/ping", log_path=log_path, env=environment, timeout=timeout):
                yield url
        except ServerError as error:
            # The log's last line says why; the whole log stays out of the one-line error.
            lines = str(error).strip().splitlines()
            raise ServerError(f"{lines[0]} {lines[-1][:MESSAGE_LIMIT]}" if len(lines) > 1 else lines[0]) from None


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve.client", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="PNG, JPEG or DICOM files")
    parser.add_argument("--url", default="http://127.0.0.1:5001", help="server address (default: %(default)s)")
    parser.add_argument(
        "--serve",
        metavar="MODEL_URI",
        default=None,
        help="start `mlflow models serve` for this model on a free port for this call, instead of --url",
    )
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    parser.add_argument("--top", type=int, default=3, help="findings shown per file (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per request (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")
    parser.add_argument("--frame", type=int, default=None, help="0-based frame of multi-frame DICOMs (default: middle)")
    arguments = parser.parse_args(argv)
    if arguments.threshold is not None and not 0.0 <= arguments.threshold <= 1.0:
        parser.error(f"--threshold must be between 0 and 1, got {arguments.threshold}")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        if arguments.serve:
            with temporary_server(arguments.serve) as url:
                results = score_arguments(arguments, url)
        else:
            results = score_arguments(arguments, arguments.url)
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(results, top=arguments.top))
    failed = sum(1 for result in results if result.error)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be scored", file=sys.stderr)
        return 1
    return 0


def score_arguments(arguments: argparse.Namespace, url: str) -> list[FileResult]:
    return score_files(
        url,
        arguments.files,
        threshold=arguments.threshold,
        batch_size=arguments.batch_size,
        timeout=arguments.timeout,
        frame=arguments.frame,
    )


if __name__ == "__main__":
    sys.exit(main())
