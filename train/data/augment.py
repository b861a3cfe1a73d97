"""Training-time image augmentation as a pure, seeded TensorFlow function: reads and writes nothing."""

from __future__ import annotations

# Small photometric jitter: brightness moves by at most 8% of the 0-255 range, contrast by 10%.
BRIGHTNESS_DELTA = 0.08 * 255.0
CONTRAST_RANGE = (0.9, 1.1)


def augment_image(image, seed, *, flip_vertical: bool = True, rotate: bool = True):
    """Randomly flip, rotate by a multiple of 90 degrees and jitter brightness/contrast of one image.

    image: float32 [H, W, 3] in 0-255. seed: int32/int64 tensor of shape [2]; the same image and seed
    always give the same output. The result keeps the shape and stays in 0-255. Rotation is applied
    only to square images so the shape never changes.
    """
    import tensorflow as tf

    static_shape = image.shape
    seeds = tf.random.split(tf.cast(seed, tf.int64), num=5)
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    if flip_vertical:
        image = tf.image.stateless_random_flip_up_down(image, seed=seeds[1])
    if rotate and static_shape[0] is not None and static_shape[0] == static_shape[1]:
        quarter_turns = tf.random.stateless_uniform([], seed=seeds[2], minval=0, maxval=4, dtype=tf.int32)
        image = tf.image.rot90(image, k=quarter_turns)
        image.set_shape(static_shape)
    image = tf.image.stateless_random_brightness(image, max_delta=BRIGHTNESS_DELTA, seed=seeds[3])
    image = tf.image.stateless_random_contrast(image, *CONTRAST_RANGE, seed=seeds[4])
    return tf.clip_by_value(image, 0.0, 255.0)
