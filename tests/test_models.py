"""Tests of the model registry and families: builds tiny random-init models, writes only into tmp_path."""

from __future__ import annotations

import subprocess
import sys
import weakref

import keras
import numpy as np
import pytest

import models
from models import available_models, build_model, last_conv_layer_name
from models.layers import ImageScaling

MODEL_NAMES = available_models()
INPUT_SHAPE = (32, 32, 3)
NUM_LABELS = 3
OUTPUT_BIAS = [-2.0, 0.0, 1.5]
TASK_OUTPUTS = {"binary": 1, "multilabel": NUM_LABELS, "multiclass": NUM_LABELS}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 255.0, size=(2, *INPUT_SHAPE)).astype("float32")


# The models the cached tests share, by role: each heavy backbone is built once per role, and one build serves
# several assertions (the binary model is the head-only one, the biased multi-label one trains its last 4 layers).
LAST_N = 4
ROLES = {
    "multiclass": ("multiclass", {}),
    "binary": ("binary", {"trainable_layers": 0}),
    "multilabel": ("multilabel", {}),
    "biased": ("multilabel", {"output_bias": tuple(OUTPUT_BIAS), "trainable_layers": LAST_N}),
}


@pytest.fixture(scope="module")
def model_cache():
    """Builds each (family, role) once per module; the heavy backbones take seconds each."""
    cache: dict[tuple, keras.Model] = {}

    def get(name: str, role: str = "multiclass") -> keras.Model:
        if (name, role) not in cache:
            task, kwargs = ROLES[role]
            keras.utils.set_random_seed(0)
            cache[name, role] = build_model(name, INPUT_SHAPE, TASK_OUTPUTS[task], task=task, **kwargs)
        return cache[name, role]

    return get


_PREDICTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's probabilities, computed once per model and images array: the shared models answer the module's
    images in several tests, and an eager DenseNet121 call costs seconds."""
    cached = _PREDICTIONS.get(model)
    if cached is None or cached[0] is not images:
        cached = (images, keras.ops.convert_to_numpy(model(images, training=False)))
        _PREDICTIONS[model] = cached
    return cached[1].copy()


def backbone_slice(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers strictly between the input scaling and the head, found by position in the flat model."""
    names = [layer.name for layer in model.layers]
    return model.layers[names.index("image_scaling") + 1 : names.index("head_pooling")]


def test_available_models_does_not_import_keras(repo_root):
    code = (
        "import sys, models; print(models.available_models()); "
        "print(sorted(name for name in ('keras', 'tensorflow') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["['densenet121', 'resnet50', 'small_cnn', 'vgg16']", "[]"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registry_maps_name_to_its_builder(name):
    assert models.get_builder(name).__name__ == f"build_{name}"


def test_register_refuses_undeclared_name():
    with pytest.raises(ValueError, match="FAMILY_MODULES"):
        models.register("alexnet")


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="alexnet") as error:
        build_model("alexnet", INPUT_SHAPE, 1)
    for name in MODEL_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unknown_family_option_is_named(name):
    with pytest.raises(ValueError, match="not_an_option"):
        build_model(name, INPUT_SHAPE, 1, not_an_option=3)


def test_unknown_small_cnn_option_lists_accepted_options():
    with pytest.raises(ValueError, match="colvolutions.*convolutions"):
        build_model("small_cnn", INPUT_SHAPE, 1, colvolutions=2)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"task": "regression"}, "task"),
        ({"num_outputs": 2, "task": "binary"}, "num_outputs=1"),
        ({"num_outputs": 1, "task": "multiclass"}, "num_outputs >= 2"),
        ({"dropout": 1.0}, "dropout"),
        ({"l2": -0.1}, "l2"),
        ({"trainable_layers": -2}, "trainable_layers"),
        ({"num_outputs": 3, "task": "multilabel", "output_bias": [0.0, 0.0]}, "output_bias"),
        ({"input_shape": (32, 32, 1)}, "input_shape"),
        ({"input_shape": (16, 16, 3)}, "too small|at least"),
    ],
)
def test_bad_arguments_raise_value_error(name, arguments, message):
    call = {"input_shape": INPUT_SHAPE, "num_outputs": 1, **arguments}
    if name == "small_cnn" and call["input_shape"] == (16, 16, 3):
        # small_cnn accepts 16x16 with its default 3 blocks; 4x4 cannot survive 3 poolings.
        call["input_shape"] = (4, 4, 3)
    with pytest.raises(ValueError, match=message):
        build_model(name, call.pop("input_shape"), call.pop("num_outputs"), **call)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("task", ["binary", "multilabel", "multiclass"])
