"""Tests that training and serving turn one image file into the same tensor (serve.preprocess + train.data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve.preprocess import load_image_tensor
from train.data.pipeline import files_split, make_batches

IMAGE_SIZE = 24


def training_tensor(path: Path, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The image exactly as an evaluation batch of the training pipeline delivers it."""
    split = files_split([path], np.zeros((1, 1), dtype=np.float32), image_size)
    images, labels = next(
        make_batches(split, batch_size=4, training=False, augmentation=None, seed=0).as_numpy_iterator()
    )
    assert images.shape == (1, image_size, image_size, 3) and labels.shape == (1, 1)
    return images[0]


def serving_tensor(path: Path, image_size: int = IMAGE_SIZE) -> np.ndarray:
    return np.asarray(load_image_tensor(path.read_bytes(), image_size))


def random_rgb(height: int = 37, width: int = 29, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def smooth_rgb(height: int = 37, width: int = 29, seed: int = 0) -> np.ndarray:
    """A smooth picture (a 4x4 random grid enlarged), so different resize methods agree closely."""
    coarse = Image.fromarray(random_rgb(4, 4, seed))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))


@pytest.mark.parametrize(("name", "image_format"), [("scan.png", "PNG"), ("photo.jpg", "JPEG"), ("old.bmp", "BMP")])
def test_training_and_serving_give_the_same_tensor(tmp_path, name, image_format):
    path = tmp_path / name
    Image.fromarray(smooth_rgb()).save(path, format=image_format)
    trained = training_tensor(path)
    served = serving_tensor(path)
    assert served.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert served.dtype == np.float32
    np.testing.assert_allclose(trained, served, atol=1e-5, rtol=0)
    assert served.min() >= 0.0 and served.max() <= 255.0
    # The tensor is the picture, not noise: it matches PIL's own resize of the decoded file to a few gray levels.
    reference = np.asarray(Image.open(path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
    assert np.abs(served - reference.astype(np.float32)).mean() < 4.0


def test_sixteen_bit_png_maps_to_0_255(tmp_path):
    path = tmp_path / "sixteen.png"
    gradient = np.tile(np.linspace(0, 65535, IMAGE_SIZE, dtype=np.float64), (IMAGE_SIZE, 1)).round().astype(np.uint16)
    gradient[:, :2] = 65535
    gradient[:, -2:] = 0
    Image.fromarray(gradient).save(path)
    assert Image.open(path).mode == "I;16"
    served = serving_tensor(path)
    np.testing.assert_allclose(training_tensor(path), served, atol=1e-5, rtol=0)
    assert served.max() == pytest.approx(255.0, abs=1e-3)
    assert served.min() == pytest.approx(0.0, abs=1e-3)
    # Same-size resize keeps pixels, so each column is the 16-bit value scaled by 255 / 65535.
    np.testing.assert_allclose(served[:, 5, 0], gradient[:, 5] * 255.0 / 65535.0, atol=0.05)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    gray = random_rgb(seed=3)[..., 0]
    Image.fromarray(gray).save(path)
    served = serving_tensor(path)
    np.testing.assert_allclose(training_tensor(path), served, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(served[..., 0], served[..., 1])
    np.testing.assert_array_equal(served[..., 0], served[..., 2])
    assert served.std() > 10.0


def test_palette_and_rgba_decode_to_their_rgb_colors(tmp_path):
    colors = random_rgb(IMAGE_SIZE, IMAGE_SIZE, seed=5)
    palette_path = tmp_path / "palette.png"
    Image.fromarray(colors).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(palette_path)
    rgba_path = tmp_path / "rgba.png"
    rgba = np.concatenate([colors, np.full((IMAGE_SIZE, IMAGE_SIZE, 1), 7, dtype=np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(rgba_path)
    for path in (palette_path, rgba_path):
        expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        served = serving_tensor(path)
        np.testing.assert_allclose(training_tensor(path), served, atol=1e-5, rtol=0)
        # Alpha is dropped, not multiplied in: the RGBA file keeps its colors although it is almost transparent.
        np.testing.assert_allclose(served, expected, atol=1e-3)
