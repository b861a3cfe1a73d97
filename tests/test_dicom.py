"""Hospital inputs (every DICOM syntax, no preamble, multi-frame, 16-bit PNG, MPO) in training and serving; reads pydicom's files.

One decoder gives one tensor for training and serving, and the real server scores every image (or answers
400 in one line, never 5xx).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_files import image_dataset, radiograph, write_sixteen_bit_png, write_variant
from mlflow.tracking import MlflowClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from serving_helpers import encode, invoke, split_body

from serve.preprocess import decode_array, graph_decodable, is_dicom, is_graph_decodable, load_image_tensor
from train.data.pipeline import files_split, make_batches

IMAGE_SIZE = 24
LOSSLESS_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    "raw",
]
# pydicom's own test files that are deliberately broken: the server must answer them 400, never 5xx.
BROKEN_TEST_FILES = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "MR_truncated.dcm"}
NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "ECG"}


def training_tensor(path: Path, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The image exactly as an evaluation batch of the training pipeline delivers it."""
    split = files_split([path], np.zeros((1, 1), dtype=np.float32), image_size)
    images, _ = next(make_batches(split, batch_size=2, training=False, augmentation=None, seed=0).as_numpy_iterator())
    return images[0]


def serving_tensor(path: Path, image_size: int = IMAGE_SIZE, frame: int = -1) -> np.ndarray:
    return np.asarray(load_image_tensor(path.read_bytes(), image_size, frame))


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """One 12-bit radiograph in every lossless transfer syntax, plus its MONOCHROME1 twin, keyed by syntax name."""
    folder = tmp_path_factory.mktemp("variants")
    pixels = radiograph()
    dataset = image_dataset(pixels)
    files = {
        str(syntax): write_variant(dataset, folder / f"{index}.dcm", syntax)
        for index, syntax in enumerate(LOSSLESS_SYNTAXES)
    }
    files["monochrome1"] = write_variant(
        image_dataset(4095 - pixels, photometric="MONOCHROME1"), folder / "m1.dcm", JPEGLosslessSV1
    )
    return files


def pydicom_test_files() -> list[Path]:
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    return sorted(folder.glob("*.dcm"))


# Recognising and routing files.


def test_graph_and_python_routing_agree_and_dicom_is_recognised_by_content(variants, tmp_path):
    import tensorflow as tf

    png8, png16, jpeg, gif, bmp = (io.BytesIO() for _ in range(5))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png8, format="PNG")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(png16, format="PNG")
    Image.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    Image.new("P", (4, 4)).save(gif, format="GIF")
    Image.new("RGB", (4, 4)).save(bmp, format="BMP")
    graph = {"png8": png8, "jpeg": jpeg, "gif": gif, "bmp": bmp}
    samples = {name: buffer.getvalue() for name, buffer in {**graph, "png16": png16}.items()}
    samples |= {"dicom": variants[ExplicitVRLittleEndian].read_bytes(), "raw_dicom": variants["raw"].read_bytes()}
    samples |= {"empty": b"", "short_png": b"\x89PNG", "text": b"hello world " * 20}
    for name, data in samples.items():
        expected = name in graph
        assert is_graph_decodable(data) is expected, name
        assert bool(graph_decodable(tf.constant(data)).numpy()) is expected, name
        assert is_dicom(data) is name.endswith("dicom"), name
    # The raw file really lacks the preamble and the DICM magic.
    assert variants["raw"].read_bytes()[128:132] != b"DICM"


# Every transfer syntax, one picture.


def test_every_lossless_transfer_syntax_decodes_to_the_same_array(variants):
    from pydicom.pixels import pixel_array

    reference = decode_array(variants[ExplicitVRLittleEndian].read_bytes())
    assert reference.shape == (48, 40, 3) and reference.min() == 0.0 and reference.max() == 255.0
    for name, path in variants.items():
        np.testing.assert_allclose(decode_array(path.read_bytes()), reference, atol=1e-4, err_msg=name)
        dataset = pydicom.dcmread(path, force=True)
        if (
            "TransferSyntaxUID" in getattr(dataset, "file_meta", {})
            and dataset.file_meta.TransferSyntaxUID.is_encapsulated
        ):
            # pylibjpeg (libjpeg included) decodes every one of them on its own, where it is installed.
            assert pixel_array(dataset, decoding_plugin="pylibjpeg").shape == (48, 40), name
    expected_syntaxes = {JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless, RLELossless}
    written = {
        str(pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta.TransferSyntaxUID)
        for name, path in variants.items()
        if name != "raw"
    }
    assert expected_syntaxes <= written