def test_output_shape_range_and_finiteness(model_cache, images, name, task):
    model = model_cache(name, task)
    probabilities = predict(model, images)
    assert probabilities.shape == (len(images), TASK_OUTPUTS[task])
    assert probabilities.dtype == np.float32
    assert np.all(np.isfinite(probabilities))
    assert np.all((probabilities >= 0.0) & (probabilities <= 1.0))
    if task == "multiclass":
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    else:
        assert model.get_layer("predictions").activation is keras.activations.sigmoid


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_is_flat(model_cache, name):
    model = model_cache(name)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert len(backbone_slice(model)) > 10 or name == "small_cnn"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_bias_initialises_predictions_bias(model_cache, images, name):
    model = model_cache(name, "biased")
    bias = keras.ops.convert_to_numpy(model.get_layer("predictions").bias)
    np.testing.assert_allclose(bias, OUTPUT_BIAS, rtol=1e-6)
    # Without the bias the same seed gives different outputs, so the bias reaches the predictions.
    unbiased = model_cache(name, "multilabel")
    assert not np.allclose(predict(model, images), predict(unbiased, images))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trainable_layers_all(model_cache, name):
    model = model_cache(name)
    assert all(layer.trainable for layer in model.layers)
    expected = sum(len(layer.trainable_weights) for layer in model.layers)
    assert len(model.trainable_weights) == expected > 2


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trainable_layers_zero_trains_only_head(model_cache, name):
    model = model_cache(name, "binary")
    predictions = model.get_layer("predictions")
    assert {id(weight) for weight in model.trainable_weights} == {id(predictions.kernel), id(predictions.bias)}
    assert not any(layer.trainable for layer in backbone_slice(model))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trainable_layers_last_n(model_cache, name):
    count = LAST_N
    model = model_cache(name, "biased")
    backbone = backbone_slice(model)
    assert not any(layer.trainable for layer in backbone[:-count])
    assert all(layer.trainable for layer in backbone[-count:])
    expected = {id(weight) for layer in backbone[-count:] for weight in layer.trainable_weights}
    predictions = model.get_layer("predictions")
    expected |= {id(predictions.kernel), id(predictions.bias)}
    assert {id(weight) for weight in model.trainable_weights} == expected
    assert 2 < len(expected) < len(model_cache(name).trainable_weights)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_and_load_round_trip(model_cache, images, tmp_path, name):
    model = model_cache(name, "biased")
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded.get_layer("image_scaling"), ImageScaling)
    np.testing.assert_allclose(predict(reloaded, images), predict(model, images), rtol=1e-5, atol=1e-6)


