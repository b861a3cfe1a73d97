"""Tests for the dataset registry and input pipelines (train.data): tiny images written into tmp_path, no network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from train.data import available_datasets, load_dataset, make_batches, validate_dataset_args
from train.data.augment import POLICIES
from train.data.files import UnreadableImageWarning
from train.data.splits import stratified_choice, stratified_split

IMAGE_SIZE = 32
# Flat images with a distinct gray level per file let a test tell which file an element came from.
NORMAL_LEVELS = list(range(20, 105, 5))
PNEUMONIA_LEVELS = list(range(150, 240, 5))


def save_flat(
    path: Path, level: int, *, mode: str = "RGB", size: tuple[int, int] = (20, 24), image_format=None
) -> None:
    """Write a flat image whose RGB value is (level, level, level) in the given PIL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if mode == "I;16":
        # A flat 16-bit image's own range says nothing of its depth, so the file declares 16 significant bits.
        image = Image.fromarray(np.full((height, width), level * 257, dtype=np.uint16))
        significant = PngInfo()
        significant.add(b"sBIT", bytes([16]))
        image.save(path, format=image_format, pnginfo=significant)
        return
    elif mode == "P":
        # An adaptive palette keeps the exact gray; the default web palette would dither it.
        image = Image.new("RGB", size, (level, level, level)).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = Image.new("RGB", size, (level, level, level)).convert(mode)
    image.save(path, format=image_format)


def element_levels(split) -> list[tuple[float, float]]:
    """(mean pixel value, label) of every element of an unbatched split, checking shape and range on the way."""
    found = []
    for image, label in split.dataset.as_numpy_iterator():
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 255.0
        found.append((float(image.mean()), label))
    return found


@pytest.fixture
def messy_folder(tmp_path) -> tuple[Path, dict[str, int]]:
    """NORMAL/PNEUMONIA folders with every image flavour, plus 4 bad files; returns (root, {file name: level})."""
    root = tmp_path / "xray"
    levels = {}
    variants = [
        ("rgb.png", "RGB", (20, 24), None),
        ("gray.png", "L", (30, 18), None),
        ("rgba.png", "RGBA", (16, 16), None),
        ("palette.png", "P", (25, 25), None),
        ("sixteen.png", "I;16", (21, 19), None),
        ("photo.jpg", "RGB", (40, 32), None),
        ("upper.JPEG", "RGB", (17, 23), "JPEG"),
        ("anim.gif", "P", (20, 20), None),
        ("scan.bmp", "RGB", (22, 22), None),
    ]
    for class_name, class_levels in (("NORMAL", NORMAL_LEVELS), ("PNEUMONIA", PNEUMONIA_LEVELS)):
        for index, level in enumerate(class_levels):
            file_name, mode, size, image_format = variants[index % len(variants)]
            name = f"{index:02d}_{file_name}"
            save_flat(root / class_name / name, level, mode=mode, size=size, image_format=image_format)
            levels[f"{class_name}/{name}"] = level
    # Bad files: random bytes, a truncated PNG, an empty JPEG and text named .png. notes.txt is ignored.
    (root / "NORMAL" / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    whole = (root / "PNEUMONIA" / f"00_{variants[0][0]}").read_bytes()
    (root / "PNEUMONIA" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "PNEUMONIA" / "empty.jpg").write_bytes(b"")
    (root / "NORMAL" / "text.png").write_text("this is not an image\n")
    (root / "NORMAL" / "notes.txt").write_text("ignored: not an image extension\n")
    return root, levels


# --- registry and argument checks -------------------------------------------------------------------


def test_registry_lists_the_builtin_datasets():
    assert {"imagefolder", "malaria", "synthetic"} <= set(available_datasets())
    assert available_datasets() == sorted(available_datasets())


def test_validate_dataset_args_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*imagefolder.*malaria.*synthetic"):
        validate_dataset_args("mnist", None)
    with pytest.raises(ValueError, match="imagefolder.*needs data_dir"):
        validate_dataset_args("imagefolder", None)
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=str(missing)):
        validate_dataset_args("imagefolder", str(missing))
    with pytest.raises(ValueError, match=str(missing)):
        validate_dataset_args("malaria", str(missing))
    validate_dataset_args("malaria", None)
    validate_dataset_args("synthetic", None)
    validate_dataset_args("imagefolder", str(tmp_path))


def test_load_dataset_rejects_bad_fractions():
    with pytest.raises(ValueError, match="validation_fraction"):
        load_dataset("synthetic", image_size=IMAGE_SIZE, validation_fraction=0.6, test_fraction=0.5)


