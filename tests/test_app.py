"""The clinician page app: `python -m serve.app` as a real uvicorn server over HTTP, its /metrics, its privacy, and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image, PngImagePlugin
from serving_helpers import invoke, load_pyfunc, split_body

RED, GREEN, WHITE = (255, 0, 0), (0, 255, 0), (255, 255, 255)
# A name that must never reach the server's log.
PATIENT_FILE_NAME = "DOE_JOHN_MRN0042.png"


def png_bytes(image: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray) -> bytes:
    """A 12-bit MONOCHROME2 DICOM (Explicit VR Little Endian, no window) of `pixels`."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.PatientID = "DX", "SYNTHETIC"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bright_square_dicom() -> bytes:
    """64 px, dark, with a bright 20 px square in the top right: the spot model finds `bright_spot`."""
    pixels = np.full((64, 64), 100, dtype=np.uint16)
    pixels[6:26, 38:58] = 4000
    return dicom_bytes(pixels)


@pytest.fixture(scope="module")
def red_png(paint_squares) -> bytes:
    return png_bytes(paint_squares(64, {RED: (6, 38, 20)}))


def post_file(url: str, data: bytes, name: str = "image.png", params: dict | None = None, **kwargs):
    return requests.post(f"{url}/predict", params=params, files={"file": (name, data)}, timeout=120, **kwargs)