PREPROCESS_FUNCTIONS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
    "small_cnn": lambda batch: batch / 255.0,
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_scaling_matches_keras_applications(model_cache, images, name):
    scaled = keras.ops.convert_to_numpy(model_cache(name).get_layer("image_scaling")(images))
    expected = PREPROCESS_FUNCTIONS[name](images.copy())
    np.testing.assert_allclose(scaled, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_image_scaling_matches_imagenet_utils(images, mode):
    expected = keras.applications.imagenet_utils.preprocess_input(images.copy(), mode=mode)
    scaled = keras.ops.convert_to_numpy(ImageScaling(mode)(images))
    np.testing.assert_allclose(scaled, expected, rtol=1e-5, atol=1e-4)


def test_image_scaling_rejects_unknown_mode():
    with pytest.raises(ValueError, match="caffe"):
        ImageScaling("imagenet")


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_layer_stays_float32_under_mixed_precision(mixed_float16, name):
    model = build_model(name, INPUT_SHAPE, NUM_LABELS, task="multilabel")
    conv_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert conv_layers[0].compute_dtype == "float16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.output.dtype == "float32"


def test_small_cnn_runs_under_mixed_precision(mixed_float16, images):
    model = build_model("small_cnn", INPUT_SHAPE, NUM_LABELS, task="multilabel")
    probabilities = predict(model, images)
    assert probabilities.dtype == np.float32
    assert np.all(np.isfinite(probabilities))


@pytest.mark.parametrize("convolutions", [1, 2, 4])
def test_small_cnn_convolutions_sets_block_count(convolutions):
    model = build_model("small_cnn", INPUT_SHAPE, 1, convolutions=convolutions)
    conv_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(conv_layers) == 2 * convolutions
    assert conv_layers[-1].filters == 32 * 2 ** (convolutions - 1)
    assert model.get_layer("head_pooling").input.shape[1:3] == (32 // 2**convolutions,) * 2


def test_small_cnn_weights_path_round_trip(images, tmp_path):
    keras.utils.set_random_seed(1)
    trained = build_model("small_cnn", INPUT_SHAPE, NUM_LABELS, task="multilabel", convolutions=2)
    path = tmp_path / "small_cnn.weights.h5"
    trained.save_weights(path)
    keras.utils.set_random_seed(2)
    restored = build_model("small_cnn", INPUT_SHAPE, NUM_LABELS, task="multilabel", convolutions=2, weights=str(path))
    np.testing.assert_allclose(predict(restored, images), predict(trained, images), rtol=1e-6, atol=1e-6)


def test_pretrained_partial_fine_tuning_keeps_batch_norm_frozen(tmp_path):
    trained = build_model("small_cnn", INPUT_SHAPE, 1, convolutions=2)
    path = tmp_path / "small_cnn.weights.h5"
    trained.save_weights(path)
    model = build_model("small_cnn", INPUT_SHAPE, 1, convolutions=2, weights=path, trainable_layers=6)
    last_block = backbone_slice(model)[-6:]
    assert [layer.name for layer in last_block if layer.trainable] == [
        "block2_1_relu",
        "block2_2_conv",
        "block2_2_relu",
        "block2_pool",
    ]
    assert not any(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_backbone_weights_path_is_loaded_and_batch_norm_frozen(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=INPUT_SHAPE)
    path = tmp_path / "resnet50_notop.weights.h5"
    backbone.save_weights(path)
    keras.utils.set_random_seed(4)
    model = build_model("resnet50", INPUT_SHAPE, 1, weights=str(path), trainable_layers=5)
    for layer_name in ("conv1_conv", "conv5_block3_3_conv", "conv5_block3_3_bn"):
        for loaded, saved in zip(
            model.get_layer(layer_name).weights, backbone.get_layer(layer_name).weights, strict=True
        ):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved))
    trainable = [layer.name for layer in backbone_slice(model) if layer.trainable]
    assert trainable == ["conv5_block3_2_relu", "conv5_block3_3_conv", "conv5_block3_add", "conv5_block3_out"]


def test_small_cnn_rejects_imagenet_weights():
    with pytest.raises(ValueError, match="ImageNet"):
        build_model("small_cnn", INPUT_SHAPE, 1, weights="imagenet")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_missing_weights_file_is_named(tmp_path, name):
    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        build_model(name, INPUT_SHAPE, 1, weights=str(missing))


@pytest.mark.parametrize("name", ["small_cnn", "vgg16"])
def test_none_string_means_random_init(name):
    # MLproject parameters arrive as strings, so "none" must mean no weights file.
    model = build_model(name, INPUT_SHAPE, 1, weights="none")
    assert model.output.shape == (None, 1)


def test_l2_regularises_output_kernel_only():
    model = build_model("small_cnn", INPUT_SHAPE, 1, l2=0.01)
    assert model.get_layer("predictions").kernel_regularizer is not None
    assert len(model.losses) == 1
    assert not build_model("small_cnn", INPUT_SHAPE, 1).losses


LAST_CONV_LAYERS = {
    "densenet121": "relu",
    "resnet50": "conv5_block3_out",
    "small_cnn": "block3_2_relu",
    "vgg16": "block5_conv3",
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_last_conv_layer_name(model_cache, name):
    model = model_cache(name)
    layer_name = last_conv_layer_name(model)
    assert layer_name == LAST_CONV_LAYERS[name]
    assert len(model.get_layer(layer_name).output.shape) == 4


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradcam_heatmap_shape_and_range(model_cache, images, name):
    from models.gradcam import gradcam_heatmap

    model = model_cache(name, "biased")
    batch_heatmaps = gradcam_heatmap(model, images, class_index=2)
    assert batch_heatmaps.shape == (len(images), *INPUT_SHAPE[:2])
    single_heatmap = gradcam_heatmap(model, images[0], class_index=2)
    assert single_heatmap.shape == INPUT_SHAPE[:2]
    np.testing.assert_allclose(single_heatmap, batch_heatmaps[0], atol=1e-5)
    for heatmap in (single_heatmap, *batch_heatmaps):
        assert np.all(np.isfinite(heatmap))
        assert heatmap.min() >= 0.0
        # Normalised per image: the peak is 1, or the map is all zeros when nothing supports the class.
        assert heatmap.max() == pytest.approx(1.0) or heatmap.max() == 0.0


def test_gradcam_rejects_bad_class_index(model_cache, images):
    from models.gradcam import gradcam_heatmap

    with pytest.raises(ValueError, match="class_index"):
        gradcam_heatmap(model_cache("small_cnn", "binary"), images, class_index=1)
