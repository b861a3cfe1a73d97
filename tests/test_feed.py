"""The prepared-folder input pipeline: image encodings, batch-wise resize and augmentation, old folders; data in tmp_path.

A small learnable folder of gray "radiographs" (class `effusion`: a bright blob low in the picture) is
prepared once per encoding; the tests read it back, batch it as `main` does and train on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.data import load_dataset, make_batches
from train.data.augment import POLICIES
from train.data.prepare import prepare
from train.data.prepared import ENCODINGS, MANIFEST_NAME, read_manifest, split_pixels
from train.settings import ConfigError, PrepareSettings

SOURCE_SIZE = 48
STORED_SIZE = 40
IMAGE_SIZE = 32
EXAMPLES = 240


def write_effusion_folder(root: Path, count: int = EXAMPLES, size: int = SOURCE_SIZE, seed: int = 0) -> None:
    """An imagefolder of gray chest-like pictures: `normal`, and `effusion` with a bright blob in the lower half."""
    generator = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size] / size
    for index in range(count):
        image = 150.0 - 240.0 * (columns - 0.5) ** 2 + generator.normal(0.0, 20.0, (size, size))
        for side in (0.3, 0.7):
            image -= 50.0 * ((((columns - side) / 0.15) ** 2 + ((rows - 0.5) / 0.3) ** 2) < 1.0)
        label = "effusion" if index % 2 else "normal"
        if label == "effusion":
            center_column, center_row = generator.uniform(0.2, 0.8), generator.uniform(0.55, 0.8)
            image += 50.0 * np.exp(-((columns - center_column) ** 2 + (rows - center_row) ** 2) / 0.01)
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L").save(folder / f"{index:04d}.png")


def prepare_config(source: Path, output: Path, encoding: str) -> PrepareSettings:
    return PrepareSettings.from_dict(
        {
            "dataset": "imagefolder",
            "data_dir": str(source),
            "output_dir": str(output),
            "image_size": str(STORED_SIZE),
            "image_encoding": encoding,
            "seed": "0",
            "workers": "1",
        }
    )


@pytest.fixture(scope="module")
def prepared_folders(tmp_path_factory) -> dict[str, Path]:
    """The effusion folder and its preparation with every encoding: {"source": ..., "png": ..., "raw": ..., ...}."""
    root = tmp_path_factory.mktemp("feed")
    write_effusion_folder(root / "source")
    folders = {"source": root / "source"}
    for encoding in ENCODINGS:
        folders[encoding] = root / encoding
        prepare(prepare_config(root / "source", folders[encoding], encoding))
    return folders


def stored_pixels(folder: Path, split: str = "train") -> tuple[list[bytes], np.ndarray]:
    manifest = read_manifest(folder)
    ids, pixels = [], []
    for example_id, image, _ in split_pixels(folder, manifest, split, include_ids=True).as_numpy_iterator():
        ids.append(example_id)
        pixels.append(image)
    return ids, np.stack(pixels)


def training_batches(folder: Path, augment: str = "radiograph", seed: int = 3) -> list[np.ndarray]:
    loaded = load_dataset("imagefolder", data_dir=str(folder), image_size=IMAGE_SIZE, validation_fraction=0.1)
    batches = make_batches(
        loaded.splits["train"], batch_size=32, training=True, augmentation=POLICIES.get(augment), seed=seed
    )
    return [images for images, _ in batches.as_numpy_iterator()]


def test_every_encoding_stores_the_same_images_and_the_manifest_says_which(prepared_folders):
    import tensorflow as tf

    for encoding, recorded in ENCODINGS.items():
        manifest = json.loads((prepared_folders[encoding] / MANIFEST_NAME).read_text())
        assert (manifest["image_encoding"], manifest["settings"]["image_encoding"]) == (recorded, encoding)
        assert manifest["format_version"] == 2 and manifest["channels"] == 1
    # A raw record is the gray pixels themselves, row-major.
    shard = sorted(prepared_folders["raw"].glob("train-*.tfrecord"))[0]
    record = next(iter(tf.data.TFRecordDataset(str(shard))))
    image = tf.train.Example.FromString(record.numpy()).features.feature["image"].bytes_list.value[0]
    assert len(image) == STORED_SIZE * STORED_SIZE

    ids, png = stored_pixels(prepared_folders["png"])
    raw_ids, raw = stored_pixels(prepared_folders["raw"])
    jpeg_ids, jpeg = stored_pixels(prepared_folders["jpeg"])
    assert png.shape == (read_manifest(prepared_folders["png"])["counts"]["train"], STORED_SIZE, STORED_SIZE, 1)
    assert ids == raw_ids == jpeg_ids
    np.testing.assert_array_equal(raw, png)
    # JPEG at quality 95 moves gray levels a little, never the picture.
    difference = np.abs(jpeg.astype(int) - png.astype(int))
    assert difference.mean() < 3.0 and difference.max() <= 24
    sizes = {
        encoding: sum(path.stat().st_size for path in prepared_folders[encoding].glob("*.tfrecord"))
        for encoding in ENCODINGS
    }
    assert sizes["jpeg"] < sizes["png"] < sizes["raw"]

    # Same pixels, same seed: a raw folder gives the very batches a PNG folder gives, so it trains the same model.
    for raw_batch, png_batch in zip(
        training_batches(prepared_folders["raw"]), training_batches(prepared_folders["png"]), strict=True
    ):
        np.testing.assert_array_equal(raw_batch, png_batch)


def test_every_encoding_reads_back_gray_and_rgb_images():
    """A folder with one colour image reads every image as RGB; a gray raw record then becomes three equal channels."""
    import tensorflow as tf

    from train.data.prepared import decode_pixels, encode_image, record_bytes

    generator = np.random.default_rng(4)
    rgb = generator.integers(0, 256, (12, 12, 3)).astype(np.uint8)
    gray = np.repeat(generator.integers(0, 256, (12, 12, 1)).astype(np.uint8), 3, axis=-1)
    for encoding, recorded in ENCODINGS.items():
        for image, channels in ((rgb, 3), (gray, 1)):
            value, stored_channels = encode_image(tf.constant(image, tf.float32), encoding)
            assert int(stored_channels) == channels
            data = record_bytes(value.numpy())
            if encoding == "raw":
                assert data == image[..., :channels].tobytes()
            back = decode_pixels(tf.constant(data), recorded, 12, 3).numpy()
            tolerance = 0 if encoding != "jpeg" else 40
            assert back.shape == (12, 12, 3) and np.abs(back.astype(int) - image).max() <= tolerance
        back = decode_pixels(
            tf.constant(record_bytes(encode_image(tf.constant(gray, tf.float32), encoding)[0].numpy())), recorded, 12, 1
        )
        assert back.shape == (12, 12, 1)


def test_the_batched_resize_is_serve_preprocess_resize():
    import tensorflow as tf

    from serve.preprocess import resize
    from train.data.pixels import to_float, to_images, to_rgb

    generator = np.random.default_rng(1)
    for shape, size in (((5, 40, 40, 1), 32), ((3, 32, 32, 1), 40), ((2, 48, 48, 3), 32), ((300, 300, 1), 224)):
        pixels = tf.constant(generator.integers(0, 256, shape, dtype=np.uint8))
        expected = resize(tf.cast(pixels, tf.float32), size).numpy()
        resized = to_float(pixels, size).numpy()
        assert resized.shape == expected.shape
        np.testing.assert_allclose(resized, expected, atol=1e-3)
    pixels = tf.constant(generator.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8))
    np.testing.assert_array_equal(to_float(pixels, 32).numpy(), pixels.numpy().astype(np.float32))
    gray = tf.cast(pixels, tf.float32)
    np.testing.assert_array_equal(to_rgb(gray).numpy(), tf.image.grayscale_to_rgb(gray).numpy())
    np.testing.assert_array_equal(to_images(pixels[0], 32).numpy(), np.repeat(pixels[0].numpy(), 3, axis=-1))


def per_image_reference(image, seed, policy):
    """The policy as TensorFlow's per-image stateless ops apply it (medimg's per-image augmentation before batching)."""
    import tensorflow as tf

    seeds = tf.random.split(tf.cast(seed, tf.int64), num=5)
    if policy.horizontal_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    if policy.vertical_flip:
        image = tf.image.stateless_random_flip_up_down(image, seed=seeds[1])
    if policy.rotate_90:
        image = tf.image.rot90(
            image, k=tf.random.stateless_uniform([], seed=seeds[2], minval=0, maxval=4, dtype=tf.int32)
        )
    image = tf.image.stateless_random_brightness(image, max_delta=policy.brightness_delta, seed=seeds[3])
    image = tf.image.stateless_random_contrast(image, *policy.contrast_range, seed=seeds[4])
    return tf.clip_by_value(image, 0.0, 255.0)


def test_batched_augmentation_gives_each_image_tensorflows_per_image_transform():
    import tensorflow as tf

    from train.data.augment import augment_batch, augment_image, batch_parameters, flip_batch, jitter_batch
    from train.data.pixels import to_float, to_rgb

    generator = np.random.default_rng(2)
    pixels = tf.constant(generator.integers(0, 256, (48, 40, 40, 1), dtype=np.uint8))
    seeds = tf.constant(generator.integers(0, 2**62, (48, 2)), tf.int64)
    for policy in POLICIES.values():
        parameters = batch_parameters(seeds, policy)
        expected = np.stack(
            [
                per_image_reference(tf.image.grayscale_to_rgb(image), seed, policy).numpy()
                for image, seed in zip(to_float(pixels, IMAGE_SIZE), seeds, strict=True)
            ]
        )
        # Float RGB batches (splits decoded from files), and stored pixels the way make_batches finishes them.
        as_float = augment_batch(tf.image.grayscale_to_rgb(to_float(pixels, IMAGE_SIZE)), parameters, policy)
        stored = to_rgb(jitter_batch(to_float(flip_batch(pixels, parameters, policy), IMAGE_SIZE), parameters))
        np.testing.assert_allclose(as_float.numpy(), expected, atol=1e-3)
        np.testing.assert_allclose(stored.numpy(), expected, atol=1e-3)
        single = augment_image(tf.image.grayscale_to_rgb(to_float(pixels[0], IMAGE_SIZE)), seeds[0], policy)
        np.testing.assert_allclose(single.numpy(), expected[0], atol=1e-3)


def test_images_from_files_are_augmented_one_by_one_with_the_batched_values_and_stored_pixels_per_batch():
    import tensorflow as tf

    from train.data.augment import augment_batch, batch_parameters, transform_image
    from train.data.pipeline import augmentation_placement
    from train.data.spec import Split

    generator = np.random.default_rng(4)
    images = tf.constant(generator.uniform(0.0, 255.0, (16, 20, 20, 3)).astype(np.float32))
    seeds = tf.constant(generator.integers(0, 2**62, (16, 2)), tf.int64)
    for policy in POLICIES.values():
        parameters = batch_parameters(seeds, policy)
        batched = augment_batch(images, parameters, policy).numpy()
        for index in range(len(images)):
            own = {name: value[index] for name, value in parameters.items()}
            np.testing.assert_allclose(transform_image(images[index], own, policy).numpy(), batched[index], atol=1e-3)
    files = Split(dataset=tf.data.Dataset.from_tensors((images[0], 0.0)), count=1, positives=np.zeros(1, np.int64))
    stored = Split(dataset=files.dataset, count=1, positives=files.positives, pixels=files.dataset)
    assert augmentation_placement(files, POLICIES["cells"]) == "per_image"
    assert augmentation_placement(stored, POLICIES["cells"]) == "per_batch"
    assert augmentation_placement(files, None) == augmentation_placement(stored, None) == "none"


def dihedral_variants(image: np.ndarray) -> list[np.ndarray]:
    """The eight flips and quarter turns of a square image; index 0 is the image, 1 its left-right flip."""
    variants = []
    for turns in range(4):
        turned = np.rot90(image, turns)
        variants += [turned, turned[:, ::-1]]
    return variants


def observed_transforms(outputs: np.ndarray, image: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Per output: which dihedral variant of `image` it is, and the contrast factor and brightness shift applied.

    The jitter is x * factor + mean(x) * (1 - factor) + shift, so a least-squares line through the right variant fits
    exactly; the image stays away from 0 and 255, so nothing is clipped.
    """
    variants = [variant.reshape(-1) for variant in dihedral_variants(image)]
    chosen, factors, shifts = [], [], []
    for output in outputs[..., 0].reshape(len(outputs), -1):
        fits = [np.polyfit(variant, output, 1, full=True) for variant in variants]
        residuals = [fit[1][0] if len(fit[1]) else 0.0 for fit in fits]
        best = int(np.argmin(residuals))
        assert residuals[best] < 1e-2 * len(output)
        factor, intercept = fits[best][0]
        chosen.append(best)
        factors.append(factor)
        shifts.append(intercept - variants[best].mean() * (1.0 - factor))
    return chosen, np.array(factors), np.array(shifts)


