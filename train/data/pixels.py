"""Stored uint8 pixels -> the float32 0-255 RGB images models take (cast, resize, gray to RGB): reads and writes nothing.

A prepared folder keeps its images as uint8 pixels of the prepared size, one gray channel for X-rays.
The input pipeline keeps them that way through cache, shuffle and batching (a quarter of the bytes of
float32, a twelfth for gray images) and converts whole batches: `to_float` (cast, and resize when the
training size differs from the stored one) before the photometric augmentation, `to_rgb` after it, so
jitter touches one channel instead of three. Both take one image [S, S, C] or a batch [B, S, S, C].

The resize is `serve.preprocess.resize`'s (bilinear, antialiased, clipped to 0-255) computed as matrix
products: resizing is linear and separable, so its weights, read once per size pair from
`tf.image.resize` of unit vectors, make each axis a product with a [out, in] matrix. The matrix is
banded (each output pixel mixes a few neighbours), so the product runs block by block over the band:
about four times less work than the resize op on two cores, same values up to float rounding
(tests/test_feed.py holds the two within 1e-3 on the 0-255 scale).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# Output rows per block of the banded product: small enough to skip most zeros, large enough for fast matmuls.
RESIZE_BLOCK_ROWS = 28


@functools.cache
def resize_weights(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of serve.preprocess.resize along one axis (bilinear, antialiased)."""
    import tensorflow as tf

    # Eagerly, also when first asked while a tf.data function is being traced.
    with tf.init_scope():
        # Each unit vector, as a [size_in, 1] image, resized to [size_out, 1]: one column of the matrix.
        units = tf.eye(size_in)[:, :, tf.newaxis, tf.newaxis]
        columns = tf.image.resize(units, [size_out, 1], method="bilinear", antialias=True).numpy()
    return columns[:, :, 0, 0].T.astype(np.float32)


@functools.cache
def _weight_blocks(size_in: int, size_out: int) -> tuple[tuple[int, int, np.ndarray], ...]:
    """(first input, end input, [rows, end - first] weights) per block of RESIZE_BLOCK_ROWS output rows."""
    weights = resize_weights(size_in, size_out)
    blocks = []
    for start in range(0, size_out, RESIZE_BLOCK_ROWS):
        rows = weights[start : start + RESIZE_BLOCK_ROWS]
        used = np.flatnonzero(np.any(rows != 0.0, axis=0))
        first, end = int(used[0]), int(used[-1]) + 1
        blocks.append((first, end, np.ascontiguousarray(rows[:, first:end])))
    return tuple(blocks)


def _resample(planes, size_out: int, axis: int):
    """float32 [N, H, W] resized to size_out along axis 1 or 2, block by block over the band."""
    import tensorflow as tf

    blocks = _weight_blocks(planes.shape[axis], size_out)
    if axis == 1:
        parts = [tf.matmul(weights, planes[:, first:end]) for first, end, weights in blocks]
    else:
        parts = [tf.matmul(planes[:, :, first:end], weights, transpose_b=True) for first, end, weights in blocks]
    return tf.concat(parts, axis=axis) if len(parts) > 1 else parts[0]


def resize_batch(images, image_size: int):
    """float32 [B, H, W, C] -> [B, image_size, image_size, C]: serve.preprocess.resize as banded matrix products."""
    import tensorflow as tf

    from serve.preprocess import resize

    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    if None in (height, width, channels):
        # The band is planned from static sizes; without them, the resize op itself.
        return resize(images, image_size)
    batch = tf.shape(images)[0]
    # Channels join the batch, so each product is a plain [N, H, W] matrix product.
    planes = tf.reshape(tf.transpose(images, [0, 3, 1, 2]) if channels > 1 else images, [-1, height, width])
    planes = _resample(_resample(planes, image_size, axis=1), image_size, axis=2)
    if channels > 1:
        planes = tf.transpose(tf.reshape(planes, [batch, channels, image_size, image_size]), [0, 2, 3, 1])
    else:
        planes = tf.reshape(planes, [batch, image_size, image_size, 1])
    return tf.clip_by_value(planes, 0.0, 255.0)


def to_float(pixels, image_size: int) -> tf.Tensor:
    """uint8 [..., s, s, C] -> float32 [..., image_size, image_size, C] in 0-255 (resized only when s differs)."""
    import tensorflow as tf

    images = tf.cast(pixels, tf.float32)
    if pixels.shape[-3] == image_size and pixels.shape[-2] == image_size:
        return images
    if images.shape.rank == 3:
        return resize_batch(images[tf.newaxis], image_size)[0]
    return resize_batch(images, image_size)


def to_rgb(images) -> tf.Tensor:
    """[..., H, W, 1] gray -> [..., H, W, 3] with the gray value in every channel; RGB passes through."""
    import tensorflow as tf

    if images.shape[-1] != 1:
        return images
    # A [N, 1] x [1, 3] product of ones copies each value exactly, and writes three channels faster than
    # tf.tile or tf.image.grayscale_to_rgb.
    rgb = tf.matmul(tf.reshape(images, [-1, 1]), tf.ones([1, 3], images.dtype))
    return tf.reshape(rgb, tf.concat([tf.shape(images)[:-1], [3]], axis=0))


def to_images(pixels, image_size: int) -> tf.Tensor:
    """uint8 pixels -> the float32 [..., image_size, image_size, 3] images in 0-255 that models take."""
    return to_rgb(to_float(pixels, image_size))