def metric_samples(url: str, **kwargs) -> dict[tuple, float]:
    """/metrics as {(sample name, sorted label pairs): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(f"{url}/metrics", timeout=30, **kwargs)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict, metric: str, /, **labels) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def spot_pyfunc(spot_model):
    return load_pyfunc(spot_model)


# The command line.


def test_help_answers_without_importing_mlflow_or_tensorflow(repo_root):
    help_text = subprocess.run(
        [sys.executable, "-m", "serve.app", "--help"], cwd=repo_root, capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0 and "--max-upload-mb" in help_text.stdout and "--auth" in help_text.stdout
    probe = "import sys, serve.app; print(sorted({'tensorflow', 'keras', 'mlflow', 'fastapi'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", probe], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "[]", imported.stderr


def test_a_model_that_is_not_registered_is_a_one_line_error(repo_root, spot_model):
    env = {**os.environ, "MLFLOW_TRACKING_URI": spot_model["tracking_uri"]}
    result = subprocess.run(
        [sys.executable, "-m", "serve.app", "--model", "models:/no-such-model@champion"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: model URI 'models:/no-such-model@champion' does not resolve"), result.stderr[
        -2000:
    ]


def test_basic_auth_takes_the_tracking_server_credentials(tmp_path):
    from serve.app import Credentials, credentials_from_environment

    assert credentials_from_environment({"MLFLOW_TRACKING_USERNAME": "ana", "MLFLOW_TRACKING_PASSWORD": "pw"}) == (
        Credentials("ana", "pw")
    )
    secret = tmp_path / "mlflow_admin_password"
    secret.write_text("from-the-secret\n")
    assert credentials_from_environment({"MLFLOW_ADMIN_PASSWORD_FILE": str(secret)}) == Credentials(
        "admin", "from-the-secret"
    )
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD"):
        credentials_from_environment({})


# The server over HTTP.


@pytest.mark.slow
def test_health_and_info_name_the_champion_version(spot_app, spot_model, spot_pyfunc):
    health = requests.get(f"{spot_app['url']}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {
        "status": "ok",
        "model": {"name": spot_model["name"], "version": "1"},
    }
    info = requests.get(f"{spot_app['url']}/info", timeout=10).json()
    assert info["model"]["aliases"] == ["champion"] and info["model"]["uri"] == f"models:/{spot_model['name']}"
    assert info["classes"] == spot_model["classes"] and info["explains"] is True
    params = {spec.name: spec.default for spec in spot_pyfunc.metadata.get_params_schema()}
    assert info["threshold"] == params["threshold"] and info["max_upload_bytes"] == spot_app["max_upload_bytes"]
    assert set(info["params"]) == set(params) and {"threshold", "explain", "explain_class"} <= set(params)


@pytest.mark.slow
def test_predict_answers_as_the_pyfunc_does_for_the_same_bytes(spot_app, spot_pyfunc, red_png):
    response = post_file(spot_app["url"], red_png)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    expected = spot_pyfunc.predict(pd.DataFrame({"image": [base64.b64encode(red_png).decode()]})).iloc[0]
    # Every column of the model's answer comes through (thresholds and frame too, where the model has them).
    assert set(body["answer"]) == set(expected.index)
    assert {"red_spot", "green_spot", "bright_spot", "predicted"} <= set(body["answer"])
    assert not [column for column in body["answer"] if column.startswith("gradcam_")]
    for name in ("red_spot", "green_spot", "bright_spot"):
        assert body["answer"][name] == pytest.approx(expected[name], abs=1e-6)
    assert body["predicted"] == ["red_spot"] and body["answer"]["predicted"] == expected["predicted"]
    assert [(f["name"], f["threshold"], f["above_threshold"]) for f in body["findings"]] == [
        ("red_spot", 0.5, True),
        ("green_spot", 0.5, False),
        ("bright_spot", 0.5, False),
    ]
    assert body["model"]["name"] == "spot-classifier" and body["model"]["version"] == "1"
    # The request's threshold is each finding's operating point when the answer has none of its own.
    strict = post_file(spot_app["url"], red_png, params={"threshold": "0.999"}).json()
    assert [f["threshold"] for f in strict["findings"]] == [0.999] * 3 and strict["predicted"] == []


@pytest.mark.slow
def test_mlflow_scoring_protocol_answers_exactly_as_mlflow_models_serve(spot_app, spot_scoring_server, red_png):
    """/invocations, /ping and /version of the app are MLflow's own, on the app's one loaded model."""
    image = base64.b64encode(red_png).decode("ascii")
    for body in (split_body([image]), split_body([image, image], params={"threshold": 0.9})):
        ours, theirs = invoke(spot_app["url"], body), invoke(spot_scoring_server, body)
        assert ours.status_code == theirs.status_code == 200
        assert ours.json() == theirs.json()
    bad = split_body([base64.b64encode(b"not an image").decode("ascii")])
    before = metric_samples(spot_app["url"])
    ours, theirs = invoke(spot_app["url"], bad), invoke(spot_scoring_server, bad)
    assert ours.status_code == theirs.status_code == 400
    assert ours.json() == theirs.json()
    for route in ("/ping", "/version"):
        ours = requests.get(f"{spot_app['url']}{route}", timeout=10)
        theirs = requests.get(f"{spot_scoring_server}{route}", timeout=10)
        assert (ours.status_code, ours.text) == (theirs.status_code, theirs.text)
    # The bad request is counted once, whatever the module's app answered before this test.
    labels = {"method": "POST", "route": "/invocations", "status": "400"}
    after = metric_samples(spot_app["url"])
    assert (
        sample(after, "medimg_http_requests_total", **labels) - sample(before, "medimg_http_requests_total", **labels)
        == 1
    )


def test_predict_explain_returns_a_heatmap_hottest_in_the_finding(spot_app, red_png):
    body = post_file(spot_app["url"], red_png, params={"explain": "true"}).json()
    answer = body["answer"]
    assert answer["gradcam_class"] == "red_spot"
    alpha = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["gradcam_overlay"]))))[..., 3]
    row, column = np.unravel_index(int(alpha.argmax()), alpha.shape)
    # The red square covers rows 6-25 and columns 38-57 of 64, i.e. 3-12 and 19-28 of the 32 px model input.
    assert 3 <= row <= 12 and 19 <= column <= 28
    green = post_file(spot_app["url"], red_png, params={"explain": "true", "explain_class": "green_spot"}).json()
    assert green["answer"]["gradcam_class"] == "green_spot"


@pytest.mark.slow
def test_a_dicom_upload_comes_back_as_the_image_the_model_saw(spot_app):
    response = post_file(spot_app["url"], bright_square_dicom(), name="scan.dcm", params={"explain": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predicted"] == ["bright_spot"]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["answer"]["gradcam_input"]))))
    assert seen.shape == (32, 32, 3)
    assert seen[8, 24].min() > 240 and seen[24, 8].max() < 15


BAD_UPLOADS = {
    # name: (file name, bytes or "red.png" or "half of red.png", query params, reason, text of the message)
    "text_file": ("notes.txt", b"not an image at all " * 10, None, "not_an_image", "not a PNG, JPEG"),
    "empty_file": ("empty.png", b"", None, "empty_file", "the file is empty"),
    "truncated_png": ("half.png", "half of red.png", None, "undecodable_image", "cannot be decoded"),
    "dicom_without_pixels": ("header.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00" * 8, None, "unreadable_dicom", "DICOM"),
    "unknown_param": ("image.png", "red.png", {"frames": "2"}, "bad_param", "unknown parameter 'frames'"),
    "bad_threshold": ("image.png", "red.png", {"threshold": "high"}, "bad_param", "must be a double"),
    "bad_explain_class": (
        "image.png",
        "red.png",
        {"explain": "true", "explain_class": "x"},
        "bad_param",
        "explain_class",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_uploads_are_400_with_a_reason_and_one_line(spot_app, red_png, name):
    file_name, data, params, reason, text = BAD_UPLOADS[name]
    data = {"red.png": red_png, "half of red.png": red_png[: len(red_png) // 2]}.get(data, data)
    response = post_file(spot_app["url"], data, name=file_name, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason
    message = response.json()["error"]
    assert text in message and "\n" not in message and not message.startswith("row 0")


@pytest.mark.slow
def test_a_request_without_a_file_field_or_a_multipart_body_is_400(spot_app, red_png):
    no_file = requests.post(f"{spot_app['url']}/predict", files={"picture": ("a.png", red_png)}, timeout=30)
    assert no_file.status_code == 400 and no_file.json()["reason"] == "no_file"
    raw = requests.post(f"{spot_app['url']}/predict", data=red_png, timeout=30)
    assert raw.status_code == 400 and raw.json()["reason"] == "not_multipart"
    headers = {"Content-Type": "multipart/form-data; boundary=XYZ"}
    malformed = requests.post(f"{spot_app['url']}/predict", data=b"no boundary here", headers=headers, timeout=30)
    assert malformed.status_code == 400 and malformed.json()["reason"] == "bad_upload"


@pytest.mark.slow
def test_an_oversize_upload_is_413_and_the_server_keeps_serving(spot_app, red_png):
    oversize = np.random.default_rng(0).bytes(spot_app["max_upload_bytes"] + 100_000)
    response = post_file(spot_app["url"], oversize, name="big.png")
    assert response.status_code == 413
    assert response.json() == {"error": "the upload is larger than the limit of 3 MB", "reason": "too_large"}
    assert post_file(spot_app["url"], red_png).status_code == 200


@pytest.mark.slow
def test_metrics_count_requests_rejections_scores_and_name_the_model(spot_app, red_png):
    url = spot_app["url"]
    before = metric_samples(url)
    assert post_file(url, red_png).status_code == 200
    assert post_file(url, red_png, params={"explain": "true"}).status_code == 200
    assert post_file(url, b"plain text", name="notes.txt").status_code == 400
    after = metric_samples(url)

    def moved(metric, /, **labels):
        return sample(after, metric, **labels) - sample(before, metric, **labels)

    assert moved("medimg_http_requests_total", route="/predict", method="POST", status="200") == 2
    assert moved("medimg_http_requests_total", route="/predict", method="POST", status="400") == 1
    assert moved("medimg_http_request_duration_seconds_count", route="/predict") == 3
    assert moved("medimg_rejected_inputs_total", reason="not_an_image") == 1
    for name in ("red_spot", "green_spot", "bright_spot"):
        assert moved("medimg_predicted_probability_count", **{"class": name}) == 2
    # red_spot scores above 0.9, so both answers land in the histogram's top bucket only.
    assert moved("medimg_predicted_probability_bucket", **{"class": "red_spot", "le": "0.9"}) == 0
    assert moved("medimg_predicted_probability_bucket", **{"class": "red_spot", "le": "1.0"}) == 2
    assert moved("medimg_findings_total", **{"class": "red_spot"}) == 2
    assert moved("medimg_findings_total", **{"class": "green_spot"}) == 0
    assert moved("medimg_prediction_duration_seconds_count", explain="true") == 1
    model = {"name": "spot-classifier", "version": "1", "aliases": "champion", "uri": "models:/spot-classifier"}
    assert sample(after, "medimg_model_info", **model, reference="none") == 1
    assert 0 < sample(before, "medimg_process_uptime_seconds") < sample(after, "medimg_process_uptime_seconds")
    assert sample(after, "process_start_time_seconds") > 0


@pytest.mark.slow
def test_a_model_logged_without_a_monitoring_reference_serves_and_says_so(spot_app, red_png, promtool):
    url = spot_app["url"]
    before = metric_samples(url)
    assert post_file(url, red_png).status_code == 200
    response = requests.get(f"{url}/metrics", timeout=30)
    after = metric_samples(url)
    model = {"model_name": "spot-classifier", "model_version": "1"}
    assert sample(after, "medimg_monitoring_reference_available", **model) == 0
    assert (
        sample(after, "medimg_monitoring_answers_total", **model)
        - sample(before, "medimg_monitoring_answers_total", **model)
        == 1
    )
    assert not [name for name, _ in after if name.startswith(("medimg_drift_", "medimg_estimated_"))]
    monitoring = requests.get(f"{url}/info", timeout=10).json()["monitoring"]
    assert monitoring["reference"] == "none" and set(monitoring["figures"]) == {"reference_available", "window_answers"}
    # The exposition of a live app passes Prometheus's own linter.
    check = subprocess.run([promtool, "check", "metrics"], input=response.content, capture_output=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout.decode() + check.stderr.decode()


@pytest.mark.slow
def test_uploads_never_reach_the_disk_or_the_log(spot_app, paint_squares):
    marker = f"medimg-privacy-marker-{time.time_ns()}"
    noise = np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    # Over 1 MB, where Starlette's own form parser would spool the upload to a temporary file.
    large = png_bytes(noise, {"Comment": marker})
    assert 1_000_000 < len(large) < spot_app["max_upload_bytes"]
    assert post_file(spot_app["url"], large, name=PATIENT_FILE_NAME).status_code == 200
    assert post_file(spot_app["url"], b"not an image", name=PATIENT_FILE_NAME).status_code == 400
    log = spot_app["log"].read_text(errors="replace")
    assert PATIENT_FILE_NAME not in log and marker not in log
    # The audit hook of the app process reports every file opened for writing once it listens.
    assert "AUDIT write-open" not in log, [line for line in log.splitlines() if "AUDIT" in line][:5]
    for folder in (spot_app["cwd"], spot_app["tmpdir"]):
        for path in folder.rglob("*"):
            assert not path.is_file() or marker.encode() not in path.read_bytes(), path


def test_basic_auth_guards_everything_but_health(spot_pyfunc, red_png, unused_port):
    import uvicorn

    from serve.app import Credentials, ModelInfo, ServedModel, create_app

    served = ServedModel(spot_pyfunc, ModelInfo(uri="models:/spot-classifier/1", name="spot-classifier", version="1"))
    app = create_app(served, max_upload_bytes=10**6, credentials=Credentials("admin", "s3cret:with colon"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=unused_port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{unused_port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        for path in ("/", "/info", "/metrics", "/static/app.js"):
            refused = requests.get(f"{url}{path}", timeout=10)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Basic realm="medimg"', path
        assert post_file(url, red_png).status_code == 401
        assert post_file(url, red_png, auth=("admin", "wrong")).status_code == 401
        allowed = post_file(url, red_png, auth=("admin", "s3cret:with colon"))
        assert allowed.status_code == 200 and allowed.json()["predicted"] == ["red_spot"]
        samples = metric_samples(url, auth=("admin", "s3cret:with colon"))
        assert sample(samples, "medimg_http_requests_total", route="/predict", method="POST", status="401") == 2
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_class_operating_point_in_the_answer_wins_and_unknown_columns_pass_through(spot_pyfunc, red_png):
    """The contract with per-class operating points (threshold_<column>) and multi-frame DICOM (frame)."""
    from serve.app import ModelInfo, ServedModel

    class WithOperatingPoints:
        """The real model, answering as a later version will: a threshold_<column> and a frame column."""

        metadata = spot_pyfunc.metadata

        def predict(self, frame, params=None):
            return spot_pyfunc.predict(frame, params=params).assign(threshold_red_spot=0.999, frame=0)

    served = ServedModel(WithOperatingPoints(), ModelInfo(uri="models:/spot-classifier/1"))
    assert served.classes == ["red_spot", "green_spot", "bright_spot"]
    body = served.answer(red_png, {"threshold": 0.1})
    findings = {finding["name"]: finding for finding in body["findings"]}
    assert findings["red_spot"]["threshold"] == 0.999 and findings["red_spot"]["above_threshold"] is False
    assert findings["green_spot"]["threshold"] == 0.1 and findings["green_spot"]["above_threshold"] is True
    assert body["answer"]["frame"] == 0 and body["answer"]["threshold_red_spot"] == 0.999


def test_a_fault_of_the_server_while_decoding_is_a_500_not_the_clients_400(spot_pyfunc, red_png, monkeypatch, capsys):
    """Only bad input is a 400: an unexpected exception in the decoder is a 500 whose log names it, not the image."""
    import serve.preprocess
    from serve.app import ModelInfo, Rejection, ServedModel

    def broken(*arguments, **options):
        raise RuntimeError("decoder state lost for patient-image-7")

    monkeypatch.setattr(serve.preprocess, "load_image_tensor", broken)
    served = ServedModel(spot_pyfunc, ModelInfo(uri="models:/spot-classifier/1"))
    with pytest.raises(Rejection) as rejected:
        served.answer(red_png, {})
    assert (rejected.value.status, rejected.value.reason) == (500, "internal_error")
    log = capsys.readouterr().err
    assert "prediction failed: RuntimeError at " in log and "in broken" in log
    assert "patient-image-7" not in log and "patient-image-7" not in rejected.value.message
    # Truncated bytes stay the client's fault.
    monkeypatch.undo()
    with pytest.raises(Rejection) as truncated:
        served.answer(red_png[: len(red_png) // 2], {})
    assert (truncated.value.status, truncated.value.reason) == (400, "undecodable_image")


# The page in a real browser.


def open_page(browser, url: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/")
    WebDriverWait(browser, 30).until(lambda driver: "version 1" in driver.find_element(By.ID, "model").text)


def choose_file(browser, path: Path, wait_for: str = "result"):
    """Choose a file in the page's file input and wait until the result or the message shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 60).until(lambda driver: driver.find_element(By.ID, wait_for).is_displayed())