def test_training_batches_transform_images_as_often_as_each_policy_says():
    """make_batches on stored pixels: radiographs only flip left-right (half the time); cells take all eight turns."""
    import tensorflow as tf

    from train.data.spec import Split

    image = np.random.default_rng(3).integers(60, 196, (24, 24, 1)).astype(np.uint8)
    count = 512
    labels = np.zeros((count, 1), np.float32)
    pixels = tf.data.Dataset.from_tensors(image).repeat(count)
    split = Split(
        dataset=pixels.map(lambda value: tf.cast(value, tf.float32)).map(
            lambda value: (tf.image.grayscale_to_rgb(value), 0.0)
        ),
        count=count,
        positives=np.zeros(1, np.int64),
        pixels=tf.data.Dataset.zip((pixels, tf.data.Dataset.from_tensor_slices(labels))),
    )
    for name, variants in (("radiograph", 2), ("cells", 8)):
        batches = make_batches(split, batch_size=64, training=True, augmentation=POLICIES[name], seed=5)
        outputs = np.concatenate([images for images, _ in batches.as_numpy_iterator()])
        assert outputs.shape == (count, 24, 24, 3) and np.array_equal(outputs[..., 0], outputs[..., 2])
        chosen, factors, shifts = observed_transforms(outputs, image[..., 0])
        frequencies = np.bincount(chosen, minlength=8) / count
        # Each variant's share is binomial: within four standard deviations of 1/variants.
        share = 1.0 / variants
        tolerance = 4.0 * np.sqrt(share * (1 - share) / count)
        assert np.all(np.abs(frequencies[:variants] - share) <= tolerance), (name, frequencies)
        assert np.all(frequencies[variants:] == 0.0), (name, frequencies)
        policy = POLICIES[name]
        low, high = policy.contrast_range
        assert low - 1e-3 <= factors.min() < low + 0.02 and high - 0.02 < factors.max() <= high + 1e-3
        delta = policy.brightness_delta
        assert -delta - 0.1 <= shifts.min() < -0.9 * delta and 0.9 * delta < shifts.max() <= delta + 0.1
        # Uniform shifts: mean zero within four standard errors.
        assert abs(shifts.mean()) <= 4.0 * delta / np.sqrt(3 * count)
    # The same seed gives the same batches; another seed others.
    again = [
        images
        for images, _ in make_batches(split, batch_size=64, training=True, augmentation=POLICIES["cells"], seed=5)
    ]
    other = [
        images
        for images, _ in make_batches(split, batch_size=64, training=True, augmentation=POLICIES["cells"], seed=6)
    ]
    np.testing.assert_array_equal(np.concatenate(again), outputs)
    assert not np.array_equal(np.concatenate(other), outputs)