# --- splitting helpers ------------------------------------------------------------------------------


def test_stratified_split_is_exact_stratified_and_seeded():
    strata = np.array([0] * 70 + [1] * 30)
    split_ids = stratified_split(strata, validation_fraction=0.2, test_fraction=0.1, seed=3)
    assert np.bincount(split_ids).tolist() == [70, 20, 10]
    # Each class keeps its share in every split, give or take one example.
    assert abs(int(np.sum((split_ids == 1) & (strata == 1))) - 6) <= 1
    assert abs(int(np.sum((split_ids == 2) & (strata == 1))) - 3) <= 1
    np.testing.assert_array_equal(
        split_ids, stratified_split(strata, validation_fraction=0.2, test_fraction=0.1, seed=3)
    )
    assert not np.array_equal(split_ids, stratified_split(strata, validation_fraction=0.2, test_fraction=0.1, seed=4))


def test_stratified_choice_keeps_class_balance():
    strata = np.array([0] * 90 + [1] * 10)
    chosen = stratified_choice(strata, 20, seed=0)
    assert len(chosen) == len(set(chosen.tolist())) == 20
    assert np.bincount(strata[chosen]).tolist() == [18, 2]


# --- synthetic --------------------------------------------------------------------------------------


def synthetic_arrays(loaded) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    arrays = {}
    for name, split in loaded.splits.items():
        pairs = list(split.dataset.as_numpy_iterator())
        arrays[name] = (np.stack([image for image, _ in pairs]), np.stack([label for _, label in pairs]))
    return arrays


def test_synthetic_is_deterministic_by_seed():
    first = load_dataset("synthetic", image_size=IMAGE_SIZE, seed=7, synthetic_examples=60)
    again = load_dataset("synthetic", image_size=IMAGE_SIZE, seed=7, synthetic_examples=60)
    other = load_dataset("synthetic", image_size=IMAGE_SIZE, seed=8, synthetic_examples=60)
    assert first.digest == again.digest
    assert first.digest != other.digest
    first_arrays, again_arrays, other_arrays = synthetic_arrays(first), synthetic_arrays(again), synthetic_arrays(other)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(first_arrays[name][0], again_arrays[name][0])
        np.testing.assert_array_equal(first_arrays[name][1], again_arrays[name][1])
    assert not np.array_equal(first_arrays["train"][0], other_arrays["train"][0])


def test_synthetic_binary_shapes_splits_and_labels():
    loaded = load_dataset("synthetic", image_size=IMAGE_SIZE, seed=1, synthetic_examples=200)
    assert (loaded.task, loaded.num_outputs, loaded.class_names) == ("binary", 1, ["uninfected", "parasitized"])
    assert {name: split.count for name, split in loaded.splits.items()} == {"train": 140, "val": 30, "test": 30}
    arrays = synthetic_arrays(loaded)
    for name, (images, labels) in arrays.items():
        assert images.shape == (loaded.splits[name].count, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert images.min() >= 0 and images.max() <= 255
        assert set(np.unique(labels).tolist()) <= {0.0, 1.0}
        assert labels.shape == (loaded.splits[name].count, 1)
        np.testing.assert_array_equal(loaded.splits[name].positives, labels.sum(axis=0))
    total_positive = sum(int(split.positives[0]) for split in loaded.splits.values())
    assert 70 <= total_positive <= 130
    # Parasitized cells carry dark dots, so their darkest pixels are darker than uninfected cells'.
    images, labels = arrays["train"]
    darkest = images.reshape(len(images), -1).min(axis=1)
    assert darkest[labels[:, 0] == 1].mean() < darkest[labels[:, 0] == 0].mean() - 30


def test_synthetic_multilabel_prevalence_and_cap():
    loaded = load_dataset(
        "synthetic", image_size=32, seed=2, synthetic_task="multilabel", synthetic_examples=300, max_examples=0
    )
    assert (loaded.task, loaded.num_outputs, loaded.class_names) == ("multilabel", 3, ["dots", "ring", "stripes"])
    positives = sum(split.positives for split in loaded.splits.values())
    prevalence = positives / 300
    assert np.all((prevalence > 0.3) & (prevalence < 0.5)), prevalence
    capped = load_dataset("synthetic", image_size=32, seed=2, synthetic_task="multilabel", max_examples=40)
    assert sum(split.count for split in capped.splits.values()) == 40


# --- imagefolder ------------------------------------------------------------------------------------


def test_imagefolder_skips_exactly_the_bad_files_and_labels_the_rest(messy_folder):
    root, levels = messy_folder
    with pytest.warns(UnreadableImageWarning):
        loaded = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, seed=0)
    assert loaded.skipped_images == 4
    skipped_names = sorted(Path(line.split(":")[0]).name for line in loaded.skipped_examples)
    assert skipped_names == ["corrupt.png", "empty.jpg", "text.png", "truncated.png"]
    assert (loaded.task, loaded.class_names, loaded.num_outputs) == ("binary", ["NORMAL", "PNEUMONIA"], 1)
    assert loaded.source == str(root)

    all_levels = sorted(levels.values())
    seen = []
    for split in loaded.splits.values():
        pairs = element_levels(split)
        assert len(pairs) == split.count
        assert int(split.positives[0]) == sum(int(label[0]) for _, label in pairs)
        for mean, label in pairs:
            level = min(all_levels, key=lambda candidate, mean=mean: abs(candidate - mean))
            assert abs(level - mean) < 2.0
            assert label[0] == (1.0 if level in PNEUMONIA_LEVELS else 0.0)
            seen.append(level)
    # No overlap between splits, and every readable file appears once.
    assert sorted(seen) == all_levels
    counts = {name: split.count for name, split in loaded.splits.items()}
    assert counts == {"train": 25, "val": 5, "test": 5}