def test_pydicom_files_of_one_mr_image_in_every_syntax_agree():
    names = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"]
    names += ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"]
    reference = decode_array(Path(get_testdata_file(names[0])).read_bytes())
    for name in names[1:]:
        np.testing.assert_allclose(
            decode_array(Path(get_testdata_file(name)).read_bytes()), reference, atol=1e-4, err_msg=name
        )


def test_serving_requirements_pin_the_pixel_data_plugins_and_no_gpl_decoder():
    from serve.pyfunc import serving_requirements

    pinned = {line.split("==")[0] for line in serving_requirements()}
    assert {"pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "python-gdcm", "pyjpegls"} <= pinned
    assert "pylibjpeg-libjpeg" not in pinned
    assert all("==" in line for line in serving_requirements())


def test_every_lossless_transfer_syntax_decodes_the_same_without_the_gpl_decoder(variants, repo_root):
    """What a served model and the images ship without libjpeg (GPLv3): GDCM and CharLS take its syntaxes."""
    reference = decode_array(variants[ExplicitVRLittleEndian].read_bytes())
    paths = {name: str(path) for name, path in variants.items()}
    # As if pylibjpeg-libjpeg were not installed: its entry points (the plugins pylibjpeg finds) are hidden.
    script = """
import importlib.metadata, json, sys
from pathlib import Path
import numpy as np
everything = importlib.metadata.entry_points
def entry_points(**selection):
    found = everything(**selection)
    return type(found)(point for point in found if not point.value.startswith("libjpeg"))
importlib.metadata.entry_points = entry_points
from serve.preprocess import decode_array
import pylibjpeg.utils
assert all(not decoder.__module__.startswith("libjpeg") for decoder in pylibjpeg.utils.get_pixel_data_decoders().values())
paths = json.loads(sys.argv[1])
np.savez(sys.argv[2], **{name: decode_array(Path(path).read_bytes()) for name, path in paths.items()})
"""
    output = Path(variants[ExplicitVRLittleEndian]).parent / "without_libjpeg.npz"
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths), str(output)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    decoded = np.load(output)
    assert set(decoded.files) == set(paths)
    for name in paths:
        np.testing.assert_allclose(decoded[name], reference, atol=1e-4, err_msg=name)


# One decoder for training and serving.


def test_dicom_and_its_png_exports_give_the_same_tensor_in_training_and_serving(variants, tmp_path):
    pixels = radiograph()
    sixteen = write_sixteen_bit_png(tmp_path / "export16.png", pixels, significant_bits=12)
    eight = tmp_path / "export8.png"
    Image.fromarray(np.rint(pixels / 4095.0 * 255.0).astype(np.uint8)).save(eight)
    tensors = {}
    for name, path in {
        "dicom": variants[JPEGLosslessSV1],
        "monochrome1": variants["monochrome1"],
        "png16": sixteen,
    }.items():
        tensors[name] = training_tensor(path)
        np.testing.assert_allclose(serving_tensor(path), tensors[name], atol=1e-4, err_msg=name)
    np.testing.assert_allclose(tensors["dicom"], tensors["png16"], atol=1e-4)
    np.testing.assert_allclose(tensors["monochrome1"], tensors["dicom"], atol=1e-3)
    # The 8-bit export rounds to whole gray levels: within half a level after a linear resize.
    np.testing.assert_allclose(training_tensor(eight), tensors["dicom"], atol=0.51)
    assert tensors["dicom"].max() > 200 and tensors["dicom"].min() < 50


def test_twelve_bit_radiograph_in_a_sixteen_bit_png_keeps_its_contrast(tmp_path):
    pixels = np.minimum(radiograph(IMAGE_SIZE, IMAGE_SIZE), 3000)
    # With sBIT the depth is declared, so the brightest pixel stays 3000/4095 of white, whether the
    # values are stored as they are or scaled to 16 bits as the PNG specification asks.
    expected = pixels / 4095.0 * 255.0
    declared = write_sixteen_bit_png(tmp_path / "declared.png", pixels, significant_bits=12)
    scaled = write_sixteen_bit_png(tmp_path / "scaled.png", pixels.astype(np.uint32) << 4, significant_bits=12)
    for path in (declared, scaled):
        served = serving_tensor(path)
        np.testing.assert_allclose(training_tensor(path), served, atol=1e-4)
        np.testing.assert_allclose(served[..., 0], expected, atol=1e-3)
    # Without sBIT, the image's own range sets the depth: values up to 3000 need 12 bits.
    undeclared = write_sixteen_bit_png(tmp_path / "undeclared.png", pixels)
    np.testing.assert_allclose(serving_tensor(undeclared)[..., 0], expected, atol=1e-3)
    # Before, every 16-bit PNG was scaled by 1/65535 and this radiograph came out nearly black.
    assert serving_tensor(undeclared).max() > 180


