"""DenseNet121 classifier: reads 0-255 RGB images (H, W, 3), writes class probabilities through the shared head.

Huang, G., Liu, Z., van der Maaten, L. and Weinberger, K. Q. (2017). Densely Connected
Convolutional Networks. CVPR 2017, pp. 4700-4708. https://arxiv.org/abs/1608.06993

DenseNet121 is the backbone of CheXNet (Rajpurkar et al., 2017, https://arxiv.org/abs/1711.05225),
the usual baseline for ChestX-ray14.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from models import register
from models.head import build_from_application


@register("densenet121")
def build_densenet121(
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
    """DenseNet121 convolutional base (keras.applications, torch-style input scaling) with the shared head.

    `weights`: "imagenet", None/"none" (random init) or a path to a backbone weights file
    (include_top=False layout, as keras.applications accepts). Inputs must be at least 32x32.
    """
    return build_from_application(
        keras.applications.DenseNet121,
        input_shape,
        num_outputs,
        name="densenet121",
        scaling_mode="torch",
        task=task,
        dropout=dropout,
        l2=l2,
        weights=weights,
        trainable_layers=trainable_layers,
        output_bias=output_bias,
    )