def version_1_fingerprint(manifest: dict) -> str:
    """The fingerprint `prepare` wrote before image_encoding existed (format version 1), computed as it did."""
    settings = manifest["settings"]
    content = {
        "format_version": 1,
        "dataset": settings["dataset"],
        "image_size": settings["image_size"],
        "shard_size": settings["shard_size"],
        "seed": settings["seed"],
        "validation_fraction": settings["validation_fraction"],
        "view": settings["view"].lower(),
        "source_digest": manifest["source_digest"],
        "shards": [
            (shard["file"], shard["count"])
            for split in ("train", "val", "test")
            for shard in manifest["splits"][split]["shards"]
        ],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def test_a_folder_written_before_the_encodings_still_trains_and_is_not_redone(prepared_folders, tmp_path, capsys):
    old = tmp_path / "version-1"
    shutil.copytree(prepared_folders["png"], old)
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    # What version 1 wrote: PNG records, no channels, no image_encoding setting.
    assert manifest["fingerprint"] == version_1_fingerprint(manifest)
    manifest.update(format_version=1, image_encoding="png-uint8")
    manifest.pop("channels")
    manifest["settings"].pop("image_encoding")
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            shard.pop("channels")
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))

    # Read as RGB (its manifest cannot say every image is gray): the same training batches all the same.
    assert stored_pixels(old)[1].shape[-1] == 3
    for old_batch, new_batch in zip(training_batches(old), training_batches(prepared_folders["png"]), strict=True):
        np.testing.assert_allclose(old_batch, new_batch, atol=1e-3)
    again = prepare(prepare_config(prepared_folders["source"], old, "png"))
    assert again.written_shards == [] and "already prepared" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already holds a different preparation .*image_encoding png"):
        prepare(prepare_config(prepared_folders["source"], old, "raw"))

    for change, message in (
        ({"format_version": 3}, r"format version 1 or 2 .*run `python -m train prepare` into a new output_dir"),
        (
            {"image_encoding": "webp-uint8"},
            r"stores images as 'webp-uint8'.*update medimg or run `python -m train prepare`",
        ),
    ):
        (old / MANIFEST_NAME).write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ValueError, match=message) as raised:
            load_dataset("imagefolder", data_dir=str(old), image_size=IMAGE_SIZE, validation_fraction=0.1)
        assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="image_encoding.*png, raw, jpeg"):
        prepare_config(prepared_folders["source"], tmp_path / "other", "bmp")