# Multi-frame.


def test_multi_frame_policy_picks_the_requested_or_middle_frame(tmp_path):
    levels = [500, 2000, 3500]
    frames = np.stack([np.full((20, 30), level, np.uint16) for level in levels])
    path = write_variant(image_dataset(frames, window=(2048.0, 4096.0)), tmp_path / "cine.dcm", JPEGLosslessSV1)
    by_frame = [float(decode_array(path.read_bytes(), frame).mean()) for frame in range(3)]
    assert by_frame[0] < by_frame[1] < by_frame[2]
    assert float(decode_array(path.read_bytes()).mean()) == by_frame[1]
    np.testing.assert_allclose(training_tensor(path), serving_tensor(path), atol=1e-4)
    assert serving_tensor(path, frame=2).mean() == pytest.approx(by_frame[2], abs=1e-3)
    with pytest.raises(ValueError, match=r"^frame 3 is out of range: the image has 3 frame\(s\), 0-2; -1 picks"):
        decode_array(path.read_bytes(), 3)


# Files that are DICOM but not images.


def test_dicom_objects_without_an_image_are_named_in_one_line_and_skipped_by_training():
    from train.data.files import check_image

    for name, kind in [
        ("liver_1frame.dcm", "Segmentation Storage"),
        ("rtdose.dcm", "RT Dose Storage"),
        ("test-SR.dcm", "Comprehensive SR Storage"),
        ("rtstruct.dcm", "RT Structure Set Storage"),
    ]:
        path = Path(get_testdata_file(name))
        with pytest.raises(ValueError, match=rf"^DICOM file holds no image to classify \({kind}\); send an image"):
            decode_array(path.read_bytes())
        content_hash, reason = check_image(path)
        assert content_hash == "" and reason.startswith("DICOM file holds no image")


# MPO: accepted by both, first picture.


def test_mpo_is_accepted_by_training_and_serving_and_its_first_picture_is_used(tmp_path):
    from serve.pyfunc import check_image as serving_check
    from train.data.files import check_image as training_check

    dark, bright = Image.new("RGB", (32, 32), (30, 30, 30)), Image.new("RGB", (32, 32), (220, 220, 220))
    path = tmp_path / "camera.jpg"
    dark.save(path, format="MPO", save_all=True, append_images=[bright])
    assert Image.open(path).format == "MPO"
    assert training_check(path)[1] is None
    assert serving_check(path.read_bytes(), 0, 10_000) == 0
    served = serving_tensor(path)
    np.testing.assert_allclose(training_tensor(path), served, atol=1e-4)
    assert abs(float(served.mean()) - 30.0) < 3.0


# The real server.


