"""Training-time image augmentation as a pure, seeded TensorFlow function, and the policy per image type: reads and writes nothing.

Policies (the `augment` parameter):
- `cells`: cell and tissue crops have no up or left: flips both ways, quarter turns and jitter;
- `radiograph`: a radiograph has an up, and a rotated or upside-down chest is not a chest film:
  left-right flips and brightness/contrast jitter only;
- `none`: no augmentation;
- `auto`: the dataset's own (`DatasetSpec.augmentation`; imagefolder takes radiograph, the safe choice for
  an unknown folder of medical images).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Small photometric jitter: brightness moves by at most 8% of the 0-255 range, contrast by 10%.
BRIGHTNESS_DELTA = 0.08 * 255.0
CONTRAST_RANGE = (0.9, 1.1)


@dataclass(frozen=True)
class Augmentation:
    """What training-time augmentation may do to an image."""

    name: str
    horizontal_flip: bool
    vertical_flip: bool
    rotate_90: bool
    brightness_delta: float = BRIGHTNESS_DELTA
    contrast_range: tuple[float, float] = CONTRAST_RANGE

    def to_dict(self) -> dict:
        return asdict(self)


POLICIES = {
    "cells": Augmentation("cells", horizontal_flip=True, vertical_flip=True, rotate_90=True),
    "radiograph": Augmentation("radiograph", horizontal_flip=True, vertical_flip=False, rotate_90=False),
}


def resolve_augmentation(augment: str, dataset: str) -> Augmentation | None:
    """The policy of an `augment` value for a dataset (None for `none`); `auto` is the dataset spec's policy."""
    from train.data import get_dataset_spec

    name = get_dataset_spec(dataset).augmentation if augment == "auto" else augment
    return POLICIES.get(name)


def augment_image(image, seed, policy: Augmentation):
    """Randomly flip, rotate by a multiple of 90 degrees and jitter brightness/contrast of one image, as `policy` allows.

    image: float32 [H, W, 3] in 0-255. seed: int32/int64 tensor of shape [2]; the same image and seed
    always give the same output. The result keeps the shape and stays in 0-255. Rotation is applied
    only to square images so the shape never changes.
    """
    import tensorflow as tf

    static_shape = image.shape
    seeds = tf.random.split(tf.cast(seed, tf.int64), num=5)
    if policy.horizontal_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    if policy.vertical_flip:
        image = tf.image.stateless_random_flip_up_down(image, seed=seeds[1])
    if policy.rotate_90 and static_shape[0] is not None and static_shape[0] == static_shape[1]:
        quarter_turns = tf.random.stateless_uniform([], seed=seeds[2], minval=0, maxval=4, dtype=tf.int32)
        image = tf.image.rot90(image, k=quarter_turns)
        image.set_shape(static_shape)
    image = tf.image.stateless_random_brightness(image, max_delta=policy.brightness_delta, seed=seeds[3])
    image = tf.image.stateless_random_contrast(image, *policy.contrast_range, seed=seeds[4])
    return tf.clip_by_value(image, 0.0, 255.0)