def test_imagefolder_digest_follows_file_contents(messy_folder):
    root, _ = messy_folder
    with pytest.warns(UnreadableImageWarning):
        first = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, seed=0)
    with pytest.warns(UnreadableImageWarning):
        again = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, seed=0)
    assert first.digest == again.digest
    save_flat(root / "NORMAL" / "00_rgb.png", 21)
    with pytest.warns(UnreadableImageWarning):
        changed = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, seed=0)
    assert changed.digest != first.digest


def test_imagefolder_honours_train_val_test_folders(tmp_path):
    root = tmp_path / "pneumonia"
    sizes = {"train": 10, "val": 3, "test": 4}
    for split_name, count in sizes.items():
        for class_name, base in (("NORMAL", 20), ("PNEUMONIA", 150)):
            for index in range(count):
                save_flat(root / split_name / class_name / f"{index}.png", base + index)
    loaded = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, seed=0)
    assert {name: split.count for name, split in loaded.splits.items()} == {"train": 20, "val": 6, "test": 8}
    for split_name, split in loaded.splits.items():
        assert split.positives.tolist() == [sizes[split_name]]
        assert sorted(round(mean) for mean, _ in element_levels(split)) == sorted(
            [20 + index for index in range(sizes[split_name])] + [150 + index for index in range(sizes[split_name])]
        )


def test_imagefolder_carves_missing_val_out_of_train(tmp_path):
    root = tmp_path / "pneumonia"
    for split_name, count in (("train", 20), ("test", 4)):
        for class_name, base in (("NORMAL", 20), ("PNEUMONIA", 150)):
            for index in range(count):
                save_flat(root / split_name / class_name / f"{index}.png", base + index)
    loaded = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, seed=0, validation_fraction=0.2)
    counts = {name: split.count for name, split in loaded.splits.items()}
    assert counts == {"train": 32, "val": 8, "test": 8}
    assert loaded.splits["val"].positives.tolist() == [4]
    assert loaded.splits["test"].positives.tolist() == [4]


def test_imagefolder_with_one_class_is_rejected(tmp_path):
    for index in range(4):
        save_flat(tmp_path / "only" / "NORMAL" / f"{index}.png", 40)
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_dataset("imagefolder", data_dir=str(tmp_path / "only"), image_size=IMAGE_SIZE)


def test_imagefolder_with_three_classes_is_multiclass_one_hot(tmp_path):
    root = tmp_path / "three"
    class_levels = {"covid": 30, "normal": 120, "viral": 210}
    for class_name, level in class_levels.items():
        for index in range(10):
            save_flat(root / class_name / f"{index}.jpg", level)
    loaded = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, seed=5)
    assert (loaded.task, loaded.num_outputs, loaded.class_names) == ("multiclass", 3, ["covid", "normal", "viral"])
    total = np.zeros(3)
    for split in loaded.splits.values():
        for mean, label in element_levels(split):
            assert label.sum() == 1.0
            expected = min(range(3), key=lambda index, mean=mean: abs(list(class_levels.values())[index] - mean))
            assert int(np.argmax(label)) == expected
        total += split.positives
    assert total.tolist() == [10, 10, 10]