def expected_answer(path: Path) -> tuple[int, str]:
    """The status and message (or scored frame, as text) a file must get, read from its header alone."""
    dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    if path.name in BROKEN_TEST_FILES:
        return 400, "cannot be decoded"
    if str(dataset.get("Modality", "")) in NON_IMAGE_MODALITIES:
        return 400, "holds no image to classify"
    if "Rows" not in dataset:
        return 400, "DICOM file has no image" if is_dicom(path.read_bytes()) else "not a PNG, JPEG"
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    return 200, str(frames // 2)


@pytest.mark.slow
def test_server_answers_every_pydicom_test_file_with_200_or_a_one_line_400(server):
    scored = 0
    for path in pydicom_test_files():
        status, detail = expected_answer(path)
        response = invoke(server, split_body([encode(path)]))
        assert response.status_code == status, (path.name, response.text[:300])
        if status == 200:
            (row,) = response.json()["predictions"]
            assert row["frame"] == int(detail) and 0.0 <= row["parasitized"] <= 1.0, path.name
            scored += 1
        else:
            message = response.json()["message"]
            assert detail in message and "\n" not in message and len(message) < 250, (path.name, message)
    assert scored >= 45


@pytest.mark.slow
def test_server_gives_lossless_variants_one_answer_and_honours_frame(server, loaded_model, variants, tmp_path):
    images = [encode(path) for path in variants.values()]
    response = invoke(server, split_body(images))
    assert response.status_code == 200, response.text[:300]
    predictions = pd.DataFrame(response.json()["predictions"])
    assert predictions["frame"].tolist() == [0] * len(images)
    np.testing.assert_allclose(predictions["parasitized"], predictions["parasitized"][0], atol=1e-4)
    in_process = loaded_model.predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(predictions["parasitized"], in_process["parasitized"], atol=1e-5)

    frames = np.stack([radiograph(seed=seed) for seed in range(5)])
    cine = [encode(write_variant(image_dataset(frames), tmp_path / "cine.dcm", RLELossless))]
    answers = {}
    for frame in (None, 0, 4):
        params = None if frame is None else {"frame": frame}
        response = invoke(server, split_body(cine, params))
        assert response.status_code == 200, response.text[:300]
        answers[frame] = response.json()["predictions"][0]
    assert [answers[frame]["frame"] for frame in (None, 0, 4)] == [2, 0, 4]
    single = write_variant(image_dataset(frames[4]), tmp_path / "frame4.dcm", ExplicitVRLittleEndian)
    alone = invoke(server, split_body([encode(single)])).json()["predictions"][0]
    assert answers[4]["parasitized"] == pytest.approx(alone["parasitized"], abs=1e-4)
    for frame, expected in ((5, "frame 5 is out of range: the image has 5 frame(s), 0-4"), (-2, "frame must be -1")):
        response = invoke(server, split_body(cine, {"frame": frame}))
        assert response.status_code == 400 and expected in response.json()["message"], response.text[:300]


# Training on a folder of DICOM files.


@pytest.mark.slow
def test_dicom_files_without_extension_are_images_and_other_files_are_not(tmp_path):
    from train.data.files import is_image_file, list_image_files

    dataset = image_dataset(radiograph(16, 16))
    for name in ("a.dcm", "1.2.826.0.1.3680043.9.7.1", "IM00001", "DICOMDIR", "scan.txt"):
        write_variant(dataset, tmp_path / "export" / name, ExplicitVRLittleEndian)
    write_variant(dataset, tmp_path / "export" / "IM00002", "raw")
    Image.new("L", (8, 8)).save(tmp_path / "export" / "picture", format="PNG")
    (tmp_path / "export" / "notes").write_text("not an image")
    (tmp_path / "export" / "empty").write_bytes(b"")
    found = [path.name for path in list_image_files(tmp_path / "export")]
    # Without an extension only DICOM counts (recognised by content, with or without the preamble, as PACS
    # exports name files); other pictures need their extension.
    assert found == ["1.2.826.0.1.3680043.9.7.1", "IM00001", "IM00002", "a.dcm"]
    assert not is_image_file(tmp_path / "export" / "missing")


def test_training_on_a_dicom_folder_and_evaluate_scores_it(tmp_path, tracking_uri, capsys):
    from train.__main__ import main as train_cli

    for label, offset in (("normal", 0), ("effusion", 1)):
        for index in range(12):
            pixels = radiograph(32, 32, seed=2 * index + offset)
            pixels = pixels if offset == 0 else 4095 - pixels
            # PACS exports often name files without extension: by SOP Instance UID or IM00001.
            name = (f"{index}.dcm", f"1.2.826.0.1.3680043.9.7.{index}", f"IM{index:05d}")[index % 3]
            write_variant(image_dataset(pixels), tmp_path / "xrays" / label / name, JPEGLosslessSV1)
    # `python -m train main` in-process, as `mlflow run` starts it (test_training runs the entry point itself).
    import mlflow

    mlflow.set_experiment("dicom")
    arguments = {
        "dataset": "imagefolder",
        "data_dir": tmp_path / "xrays",
        "epochs": 1,
        "image_size": 32,
        "batch_size": 8,
    }
    assert train_cli(["main", *(f"--{key.replace('_', '-')}={value}" for key, value in arguments.items())]) == 0
    capsys.readouterr()
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dicom").experiment_id])
    assert run.data.metrics["data.skipped_images"] == 0
    assert sum(int(run.data.params[f"{split}_examples"]) for split in ("train", "val", "test")) == 24
    assert run.data.tags["medimg.dataset"] == "imagefolder" and 0.0 <= run.data.metrics["test_auroc"] <= 1.0

    # `python -m train evaluate`, in-process: the same folder, the test split held out in training.
    assert train_cli(["evaluate", "--model-uri", f"runs:/{run.info.run_id}/model"]) == 0
    evaluated = client.get_run(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"])
    assert evaluated.data.metrics["test_examples"] == 4
    assert 0.0 <= evaluated.data.metrics["test_auroc"] <= 1.0
