"""Grad-CAM class-activation heatmaps: reads a medimg keras.Model and images, writes heatmaps in [0, 1] as NumPy arrays.

Selvaraju, R. R. et al. (2017). Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization. ICCV 2017. https://arxiv.org/abs/1610.02391
Needs the TensorFlow backend (GradientTape); TensorFlow is imported on call, not at module import.
"""

from __future__ import annotations

import keras
import numpy as np

from models import last_conv_layer_name

# A class index of TOP_CLASS explains each image's most probable output.
TOP_CLASS = -1


class GradCam:
    """Grad-CAM of one model, built once and reused: `GradCam(model)(images, class_indices)`.

    compiled=True traces the gradient computation with tf.function on first use, which makes
    repeated calls (a server explaining request after request) several times faster; the one-off
    `gradcam_heatmap` runs eagerly instead, so it pays no tracing cost.
    """

    def __init__(self, model: keras.Model, layer_name: str | None = None, *, compiled: bool = True):
        if keras.backend.backend() != "tensorflow":
            raise ValueError(f"Grad-CAM needs the TensorFlow backend, got KERAS_BACKEND={keras.backend.backend()!r}.")
        import tensorflow as tf

        self.model = model
        self.layer_name = layer_name or last_conv_layer_name(model)
        self.num_outputs = int(model.output.shape[-1])
        # The models are flat functional graphs, so any backbone layer's output is reachable from the input.
        self._grad_model = keras.Model(model.inputs, [model.get_layer(self.layer_name).output, model.output])
        # No tensor-dependent Python control flow, so AutoGraph has nothing to convert.
        self._compute = (
            tf.function(self._heatmaps, reduce_retracing=True, autograph=False) if compiled else self._heatmaps
        )

    def _heatmaps(self, images, class_indices):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            feature_maps, predictions = self._grad_model(images, training=False)
            top = tf.argmax(predictions, axis=-1, output_type=tf.int32)
            chosen = tf.where(class_indices == TOP_CLASS, top, class_indices)
            class_scores = tf.gather(predictions, chosen, axis=-1, batch_dims=1)
        gradients = tape.gradient(class_scores, feature_maps)
        if gradients is None:
            raise ValueError(f"class outputs do not depend on layer {self.layer_name!r}; pick an earlier layer.")
        # Channel weights are the spatially averaged gradients; ReLU keeps evidence for the class only.
        channel_weights = tf.reduce_mean(tf.cast(gradients, "float32"), axis=(1, 2), keepdims=True)
        heatmaps = tf.nn.relu(tf.reduce_sum(tf.cast(feature_maps, "float32") * channel_weights, axis=-1))
        heatmaps = tf.image.resize(heatmaps[..., tf.newaxis], tf.shape(images)[1:3], method="bilinear")[..., 0]
        maxima = tf.reduce_max(heatmaps, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(heatmaps, maxima), predictions, chosen

    def __call__(self, image_batch: np.ndarray, class_indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heatmaps (B, H, W) in [0, 1], predictions (B, outputs) and the explained class index of each image.

        image_batch: (B, H, W, 3) in the 0-255 range the model takes. class_indices: one int for every
        image or one per image; TOP_CLASS picks each image's most probable output.
        """
        import tensorflow as tf

        images = np.asarray(image_batch, dtype="float32")
        if images.ndim != 4:
            raise ValueError(f"image_batch must have shape (B, H, W, C), got {images.shape}.")
        indices = np.broadcast_to(np.asarray(class_indices, dtype="int32"), (len(images),))
        bad = [int(index) for index in indices if index != TOP_CLASS and not 0 <= index < self.num_outputs]
        if bad:
            raise ValueError(
                f"class_index must be in [0, {self.num_outputs}) for model {self.model.name!r}, got {bad[0]}."
            )
        heatmaps, predictions, chosen = self._compute(tf.convert_to_tensor(images), tf.convert_to_tensor(indices))
        return np.clip(heatmaps.numpy(), 0.0, 1.0), predictions.numpy(), chosen.numpy()


def gradcam_heatmap(
    model: keras.Model,
    image_batch: np.ndarray,
    class_index: int = 0,
    layer_name: str | None = None,
) -> np.ndarray:
    """Grad-CAM heatmap of output `class_index`, resized to the image size and scaled to [0, 1].

    image_batch: one image (H, W, 3) or a batch (B, H, W, 3) in the 0-255 range the model takes.
    Returns (H, W) for one image and (B, H, W) for a batch. layer_name defaults to
    `last_conv_layer_name(model)`. A heatmap with no positive evidence is all zeros.
    """
    images = np.asarray(image_batch, dtype="float32")
    single_image = images.ndim == 3
    if single_image:
        images = images[np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"image_batch must have shape (H, W, C) or (B, H, W, C), got {images.shape}.")
    num_outputs = model.output.shape[-1]
    if not 0 <= class_index < num_outputs:
        raise ValueError(f"class_index must be in [0, {num_outputs}) for model {model.name!r}, got {class_index}.")
    heatmaps, _, _ = GradCam(model, layer_name, compiled=False)(images, class_index)
    return heatmaps[0] if single_image else heatmaps