def findings_table(browser) -> dict[str, list[str]]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#findings tbody tr")
    return {row.find_element(By.TAG_NAME, "td").text: row.text.split() for row in rows}


@pytest.mark.slow
def test_page_scores_a_png_and_shows_findings_heatmap_and_model(spot_app, browser, red_png, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image_path = tmp_path / "red.png"
    image_path.write_bytes(red_png)
    open_page(browser, spot_app["url"])
    assert browser.find_element(By.ID, "model").text == "Model: spot-classifier version 1 @champion"
    choose_file(browser, image_path)

    table = findings_table(browser)
    assert set(table) == {"red_spot", "green_spot", "bright_spot"}
    assert table["red_spot"][-1] == "positive" and table["green_spot"][-1] == "negative"
    assert table["red_spot"][1] == "99.8%" and table["red_spot"][2] == "50.0%"
    assert browser.find_element(By.ID, "predicted").text == "Predicted: red_spot"
    assert "evidence for red_spot" in browser.find_element(By.ID, "explained").text
    overlay = browser.find_element(By.ID, "overlay")
    assert overlay.is_displayed()
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) == 32
    image = browser.find_element(By.ID, "image")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 64
    # The overlay covers the image exactly, and the slider sets its opacity.
    assert overlay.size == image.size and overlay.location == image.location
    slider = browser.find_element(By.ID, "opacity")
    browser.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert overlay.value_of_css_property("opacity") == "0.8"
    assert browser.find_element(By.ID, "opacity-value").text == "80%"

    # Asking for another class's heatmap scores the same file again.
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "explain-class")).select_by_value("green_spot")
    WebDriverWait(browser, 60).until(
        lambda driver: "evidence for green_spot" in driver.find_element(By.ID, "explained").text
    )
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] >= 1000


