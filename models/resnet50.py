"""ResNet50 classifier: reads 0-255 RGB images (H, W, 3), writes class probabilities through the shared head.

He, K., Zhang, X., Ren, S. and Sun, J. (2016). Deep Residual Learning for Image Recognition.
CVPR 2016, pp. 770-778. https://arxiv.org/abs/1512.03385
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from models import register
from models.head import build_from_application


@register("resnet50")
def build_resnet50(
    input_shape: Sequence[int],
    num_outputs: int,
    *,
    task: str = "binary",
    dropout: float = 0.3,
    l2: float = 0.0,
    weights: str | Path | None = None,
    trainable_layers: int = -1,
    output_bias: Sequence[float] | np.ndarray | None = None,
) -> keras.Model:
    """ResNet50 convolutional base (keras.applications, caffe-style input scaling) with the shared head.

    `weights`: "imagenet", None/"none" (random init) or a path to a backbone weights file
    (include_top=False layout, as keras.applications accepts). Inputs must be at least 32x32.
    """
    return build_from_application(
        keras.applications.ResNet50,
        input_shape,
        num_outputs,
        name="resnet50",
        scaling_mode="caffe",
        task=task,
        dropout=dropout,
        l2=l2,
        weights=weights,
        trainable_layers=trainable_layers,
        output_bias=output_bias,
    )
