"""Small VGG-style CNN trained from scratch: reads 0-255 RGB images (H, W, 3), writes class probabilities.

Blocks of two 3x3 convolutions with batch normalization and max pooling follow
Simonyan, K. and Zisserman, A. (2015), Very Deep Convolutional Networks for Large-Scale Image
Recognition, ICLR 2015 (https://arxiv.org/abs/1409.1556), with batch normalization from
Ioffe, S. and Szegedy, C. (2015), Batch Normalization, ICML 2015 (https://arxiv.org/abs/1502.03167).
A baseline of this size reaches high accuracy on the malaria cell images of
Rajaraman, S. et al. (2018), PeerJ 6:e4568 (https://doi.org/10.7717/peerj.4568).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from models import register
from models.head import finish_model, resolve_weights, scaled_input, validate_head_arguments, validate_input_shape


def conv_bn_relu(inputs: keras.KerasTensor, filters: int, *, name: str) -> keras.KerasTensor:
    """3x3 convolution, batch normalization, ReLU. The convolution has no bias: BN's beta replaces it."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(inputs)
    # Momentum 0.7 instead of Keras' 0.99: the weights of a small CNN move fast, and slower moving
    # statistics lag behind the batch statistics, so inference-mode outputs are miscalibrated for
    # several epochs. Measured on synthetic cells (64 px, 15 steps/epoch, 3 epochs): with 0.9 every
    # validation image was called negative until epoch 3 (test accuracy 0.71 at AUROC 1.0); with 0.8
    # validation was right from epoch 2 and with 0.7 from epoch 1.
    x = keras.layers.BatchNormalization(momentum=0.7, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def conv_block(inputs: keras.KerasTensor, filters: int, *, block_index: int) -> keras.KerasTensor:
    """Conv-BN-ReLU twice, then 2x2 max pooling."""
    x = conv_bn_relu(inputs, filters, name=f"block{block_index}_1")
    x = conv_bn_relu(x, filters, name=f"block{block_index}_2")
    return keras.layers.MaxPooling2D(2, name=f"block{block_index}_pool")(x)


@register("small_cnn")
def build_small_cnn(
    input_shape: Sequence[int],
    num_outputs: int,
    *,
    task: str = "binary",
    dropout: float = 0.3,
    l2: float = 0.0,
    weights: str | Path | None = None,
    trainable_layers: int = -1,
    output_bias: Sequence[float] | np.ndarray | None = None,
    convolutions: int = 3,
    filters: int = 32,
) -> keras.Model:
    """`convolutions` conv blocks whose filter count starts at `filters` and doubles per block, then the shared head.

    `weights`: None/"none" (random init) or a path to full-model weights written by `model.save_weights`
    (or a `.keras` file) of a small_cnn built with the same arguments. There are no ImageNet weights.
    """
    validate_head_arguments(
        num_outputs, task=task, dropout=dropout, l2=l2, trainable_layers=trainable_layers, output_bias=output_bias
    )
    if not isinstance(convolutions, int) or convolutions < 1:
        raise ValueError(f"small_cnn convolutions must be a positive integer, got {convolutions!r}.")
    if not isinstance(filters, int) or filters < 1:
        raise ValueError(f"small_cnn filters must be a positive integer, got {filters!r}.")
    # Every block halves height and width, so the input must survive `convolutions` poolings.
    shape = validate_input_shape(input_shape, minimum_size=2**convolutions)
    weights_path = resolve_weights(weights, family="small_cnn", imagenet_available=False)

    inputs, x = scaled_input(shape, "unit")
    for block_index in range(1, convolutions + 1):
        x = conv_block(x, filters * 2 ** (block_index - 1), block_index=block_index)
    return finish_model(
        inputs,
        x,
        num_outputs,
        name="small_cnn",
        task=task,
        dropout=dropout,
        l2=l2,
        trainable_layers=trainable_layers,
        output_bias=output_bias,
        pretrained=weights_path is not None,
        weights_path=weights_path,
    )
