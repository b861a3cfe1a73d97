"""Model registry: maps a family name to its build function; reads nothing, builds keras.Model objects on request.

Importing this package is cheap (no Keras/TensorFlow import), so CLI help and config validation can
call `available_models()`. The family modules, which import Keras, load on first `build_model`.
"""

from __future__ import annotations

import importlib
import inspect
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    import numpy as np

# Registry names and the module that registers each one. Declared here so the names are known
# without importing Keras; `register` refuses names missing from this table, so they cannot drift.
FAMILY_MODULES: dict[str, str] = {
    "densenet121": "models.densenet121",
    "resnet50": "models.resnet50",
    "small_cnn": "models.small_cnn",
    "vgg16": "models.vgg16",
}

TASKS = ("binary", "multilabel", "multiclass")

# Arguments every family takes; anything else passed to build_model is a family option.
COMMON_ARGUMENTS = frozenset(
    {"input_shape", "num_outputs", "task", "dropout", "l2", "weights", "trainable_layers", "output_bias"}
)

REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register(name: str) -> Callable[[Callable[..., keras.Model]], Callable[..., keras.Model]]:
    """Decorator that files a `build_<family>` function under `name`."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"model family {name!r} is not declared; add it to models.FAMILY_MODULES.")

    def decorator(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        REGISTRY[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Sorted registry names, without importing Keras."""
    return sorted(FAMILY_MODULES)


def get_builder(name: str) -> Callable[..., keras.Model]:
    """Returns the build function registered as `name`, importing its module on first use."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}.")
    if name not in REGISTRY:
        importlib.import_module(FAMILY_MODULES[name])
    return REGISTRY[name]


def family_options(name: str) -> dict[str, Any]:
    """Family-specific keyword arguments of `name` and their defaults (e.g. small_cnn's `convolutions`)."""
    parameters = inspect.signature(get_builder(name)).parameters
    return {key: parameter.default for key, parameter in parameters.items() if key not in COMMON_ARGUMENTS}


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_outputs: int,
    *,
    task: str = "binary",
    dropout: float = 0.3,
    l2: float = 0.0,
    weights: str | Path | None = None,
    trainable_layers: int = -1,
    output_bias: Sequence[float] | np.ndarray | None = None,
    **family_kwargs: Any,
) -> keras.Model:
    """Builds the model family `name` for (height, width, 3) images in the 0-255 range.

    task: "binary" (one sigmoid output), "multilabel" (independent sigmoids) or "multiclass" (softmax).
    weights: "imagenet", None/"none" or a file path. trainable_layers: -1 all, 0 head only, N the
    last N backbone layers plus the head. output_bias: initial output bias, one value per output.
    """
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}.")
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}.")
    options = family_options(name)
    unknown = sorted(set(family_kwargs) - set(options))
    if unknown:
        accepted = ", ".join(sorted(options)) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for model {name!r}; its options are: {accepted}.")
    return get_builder(name)(
        input_shape,
        num_outputs,
        task=task,
        dropout=dropout,
        l2=l2,
        weights=weights,
        trainable_layers=trainable_layers,
        output_bias=output_bias,
        **family_kwargs,
    )


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last layer with a 4D (batch, height, width, channels) output before the head, for Grad-CAM.

    Trailing pooling layers are skipped (VGG16's block5_pool, small_cnn's last block pool): the
    activation before them carries the same features at twice the resolution, the usual Grad-CAM choice.
    """
    import keras

    skipped_types = (keras.layers.InputLayer, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    for layer in reversed(model.layers):
        if isinstance(layer, skipped_types):
            continue
        output = getattr(layer, "output", None)
        if output is not None and len(output.shape) == 4:
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4D output; Grad-CAM needs a convolutional model.")


# Predictors made for each model, so a model scored many times traces its graph once (see batch_predictor).
_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batch_predictor(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """A function that predicts a batch of any size [N, ...] -> NumPy [N, outputs] with one compiled graph.

    Keras's predict_on_batch traces a graph per batch shape; scoring batches of changing size in a loop (the
    last batch of a split, one image and then 32 in serving) traces again and again, which TensorFlow warns
    about and which costs seconds each time. On the TensorFlow backend this traces once, with a free batch
    dimension; other backends use predict_on_batch. The predictor is made once per model and kept.
    """
    import keras
    import numpy as np

    if model in _PREDICTORS:
        return _PREDICTORS[model]
    if keras.backend.backend() != "tensorflow":

        def predictor(batch):
            return np.asarray(model.predict_on_batch(batch))

    else:
        import tensorflow as tf

        signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)]
        # No autograph: the call has no Python control flow, and autograph writes its converted source to TMPDIR.
        graph = tf.function(lambda images: model(images, training=False), input_signature=signature, autograph=False)

        def predictor(batch):
            return np.asarray(graph(tf.convert_to_tensor(batch, dtype=tf.float32)))

    _PREDICTORS[model] = predictor
    return predictor


def float32_copy(model: keras.Model) -> keras.Model:
    """The same model computing in float32: a model trained under mixed_float16 keeps that dtype policy when
    saved and loaded, and would run float16 math on a CPU-only server. Returns `model` itself when it is float32.
    """
    import keras

    policies = {layer.dtype_policy.name for layer in model.layers}
    if policies <= {"float32"}:
        return model

    def to_float32(config):
        if isinstance(config, dict):
            if config.get("class_name") == "DTypePolicy" or config.get("class_name") == "FloatDTypePolicy":
                return {**config, "config": {**config.get("config", {}), "name": "float32"}}
            return {key: to_float32(value) for key, value in config.items()}
        if isinstance(config, list):
            return [to_float32(value) for value in config]
        return "float32" if config in ("mixed_float16", "mixed_bfloat16") else config

    # Layers whose config names no dtype take the global policy, which a mixed-precision run left set.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = model.__class__.from_config(to_float32(model.get_config()))
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights([keras.ops.convert_to_numpy(weight).astype("float32") for weight in model.weights])
    return copy
