"""The served model over REST: a real `mlflow models serve` scores PNG, JPEG and DICOM files and rejects bad input with 400."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from serving_helpers import MAX_PIXELS, cell_image, encode, invoke, split_body, write_dicom

from serve.common import free_port
from serve.preprocess import dicom_to_array, load_image_tensor

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """A PNG, a JPEG and two DICOMs (MONOCHROME2 and MONOCHROME1) of different sizes."""
    folder = tmp_path_factory.mktemp("images")
    files = {}
    Image.fromarray(cell_image(70, 0)).save(folder / "cell.png")
    files["png"] = folder / "cell.png"
    Image.fromarray(cell_image(90, 1)).save(folder / "cell.jpg", quality=92)
    files["jpeg"] = folder / "cell.jpg"
    gray = cell_image(64, 2).mean(axis=-1)
    twelve_bit = np.rint(gray / 255.0 * 3000.0 + 500.0).astype(np.uint16)
    files["dicom"] = write_dicom(folder / "xray.dcm", twelve_bit, window=(2000.0, 3000.0))
    # The same picture stored inverted (MONOCHROME1, low values bright) with the mirrored window.
    files["dicom_monochrome1"] = write_dicom(
        folder / "xray_m1.dcm", 4095 - twelve_bit, photometric="MONOCHROME1", window=(4096.0 - 2000.0, 3000.0)
    )
    return files


# DICOM reading, in-process.


def test_dicom_window_sets_the_contrast_not_the_image_range(tmp_path):
    # Values 1000-1100 inside a window 850-1250: a viewer shows mid-grey, not black to white.
    pixels = np.rint(np.linspace(1000, 1100, 64 * 64)).reshape(64, 64)
    array = dicom_to_array(write_dicom(tmp_path / "narrow.dcm", pixels, window=(1050.0, 400.0)).read_bytes())
    assert array.shape == (64, 64, 3) and array.dtype == np.float32
    expected = ((pixels - 1049.5) / 399.0 + 0.5) * 255.0
    np.testing.assert_allclose(array[..., 0], expected, atol=1e-3)
    assert 90 < array.min() < array.max() < 165


def test_dicom_without_window_stretches_its_range_and_channels_are_equal(tmp_path):
    pixels = np.arange(64 * 64).reshape(64, 64) % 4096
    array = dicom_to_array(write_dicom(tmp_path / "plain.dcm", pixels).read_bytes())
    assert array.min() == 0.0 and array.max() == 255.0
    np.testing.assert_array_equal(array[..., 0], array[..., 2])


def test_monochrome1_is_inverted_to_look_like_monochrome2(image_files):
    monochrome2 = dicom_to_array(image_files["dicom"].read_bytes())
    monochrome1 = dicom_to_array(image_files["dicom_monochrome1"].read_bytes())
    np.testing.assert_allclose(monochrome1, monochrome2, atol=1e-3)
    # The cell (darker than its background) stays darker after the inversion.
    assert monochrome2[32, 32, 0] < monochrome2[2, 2, 0]


def test_dicom_without_pixel_data_is_a_one_line_value_error(tmp_path):
    path = write_dicom(tmp_path / "header_only.dcm", None)
    with pytest.raises(ValueError, match="^DICOM file has no pixel data$"):
        dicom_to_array(path.read_bytes())


# The logged model, in-process.


@pytest.mark.slow
def test_in_process_model_matches_keras_on_each_file(loaded_model, image_files):
    frame = pd.DataFrame({"image": [encode(path) for path in image_files.values()]})
    output = loaded_model.predict(frame)
    assert list(output.columns) == ["parasitized", "predicted", "threshold_parasitized", "frame"]
    assert output["frame"].tolist() == [0, 0, 0, 0]
    classifier = loaded_model.unwrap_python_model()
    tensors = np.stack([np.asarray(load_image_tensor(path.read_bytes(), 32)) for path in image_files.values()])
    # Served probabilities are the Keras outputs through the calibration stored with the model.
    expected = classifier.calibrated(classifier.model.predict(tensors, verbose=0))[:, 0]
    np.testing.assert_allclose(output["parasitized"].to_numpy(), expected, atol=TOLERANCE)
    # MONOCHROME1 and MONOCHROME2 storage of one picture give one answer.
    assert abs(output["parasitized"][2] - output["parasitized"][3]) < 1e-4


@pytest.mark.slow
def test_model_logged_from_code_predicts_like_the_registered_one(loaded_model, image_files, tmp_path, tracking_uri):
    """serve/model_code.py (models from code, no cloudpickle) gives the same model as the logged one."""
    import mlflow

    from serve.pyfunc import CONFIG_ARTIFACT, MODEL_ARTIFACT, MODEL_CODE_PATH, serving_requirements

    repo_root = Path(__file__).resolve().parents[1]
    classifier = loaded_model.unwrap_python_model()
    keras_path = tmp_path / "model.keras"
    classifier.model.save(keras_path)
    config_path = tmp_path / "classifier.json"
    classifier.config.save(str(config_path))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE_PATH),
            artifacts={MODEL_ARTIFACT: str(keras_path), CONFIG_ARTIFACT: str(config_path)},
            code_paths=[str(repo_root / "serve"), str(repo_root / "models")],
            # Pinned as log_classifier pins them: inferring requirements would load the model in a subprocess.
            pip_requirements=serving_requirements(),
        )
    frame = pd.DataFrame({"image": [encode(path) for path in image_files.values()]})
    from_code = mlflow.pyfunc.load_model(info.model_uri).predict(frame)
    pd.testing.assert_frame_equal(from_code, loaded_model.predict(frame), atol=TOLERANCE)


# The REST server.


@pytest.mark.slow
def test_server_scores_png_jpeg_and_dicom_like_the_in_process_model(server, loaded_model, image_files):
    images = [encode(path) for path in image_files.values()]
    response = invoke(server, split_body(images))
    assert response.status_code == 200, response.text
    predictions = pd.DataFrame(response.json()["predictions"])
    expected = loaded_model.predict(pd.DataFrame({"image": images}))
    assert len(predictions) == len(images)
    np.testing.assert_allclose(predictions["parasitized"], expected["parasitized"], atol=TOLERANCE)
    assert predictions["predicted"].tolist() == expected["predicted"].tolist()


@pytest.mark.slow
def test_server_answers_with_the_stored_operating_point_and_a_request_threshold_overrides_it(
    server, loaded_model, image_files
):
    images = [encode(path) for path in image_files.values()]
    records = invoke(server, {"dataframe_records": [{"image": image} for image in images]})
    assert records.status_code == 200, records.text
    rows = records.json()["predictions"]
    probabilities = np.array([row["parasitized"] for row in rows])
    stored = loaded_model.unwrap_python_model().config.thresholds[0]
    assert [row["threshold_parasitized"] for row in rows] == pytest.approx([stored] * len(rows))
    assert [row["predicted"] for row in rows] == ["parasitized" if p >= stored else "uninfected" for p in probabilities]
    for threshold in (0.0, 0.5, 1.0):
        response = invoke(server, split_body(images, {"threshold": threshold}))
        assert response.status_code == 200, response.text
        answer = response.json()["predictions"]
        labels = [row["predicted"] for row in answer]
        assert labels == ["parasitized" if p >= threshold else "uninfected" for p in probabilities], threshold
        assert {row["threshold_parasitized"] for row in answer} == {threshold}


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_payloads(folder: Path) -> dict[str, tuple[object, str, bool]]:
    """name -> (request body, text the message must contain, whether medimg wrote the message)."""
    good = png_bytes(cell_image(40, 3))
    good64 = base64.b64encode(good).decode()
    random_text = base64.b64encode(np.random.default_rng(0).bytes(3_000_000)).decode()
    too_big = base64.b64encode(png_bytes(np.zeros((1000, 1001), dtype=np.uint8))).decode()
    header_only = base64.b64encode(write_dicom(folder / "header_only.dcm", None).read_bytes()).decode()
    fake_dicom = base64.b64encode(b"\0" * 128 + b"DICM" + b"\xff" * 64).decode()
    tiff = io.BytesIO()
    Image.fromarray(cell_image(40, 4)).save(tiff, format="TIFF")
    return {
        "not_base64": (split_body(["%%% this is not base64 %%%"]), "is not valid base64", True),
        "base64_text_not_an_image": (
            split_body([base64.b64encode(b"hello world " * 100).decode()]),
            "not a PNG, JPEG",
            True,
        ),
        "three_megabytes_not_an_image": (split_body([random_text]), "not a PNG, JPEG", True),
        "empty_string": (split_body([""]), "non-empty base64", True),
        "null": (split_body([None]), "non-empty base64", True),
        "number": (split_body([12345]), "non-empty base64", True),
        "truncated_png": (split_body([base64.b64encode(good[: len(good) // 2]).decode()]), "cannot be decoded", True),
        "above_pixel_limit": (split_body([too_big]), f"exceeds the limit of {MAX_PIXELS} pixels", True),
        "tiff_image": (split_body([base64.b64encode(tiff.getvalue()).decode()]), "TIFF images are not supported", True),
        "dicom_without_pixel_data": (split_body([header_only]), "DICOM file has no pixel data", True),
        "dicom_magic_then_garbage": (split_body([fake_dicom]), "DICOM", True),
        "second_row_bad": (split_body([good64, "%%%"]), "row 1: ", True),
        "no_rows": (split_body([]), "no rows", True),
        "threshold_out_of_range": (split_body([good64], {"threshold": 1.5}), "threshold must be between 0 and 1", True),
        "threshold_not_a_number": (split_body([good64], {"threshold": "high"}), "threshold", False),
        "missing_image_column": (split_body([good64], column="picture"), "image", False),
        "unknown_request_keys": ({"images": [good64]}, "dataframe_split", False),
        "not_json": (b"image=abc", "valid JSON", False),
    }


@pytest.fixture(scope="module")
def bad_requests(tmp_path_factory):
    return bad_payloads(tmp_path_factory.mktemp("bad"))


BAD_NAMES = [
    "not_base64",
    "base64_text_not_an_image",
    "three_megabytes_not_an_image",
    "empty_string",
    "null",
    "number",
    "truncated_png",
    "above_pixel_limit",
    "tiff_image",
    "dicom_without_pixel_data",
    "dicom_magic_then_garbage",
    "second_row_bad",
    "no_rows",
    "threshold_out_of_range",
    "threshold_not_a_number",
    "missing_image_column",
    "unknown_request_keys",
    "not_json",
]


def test_bad_payload_table_is_complete(bad_requests):
    assert sorted(bad_requests) == sorted(BAD_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_is_answered_400_with_a_short_message(server, bad_requests, name):
    body, expected, medimg_message = bad_requests[name]
    response = invoke(server, body)
    assert response.status_code == 400, response.text[:500]
    # Short whatever the request size: the 3 MB payload must not come back.
    assert len(response.content) < 2500, response.text[:500]
    message = response.json()["message"]
    assert expected in message
    if medimg_message:
        assert "\n" not in message and len(message) < 200, message
        assert not message.startswith("Failed to predict data")
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


@pytest.mark.slow
def test_server_keeps_serving_after_bad_requests(server, bad_requests, image_files):
    for body, _, _ in bad_requests.values():
        assert invoke(server, body).status_code == 400
    response = invoke(server, split_body([encode(image_files["png"])]))
    assert response.status_code == 200
    assert set(response.json()["predictions"][0]) == {"parasitized", "predicted", "threshold_parasitized", "frame"}


# The command-line client.


@pytest.mark.slow
def test_client_prints_findings_and_a_clear_error_per_bad_file(server, image_files, tmp_path, capsys):
    from serve.client import main

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    missing = tmp_path / "missing.png"
    paths = [str(image_files["png"]), str(not_an_image), str(image_files["jpeg"]), str(missing)]
    paths.append(str(image_files["dicom"]))
    code = main(["--url", server, "--threshold", "0.0", *paths])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.strip().splitlines()
    assert lines[0].split() == ["FILE", "PREDICTED", "TOP", "FINDINGS"]
    by_file = {line.split()[0]: line for line in lines[1:]}
    assert set(by_file) == set(paths)
    for path in (image_files["png"], image_files["jpeg"], image_files["dicom"]):
        fields = by_file[str(path)].split()
        assert fields[1:3] == ["parasitized", "parasitized"]
        assert 0.0 <= float(fields[3]) <= 1.0
    assert "ERROR" in by_file[str(not_an_image)] and "not a PNG, JPEG" in by_file[str(not_an_image)]
    assert "ERROR" in by_file[str(missing)] and "cannot read file" in by_file[str(missing)]
    assert "2 of 5 file(s) could not be scored" in captured.err


@pytest.mark.slow
def test_client_probabilities_match_the_server(server, image_files, loaded_model):
    from serve.client import score_files

    results = score_files(server, [str(path) for path in image_files.values()])
    expected = loaded_model.predict(pd.DataFrame({"image": [encode(path) for path in image_files.values()]}))
    got = [result.probabilities["parasitized"] for result in results]
    np.testing.assert_allclose(got, expected["parasitized"], atol=TOLERANCE)
    assert all(not result.error for result in results)


def test_client_reports_an_unreachable_server_in_one_line(tmp_path, capsys):
    from serve.client import main

    image = tmp_path / "cell.png"
    image.write_bytes(png_bytes(cell_image(32, 0)))
    code = main(["--url", f"http://127.0.0.1:{free_port()}", "--timeout", "5", str(image)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("error: cannot reach")


def test_signature_describes_the_served_columns():
    from serve.pyfunc import ClassifierConfig, classifier_signature

    signature = classifier_signature(ClassifierConfig(class_names=["a", "b", "c"], task="multilabel", image_size=32))
    assert signature.inputs.input_names() == ["image"]
    assert signature.outputs.input_names() == [
        "a",
        "b",
        "c",
        "predicted",
        "threshold_a",
        "threshold_b",
        "threshold_c",
        "frame",
    ]
    params = {param["name"]: param for param in json.loads(signature.params.to_json())}
    assert set(params) == {"threshold", "frame", "explain", "explain_class"}
    assert params["threshold"]["default"] is None
    assert (params["frame"]["type"], params["frame"]["default"]) == ("long", -1)


def test_requests_of_every_size_give_each_image_the_same_answer(loaded_model, image_files):
    """Requests of 1 to 9 images go through one traced graph with a free batch size (models.batch_predictor)."""
    from serve.contract import IMAGE_COLUMN

    encoded = encode(image_files["png"])
    answers = [loaded_model.predict(pd.DataFrame({IMAGE_COLUMN: [encoded] * size})) for size in range(1, 10)]
    assert [len(answer) for answer in answers] == list(range(1, 10))
    first = answers[0].iloc[0, 0]
    assert all(np.allclose(answer.iloc[:, 0], first, atol=1e-6) for answer in answers)