def train_keeping_the_model(folder: Path):
    """train() on a prepared folder as `main` would; the trained Keras model (best epoch) and the run's metrics."""
    import keras

    from train.job.trainer import train
    from train.settings import MainSettings

    kept = []

    class KeepModel(keras.callbacks.Callback):
        # Runs after EarlyStopping's own on_train_end, which restores the best epoch's weights.
        def on_train_end(self, logs=None):
            kept.append(self.model)

    settings = MainSettings.from_dict(
        {
            "dataset": "imagefolder",
            "data_dir": str(folder),
            "image_size": str(IMAGE_SIZE),
            "epochs": "4",
            "batch_size": "32",
            "learning_rate": "0.001",
            "validation_fraction": "0.1",
            "seed": "0",
        }
    )
    result = train(settings, callbacks=[KeepModel()])
    return kept[0], result.metrics


def test_a_model_trained_from_jpeg_records_reaches_the_test_auroc_of_one_trained_from_png(
    prepared_folders, tracking_uri
):
    """Same data, same seed: the JPEG-trained model's test AUROC lies in the PNG-trained one's bootstrap interval.

    raw records need no training of their own: they hold the PNG records' pixels, and the first test shows
    that they give the very same training batches. The paired comparison (DeLong, as `pipeline` compares a
    challenger with the champion) scores both models on the same test examples.
    """
    from train.job.stages import predict_split
    from train.scoring.comparison import delong_test

    scores, probabilities = {}, {}
    for encoding in ("png", "jpeg"):
        model, metrics = train_keeping_the_model(prepared_folders[encoding])
        scores[encoding] = metrics
        test = load_dataset(
            "imagefolder", data_dir=str(prepared_folders[encoding]), image_size=IMAGE_SIZE, validation_fraction=0.1
        ).splits["test"]
        predictions = predict_split(model, test, batch_size=32, seed=0)
        probabilities[encoding], labels = predictions.probabilities[:, 0], predictions.labels[:, 0]
    png, jpeg = scores["png"], scores["jpeg"]
    # Both learned the blob, so the comparison says something.
    assert png["test_auroc"] >= 0.85 and jpeg["test_auroc"] >= 0.85
    assert png["test_auroc_ci_low"] <= jpeg["test_auroc"] <= png["test_auroc_ci_high"]
    comparison = delong_test(labels, probabilities["jpeg"], probabilities["png"])
    assert comparison.challenger == pytest.approx(jpeg["test_auroc"], abs=1e-6)
    assert comparison.champion == pytest.approx(png["test_auroc"], abs=1e-6)
    assert comparison.ci_low <= 0.0 <= comparison.ci_high