@pytest.mark.slow
def test_page_shows_a_dicom_as_the_image_the_model_saw(spot_app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "scan.dcm"
    path.write_bytes(bright_square_dicom())
    open_page(browser, spot_app["url"])
    choose_file(browser, path)
    assert browser.find_element(By.ID, "predicted").text == "Predicted: bright_spot"
    assert findings_table(browser)["bright_spot"][-1] == "positive"
    image = browser.find_element(By.ID, "image")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 32
    assert browser.find_element(By.ID, "overlay").is_displayed()
    browser.save_screenshot(str(tmp_path / "dicom.png"))


@pytest.mark.slow
def test_page_says_what_is_wrong_with_a_bad_or_oversize_file(spot_app, browser, red_png, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, spot_app["url"])
    good, bad = tmp_path / "red.png", tmp_path / "notes.txt"
    good.write_bytes(red_png)
    bad.write_text("these are notes, not an image")
    choose_file(browser, good)
    choose_file(browser, bad, wait_for="message")
    message = browser.find_element(By.ID, "message").text
    assert message == "notes.txt cannot be scored: not a PNG, JPEG, BMP, GIF or DICOM image"
    # The previous file's findings are gone, so they cannot be read as this file's.
    assert not browser.find_element(By.ID, "result").is_displayed()

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (spot_app["max_upload_bytes"] + 1))
    choose_file(browser, big, wait_for="message")
    assert "big.png is 3.0 MB, larger than the limit of 3 MB" in browser.find_element(By.ID, "message").text
    browser.save_screenshot(str(tmp_path / "message.png"))