def test_imagefolder_max_examples_is_a_stratified_cap(tmp_path):
    root = tmp_path / "cap"
    for class_name, count in (("a", 30), ("b", 10)):
        for index in range(count):
            save_flat(root / class_name / f"{index}.png", 50 if class_name == "a" else 200, size=(8, 8))
    loaded = load_dataset("imagefolder", data_dir=str(root), image_size=IMAGE_SIZE, max_examples=20)
    assert sum(split.count for split in loaded.splits.values()) == 20
    assert sum(int(split.positives[0]) for split in loaded.splits.values()) == 5


# --- malaria ----------------------------------------------------------------------------------------


def malaria_split_hashes(loaded) -> dict[str, dict[str, float]]:
    """Split name -> {hash of the image tensor: label}."""
    result = {}
    for name, split in loaded.splits.items():
        result[name] = {
            hashlib.sha1(image.tobytes()).hexdigest(): float(label[0])
            for image, label in split.dataset.as_numpy_iterator()
        }
        assert len(result[name]) == split.count
    return result


def test_malaria_tfds_splits_are_disjoint_seeded_and_map_labels(tmp_path):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from serve.preprocess import decode_and_resize

    with tfds.testing.mock_data(num_examples=40, data_dir=str(tmp_path)):
        first = load_dataset("malaria", data_dir=str(tmp_path), image_size=IMAGE_SIZE, seed=1)
        again = load_dataset("malaria", data_dir=str(tmp_path), image_size=IMAGE_SIZE, seed=1)
        other = load_dataset("malaria", data_dir=str(tmp_path), image_size=IMAGE_SIZE, seed=2)
        builder = tfds.builder("malaria", data_dir=str(tmp_path))
        raw = builder.as_dataset(split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        # TFDS labels: 0 = parasitized, 1 = uninfected.
        tfds_label_by_hash = {
            hashlib.sha1(decode_and_resize(example["image"], IMAGE_SIZE).numpy().tobytes()).hexdigest(): int(
                example["label"]
            )
            for example in raw
        }
        first_hashes, again_hashes, other_hashes = (malaria_split_hashes(item) for item in (first, again, other))

    assert isinstance(first.splits["train"].dataset, tf.data.Dataset)
    assert (first.task, first.class_names, first.num_outputs, first.source) == (
        "binary",
        ["uninfected", "parasitized"],
        1,
        "tfds:malaria",
    )
    counts = {name: split.count for name, split in first.splits.items()}
    assert counts == {"train": 28, "val": 6, "test": 6}
    keys = [set(first_hashes[name]) for name in ("train", "val", "test")]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert set().union(*keys) == set(tfds_label_by_hash)
    for name, labels in first_hashes.items():
        for image_hash, label in labels.items():
            assert label == (1.0 if tfds_label_by_hash[image_hash] == 0 else 0.0)
        assert int(first.splits[name].positives[0]) == int(sum(labels.values()))
    assert first_hashes == again_hashes
    assert first.digest == again.digest
    assert first_hashes != other_hashes
    assert first.digest != other.digest


def test_malaria_reads_an_extracted_cell_images_folder(tmp_path):
    cells = tmp_path / "download" / "cell_images"
    # NIH names: one smear (C<slide>P<patient>) gives parasitized and uninfected cells; the folder splits by smear.
    for index in range(6):
        save_flat(cells / "Parasitized" / f"C{index}P{index}ThinF_IMG_20150604_1047{index}_cell_1.png", 200 + index)
        save_flat(cells / "Uninfected" / f"C{index}P{index}ThinF_IMG_20150604_1047{index}_cell_2.png", 40 + index)
    (cells / "Parasitized" / "Thumbs.db").write_bytes(b"\0" * 10)
    loaded = load_dataset("malaria", data_dir=str(tmp_path / "download"), image_size=IMAGE_SIZE, seed=0)
    assert (loaded.class_names, loaded.task, loaded.skipped_images) == (["uninfected", "parasitized"], "binary", 0)
    assert loaded.source == str(cells)
    total = 0
    for split in loaded.splits.values():
        for mean, label in element_levels(split):
            assert label[0] == (1.0 if mean > 128 else 0.0)
            total += 1
    assert total == 12
    assert sum(loaded.group_counts.values()) == 6 and min(loaded.group_counts.values()) >= 1


# --- make_batches -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_synthetic():
    return load_dataset("synthetic", image_size=IMAGE_SIZE, seed=3, synthetic_examples=60)


def batches_as_arrays(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(dataset.as_numpy_iterator())


def test_make_batches_shapes_and_evaluation_order(small_synthetic):
    split = small_synthetic.splits["train"]
    batches = batches_as_arrays(
        make_batches(split, batch_size=16, training=False, augmentation=POLICIES["cells"], seed=0)
    )
    assert [images.shape for images, _ in batches] == [(16, IMAGE_SIZE, IMAGE_SIZE, 3)] * 2 + [
        (10, IMAGE_SIZE, IMAGE_SIZE, 3)
    ]
    assert [labels.shape for _, labels in batches][-1] == (10, 1)
    # Evaluation batches keep the split order and are not augmented.
    unbatched = np.stack([image for image, _ in split.dataset.as_numpy_iterator()])
    np.testing.assert_array_equal(np.concatenate([images for images, _ in batches]), unbatched)


def test_make_batches_training_is_seeded_shuffled_and_stays_in_range(small_synthetic):
    split = small_synthetic.splits["train"]
    dataset = make_batches(split, batch_size=8, training=True, augmentation=POLICIES["cells"], seed=11)
    first_epoch, second_epoch = batches_as_arrays(dataset), batches_as_arrays(dataset)
    repeat = batches_as_arrays(
        make_batches(split, batch_size=8, training=True, augmentation=POLICIES["cells"], seed=11)
    )
    other = batches_as_arrays(make_batches(split, batch_size=8, training=True, augmentation=POLICIES["cells"], seed=12))
    for (images, labels), (repeat_images, repeat_labels) in zip(first_epoch, repeat, strict=True):
        assert images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert images.min() >= 0.0 and images.max() <= 255.0
        np.testing.assert_array_equal(images, repeat_images)
        np.testing.assert_array_equal(labels, repeat_labels)
    first_images = np.concatenate([images for images, _ in first_epoch])
    assert not np.array_equal(first_images, np.concatenate([images for images, _ in second_epoch]))
    assert not np.array_equal(first_images, np.concatenate([images for images, _ in other]))
    assert sum(len(labels) for _, labels in first_epoch) == split.count


def test_augment_image_is_pure_and_keeps_range():
    import tensorflow as tf

    from train.data.augment import augment_image

    bright = tf.fill([12, 12, 3], 255.0)
    dark = tf.zeros([12, 12, 3])
    pattern = tf.reshape(tf.range(12 * 12 * 3, dtype=tf.float32) % 256.0, [12, 12, 3])
    for image in (bright, dark, pattern):
        for seed_value in range(6):
            seed = tf.constant([seed_value, 1], dtype=tf.int64)
            out = augment_image(image, seed, POLICIES["cells"])
            assert out.shape == (12, 12, 3)
            assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0
            np.testing.assert_array_equal(out.numpy(), augment_image(image, seed, POLICIES["cells"]).numpy())
    changed = [
        not np.array_equal(
            augment_image(pattern, tf.constant([value, 0], tf.int64), POLICIES["cells"]).numpy(), pattern.numpy()
        )
        for value in range(6)
    ]
    assert any(changed)


def test_splits_over_the_cache_budget_are_decoded_every_epoch_with_the_same_values(monkeypatch, caplog):
    loaded = load_dataset("synthetic", image_size=32, seed=5, synthetic_examples=40)
    split = loaded.splits["val"]
    with caplog.at_level("WARNING"):
        cached = list(make_batches(split, batch_size=8, training=False, augmentation=None, seed=0))
    assert "not caching" not in caplog.text
    monkeypatch.setenv("MEDIMG_CACHE_BUDGET_GB", "0")
    with caplog.at_level("WARNING"):
        streamed = list(make_batches(split, batch_size=8, training=False, augmentation=None, seed=0))
    assert f"not caching {split.count} decoded images" in caplog.text
    assert len(streamed) == len(cached)
    for (left_images, left_labels), (right_images, right_labels) in zip(cached, streamed, strict=True):
        np.testing.assert_array_equal(left_images.numpy(), right_images.numpy())
        np.testing.assert_array_equal(left_labels.numpy(), right_labels.numpy())


def test_the_radiograph_policy_never_rotates_or_flips_vertically():
    import tensorflow as tf

    from train.data.spec import Split

    image = np.zeros((16, 16, 3), np.float32)
    image[:4] = 255.0  # A bright top band: a vertical flip or a rotation would move it.
    split = Split(
        dataset=tf.data.Dataset.from_tensors((image, np.zeros(1, np.float32))).repeat(64),
        count=64,
        positives=np.zeros(1, np.int64),
    )
    for images, _ in make_batches(split, batch_size=64, training=True, augmentation=POLICIES["radiograph"], seed=1):
        top = images.numpy()[:, :4].mean(axis=(1, 2, 3))
        bottom = images.numpy()[:, 4:].mean(axis=(1, 2, 3))
        assert np.all(top > bottom + 100)
