"""Custom Keras layers of medimg models: reads raw 0-255 RGB tensors, writes the scaled tensor each backbone expects."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# ImageNet channel statistics as keras.applications.imagenet_utils uses them.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

SCALING_MODES = ("unit", "tf", "caffe", "torch")


@keras.saving.register_keras_serializable(package="medimg")
class ImageScaling(keras.layers.Layer):
    """Scales RGB images in the 0-255 range the way a backbone was trained to see them.

    Modes (channels-last input, same results as `keras.applications.<family>.preprocess_input`):
    - "unit": x / 255, values in [0, 1] (small_cnn).
    - "tf": x / 127.5 - 1, values in [-1, 1] (Inception/MobileNet style).
    - "caffe": RGB -> BGR, then subtract the ImageNet mean per channel, no scaling (VGG16, ResNet50).
    - "torch": x / 255, then subtract the ImageNet mean and divide by its standard deviation (DenseNet121).

    Keeping the scaling inside the model means the saved model takes the same 0-255 images
    that training and serving decode, whatever the backbone.
    """

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in SCALING_MODES:
            raise ValueError(f"ImageScaling mode must be one of {list(SCALING_MODES)}, got {mode!r}.")
        self.mode = mode

    def call(self, inputs):
        images = ops.cast(inputs, self.compute_dtype)
        if self.mode == "unit":
            return images / 255.0
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "caffe":
            bgr = ops.flip(images, axis=-1)
            mean = ops.convert_to_tensor(np.asarray(CAFFE_MEAN_BGR), dtype=self.compute_dtype)
            return bgr - mean
        mean = ops.convert_to_tensor(np.asarray(TORCH_MEAN_RGB), dtype=self.compute_dtype)
        std = ops.convert_to_tensor(np.asarray(TORCH_STD_RGB), dtype=self.compute_dtype)
        return (images / 255.0 - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
