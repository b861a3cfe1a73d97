"""Training-time image augmentation as pure, seeded TensorFlow functions, and the policy per image type: reads and writes nothing.

Policies (the `augment` parameter):
- `cells`: cell and tissue crops have no up or left: flips both ways, quarter turns and jitter;
- `radiograph`: a radiograph has an up, and a rotated or upside-down chest is not a chest film:
  left-right flips and brightness/contrast jitter only;
- `none`: no augmentation;
- `auto`: the dataset's own (`DatasetSpec.augmentation`; imagefolder takes radiograph, the safe choice for
  an unknown folder of medical images).

Each image's transform is drawn from its own seed (`augmentation_parameters`, the draws of TensorFlow's
per-image stateless ops) and applied either to one image (`transform_image`: only the flips it takes are
computed, the jitter is TensorFlow's fused contrast op) or to a whole batch (`augment_batch`, `flip_batch`,
`jitter_batch`: every flip computed for the batch and selected per image), with the same result. The input
pipeline transforms images that are already float32 at the training size one by one, before batching (a
batch-wide select moves every pixel several times over, which costs more than the flips themselves), and
stored uint8 pixels per batch, where the batched conversion pays for itself (train.data.pipeline).
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


def augmentation_parameters(seed, policy: Augmentation) -> dict:
    """One image's random transform, drawn from its int [2] seed exactly as TensorFlow's per-image stateless ops draw it.

    `tf.image.stateless_random_flip_left_right(image, seeds[0])` flips when a uniform [0, 1) draw from its seed is
    below 0.5, `stateless_random_brightness`/`stateless_random_contrast` draw one uniform from theirs: the same
    draws here, as scalars, so `augment_batch` applies to a whole batch what those ops would do image by image.
    Cheap (a few scalar ops): the input pipeline draws them per image before batching.
    """
    import tensorflow as tf

    seeds = tf.random.split(tf.cast(seed, tf.int64), num=5)

    def uniform(index: int, low: float, high: float):
        return tf.random.stateless_uniform([], seed=seeds[index], minval=low, maxval=high)

    never = tf.constant(False)
    return {
        "flip_left_right": uniform(0, 0.0, 1.0) < 0.5 if policy.horizontal_flip else never,
        "flip_up_down": uniform(1, 0.0, 1.0) < 0.5 if policy.vertical_flip else never,
        "quarter_turns": (
            tf.random.stateless_uniform([], seed=seeds[2], minval=0, maxval=4, dtype=tf.int32)
            if policy.rotate_90
            else tf.constant(0, tf.int32)
        ),
        "brightness": uniform(3, -policy.brightness_delta, policy.brightness_delta),
        "contrast": uniform(4, *policy.contrast_range),
    }


def batch_parameters(seeds, policy: Augmentation) -> dict:
    """`augmentation_parameters` of every image of a batch, from its seeds [B, 2]: each image's draws from its own seed."""
    import tensorflow as tf

    signature = {
        "flip_left_right": tf.TensorSpec([], tf.bool),
        "flip_up_down": tf.TensorSpec([], tf.bool),
        "quarter_turns": tf.TensorSpec([], tf.int32),
        "brightness": tf.TensorSpec([], tf.float32),
        "contrast": tf.TensorSpec([], tf.float32),
    }
    # One op runs the scalar draws of the whole batch (cheaper than a tf.data map step per image).
    return tf.map_fn(lambda seed: augmentation_parameters(seed, policy), seeds, fn_output_signature=signature)


def _net_flips(parameters: dict, square: bool):
    """(transpose, flip left-right, flip up-down) per image: flips, then quarter turns, as one transpose and two flips.

    tf.image.rot90 turns by k quarters as: k=1 flip up-down after a transpose, k=2 both flips, k=3 flip left-right
    after a transpose; a transpose swaps which flip came before it. So the policy's flip, flip, turn is a transpose
    (odd k) followed by each flip or not.
    """
    import tensorflow as tf

    left_right, up_down = parameters["flip_left_right"], parameters["flip_up_down"]
    turns = parameters["quarter_turns"]
    if not square:
        return None, left_right, up_down
    odd = tf.equal(turns % 2, 1)
    net_left_right = tf.where(
        odd, tf.math.logical_xor(up_down, tf.equal(turns, 3)), tf.math.logical_xor(left_right, tf.equal(turns, 2))
    )
    net_up_down = tf.where(
        odd, tf.math.logical_xor(left_right, tf.equal(turns, 1)), tf.math.logical_xor(up_down, tf.equal(turns, 2))
    )
    return odd, net_left_right, net_up_down


