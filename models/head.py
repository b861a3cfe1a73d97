"""Shared builder parts (scaling, head, freezing, weights): reads a backbone feature map, writes the keras.Model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from models import TASKS
from models.layers import ImageScaling


def validate_head_arguments(
    num_outputs: int,
    *,
    task: str,
    dropout: float,
    l2: float,
    trainable_layers: int,
    output_bias: Sequence[float] | np.ndarray | None,
) -> None:
    """Raises ValueError naming the bad argument before any layer is built."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}.")
    if not isinstance(num_outputs, int | np.integer) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive integer, got {num_outputs!r}.")
    if task == "binary" and num_outputs != 1:
        raise ValueError(
            f"task='binary' needs num_outputs=1 (one sigmoid unit), got {num_outputs}; "
            "use task='multiclass' or 'multilabel' for more outputs."
        )
    if task == "multiclass" and num_outputs < 2:
        raise ValueError(f"task='multiclass' needs num_outputs >= 2, got {num_outputs}; use task='binary' for one.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    if l2 < 0.0:
        raise ValueError(f"l2 must be >= 0 (0 disables it), got {l2!r}.")
    if not isinstance(trainable_layers, int | np.integer) or trainable_layers < -1:
        raise ValueError(
            f"trainable_layers must be -1 (all), 0 (head only) or a positive layer count, got {trainable_layers!r}."
        )
    if output_bias is not None and np.asarray(output_bias, dtype="float64").shape != (num_outputs,):
        raise ValueError(
            f"output_bias must hold one value per output ({num_outputs}), got shape {np.asarray(output_bias).shape}."
        )


def resolve_weights(weights: str | Path | None, *, family: str, imagenet_available: bool = True) -> str | None:
    """Returns None, "imagenet" or an existing file path; raises for anything else before heavy work starts."""
    if weights is None or str(weights).strip().lower() in ("", "none"):
        return None
    if str(weights).strip().lower() == "imagenet":
        if not imagenet_available:
            raise ValueError(
                f"{family} has no ImageNet weights; use weights='none' (random init) or a path to a weights file."
            )
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file for {family} not found: {path} (use 'imagenet', 'none' or an existing file path)."
        )
    return str(path)


def validate_input_shape(input_shape: Sequence[int], minimum_size: int = 1) -> tuple[int, int, int]:
    """Returns input_shape as a (height, width, 3) tuple, or raises ValueError saying what is wrong."""
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3) for RGB images, got {shape}.")
    height, width, _ = shape
    if min(height, width) < minimum_size:
        raise ValueError(f"input_shape {shape} is too small: height and width must be at least {minimum_size}.")
    return int(height), int(width), 3


def scaled_input(input_shape: Sequence[int], mode: str) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Returns the model input (0-255 RGB) and the tensor the backbone sees after ImageScaling."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    return inputs, ImageScaling(mode, name="image_scaling")(inputs)


def classifier_head(
    features: keras.KerasTensor,
    num_outputs: int,
    *,
    task: str,
    dropout: float,
    l2: float,
) -> keras.KerasTensor:
    """Global average pooling, dropout and the float32 `predictions` Dense layer."""
    pooled = keras.layers.GlobalAveragePooling2D(name="head_pooling")(features)
    pooled = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    activation = "softmax" if task == "multiclass" else "sigmoid"
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    # float32 output keeps sigmoid/softmax and the loss numerically safe under mixed_float16.
    return keras.layers.Dense(
        num_outputs,
        activation=activation,
        kernel_regularizer=regularizer,
        dtype="float32",
        name="predictions",
    )(pooled)


def is_head_layer(layer: keras.layers.Layer) -> bool:
    return layer.name in ("head_pooling", "head_dropout", "predictions")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers between the input scaling and the head, in graph order: what trainable_layers counts."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer | ImageScaling) and not is_head_layer(layer)
    ]


def apply_trainable_layers(model: keras.Model, trainable_layers: int, *, pretrained: bool) -> None:
    """Freezes the backbone except its last `trainable_layers` layers (-1 keeps everything trainable).

    Counting follows the usual Keras fine-tuning recipe (`base_model.layers[-N:]`): every backbone
    layer counts, with or without weights. The head always stays trainable.
    """
    if trainable_layers == -1:
        return
    layers = backbone_layers(model)
    first_trainable = max(len(layers) - trainable_layers, 0)
    for position, layer in enumerate(layers):
        layer.trainable = position >= first_trainable
        # BatchNormalization in a frozen or partly frozen pretrained backbone stays frozen: in Keras 3 a
        # frozen BN layer also runs in inference mode, so small fine-tuning batches cannot wreck the
        # ImageNet statistics (Keras transfer-learning guide). A randomly initialised backbone has no
        # statistics worth keeping, so its trainable BN layers keep learning.
        if pretrained and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def finish_model(
    inputs: keras.KerasTensor,
    features: keras.KerasTensor,
    num_outputs: int,
    *,
    name: str,
    task: str,
    dropout: float,
    l2: float,
    trainable_layers: int,
    output_bias: Sequence[float] | np.ndarray | None,
    pretrained: bool,
    weights_path: str | None = None,
) -> keras.Model:
    """Puts the shared head on a backbone feature map and returns the flat functional model.

    `output_bias` is only an initial value: `weights_path` (full-model weights, as
    `model.save_weights` writes them) is loaded after it, so trained weights win.
    """
    outputs = classifier_head(features, num_outputs, task=task, dropout=dropout, l2=l2)
    model = keras.Model(inputs, outputs, name=name)
    if output_bias is not None:
        # Assigned after building so the saved config keeps the plain "zeros" initializer.
        bias = model.get_layer("predictions").bias
        bias.assign(np.asarray(output_bias, dtype=bias.dtype))
    if weights_path is not None:
        model.load_weights(weights_path)
    apply_trainable_layers(model, trainable_layers, pretrained=pretrained)
    return model


def build_from_application(
    application,
    input_shape: Sequence[int],
    num_outputs: int,
    *,
    name: str,
    scaling_mode: str,
    task: str,
    dropout: float,
    l2: float,
    weights: str | Path | None,
    trainable_layers: int,
    output_bias: Sequence[float] | np.ndarray | None,
) -> keras.Model:
    """Builds a keras.applications backbone (include_top=False) on the scaled input and adds the shared head.

    The backbone is built with `input_tensor=` the scaled tensor, so its layers become part of one
    flat functional model: Grad-CAM and `trainable_layers` then reach every backbone layer by name.
    """
    validate_head_arguments(
        num_outputs, task=task, dropout=dropout, l2=l2, trainable_layers=trainable_layers, output_bias=output_bias
    )
    # keras.applications needs at least 32x32 inputs for these backbones.
    shape = validate_input_shape(input_shape, minimum_size=32)
    resolved_weights = resolve_weights(weights, family=name)
    inputs, scaled = scaled_input(shape, scaling_mode)
    backbone = application(include_top=False, weights=resolved_weights, input_tensor=scaled, input_shape=shape)
    return finish_model(
        inputs,
        backbone.output,
        num_outputs,
        name=name,
        task=task,
        dropout=dropout,
        l2=l2,
        trainable_layers=trainable_layers,
        output_bias=output_bias,
        pretrained=resolved_weights is not None,
    )
