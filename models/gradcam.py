"""Grad-CAM class-activation heatmaps: reads a medimg keras.Model and images, writes heatmaps in [0, 1] as NumPy arrays.

Selvaraju, R. R. et al. (2017). Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization. ICCV 2017. https://arxiv.org/abs/1610.02391
Needs the TensorFlow backend (GradientTape); TensorFlow is imported on call, not at module import.
"""

from __future__ import annotations

import keras
import numpy as np

from models import last_conv_layer_name


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
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"gradcam_heatmap needs the TensorFlow backend, got KERAS_BACKEND={keras.backend.backend()!r}."
        )
    import tensorflow as tf

    images = np.asarray(image_batch, dtype="float32")
    single_image = images.ndim == 3
    if single_image:
        images = images[np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"image_batch must have shape (H, W, C) or (B, H, W, C), got {images.shape}.")
    num_outputs = model.output.shape[-1]
    if not 0 <= class_index < num_outputs:
        raise ValueError(f"class_index must be in [0, {num_outputs}) for model {model.name!r}, got {class_index}.")

    layer_name = layer_name or last_conv_layer_name(model)
    # The models are flat functional graphs, so any backbone layer's output is reachable from the input.
    grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    inputs = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        feature_maps, predictions = grad_model(inputs, training=False)
        class_scores = predictions[:, class_index]
    gradients = tape.gradient(class_scores, feature_maps)
    if gradients is None:
        raise ValueError(f"class output {class_index} does not depend on layer {layer_name!r}; pick an earlier layer.")

    # Channel weights are the spatially averaged gradients; ReLU keeps evidence for the class only.
    channel_weights = tf.reduce_mean(tf.cast(gradients, "float32"), axis=(1, 2), keepdims=True)
    heatmaps = tf.nn.relu(tf.reduce_sum(tf.cast(feature_maps, "float32") * channel_weights, axis=-1))
    heatmaps = tf.image.resize(heatmaps[..., tf.newaxis], images.shape[1:3], method="bilinear")[..., 0]
    maxima = tf.reduce_max(heatmaps, axis=(1, 2), keepdims=True)
    heatmaps = tf.math.divide_no_nan(heatmaps, maxima).numpy()
    heatmaps = np.clip(heatmaps, 0.0, 1.0)
    return heatmaps[0] if single_image else heatmaps