def flip_batch(images, parameters: dict, policy: Augmentation):
    """The geometric part of each image's transform on a batch [B, H, W, C] of any dtype: flips and quarter turns.

    Each image gets what the per-image policy gives it: left-right flip, then up-down flip, then a quarter
    turn (square images only), as one select per axis over the batch instead of a branch per image. It
    commutes with resizing, so the input pipeline flips stored uint8 pixels, a quarter of float32's bytes.
    """
    import tensorflow as tf

    # One channel is dropped while flipping: TensorFlow reverses [B, H, W] about three times faster than [B, H, W, 1].
    gray = images.shape[-1] == 1
    planes = images[..., 0] if gray else images
    rank = planes.shape.rank

    def per_image(condition):
        return tf.reshape(condition, [-1] + [1] * (rank - 1))

    square = policy.rotate_90 and images.shape[1] is not None and images.shape[1] == images.shape[2]
    transpose, left_right, up_down = _net_flips(parameters, square)
    if transpose is not None:
        planes = tf.where(per_image(transpose), tf.transpose(planes, [0, 2, 1, *range(3, rank)]), planes)
    if policy.horizontal_flip or square:
        planes = tf.where(per_image(left_right), tf.reverse(planes, [2]), planes)
    if policy.vertical_flip or square:
        planes = tf.where(per_image(up_down), tf.reverse(planes, [1]), planes)
    return planes[..., tf.newaxis] if gray else planes


def jitter_batch(images, parameters: dict):
    """The photometric part on float32 [B, H, W, C] in 0-255: brightness shift, contrast about each channel's mean, clip.

    Shifting by d and then scaling about the (shifted) mean by f is one multiply-add per pixel:
    x * f + mean(x) * (1 - f) + d, the same values as tf.image's brightness then contrast ops.
    """
    import tensorflow as tf

    factor = tf.reshape(parameters["contrast"], [-1, 1, 1, 1])
    shift = tf.reshape(parameters["brightness"], [-1, 1, 1, 1])
    means = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value(images * factor + (means * (1.0 - factor) + shift), 0.0, 255.0)


def augment_batch(images, parameters: dict, policy: Augmentation):
    """Apply per-image transforms (`augmentation_parameters`, batched) to float32 images [B, H, W, C] in 0-255.

    `flip_batch`, then `jitter_batch`. Works on any channel count, so gray images can be augmented on one
    channel and made RGB after.
    """
    return jitter_batch(flip_batch(images, parameters, policy), parameters)


def flip_image(image, parameters: dict, policy: Augmentation):
    """`flip_batch` for one image [H, W, C] with its scalar `augmentation_parameters`: a branch per flip, so an
    image that does not flip is not copied and one that does is moved once per flip (about a third of the
    work of selecting between flipped and unflipped copies of a batch).
    """
    import tensorflow as tf

    square = policy.rotate_90 and image.shape[0] is not None and image.shape[0] == image.shape[1]
    transpose, left_right, up_down = _net_flips(parameters, square)
    if transpose is not None:
        image = tf.cond(transpose, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    if policy.horizontal_flip or square:
        image = tf.cond(left_right, lambda: tf.reverse(image, [1]), lambda: image)
    if policy.vertical_flip or square:
        image = tf.cond(up_down, lambda: tf.reverse(image, [0]), lambda: image)
    return image


def jitter_image(image, parameters: dict):
    """`jitter_batch` for one float32 image [H, W, C] in 0-255: TensorFlow's fused contrast op (one pass for
    x * f + mean(x) * (1 - f)), then the brightness shift and the clip. Shifting before or after the contrast
    gives the same values: the contrast moves every pixel about the mean, which the shift moves along.
    """
    import tensorflow as tf

    contrasted = tf.image.adjust_contrast(image, parameters["contrast"])
    return tf.clip_by_value(contrasted + parameters["brightness"], 0.0, 255.0)


def transform_image(image, parameters: dict, policy: Augmentation):
    """One float32 image [H, W, C] in 0-255 transformed by its `augmentation_parameters`: `flip_image`, then
    `jitter_image`; the same values as `augment_batch` gives that image in a batch (up to float rounding)."""
    return jitter_image(flip_image(image, parameters, policy), parameters)


def augment_image(image, seed, policy: Augmentation):
    """Randomly flip, rotate by a multiple of 90 degrees and jitter brightness/contrast of one image, as `policy` allows.

    image: float32 [H, W, C] in 0-255. seed: int32/int64 tensor of shape [2]; the same image and seed
    always give the same output. The result keeps the shape and stays in 0-255. Rotation is applied
    only to square images so the shape never changes. The same transform as `augment_batch` on a batch of one.
    """
    return transform_image(image, augmentation_parameters(seed, policy), policy)
