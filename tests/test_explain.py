"""Grad-CAM in the served answer: the pyfunc's `explain` params for every model family, and through a real `mlflow models serve`."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

RED, GREEN = (255, 0, 0), (0, 255, 0)
IMAGE_SIZE = 32
# (top, left, side) in a 64 px image: the red square top right, the smaller green one bottom left.
RED_SQUARE = (6, 38, 20)
GREEN_SQUARE = (40, 8, 16)


def png_text(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def hottest_cell(overlay_text: str) -> tuple[int, int]:
    """(row, column) of the highest heat in a gradcam_overlay PNG, whose alpha channel is the heat."""
    alpha = decode_png(overlay_text)[..., 3]
    row, column = np.unravel_index(int(alpha.argmax()), alpha.shape)
    return int(row), int(column)


def inside(cell: tuple[int, int], square: tuple[int, int, int], scale: float) -> bool:
    top, left, side = (value * scale for value in square)
    return top <= cell[0] < top + side and left <= cell[1] < left + side


def classifier_for(keras_model, class_names: list[str], task: str):
    """The served pyfunc around a Keras model, without logging it: the predict and explain code under test."""
    from serve.pyfunc import ClassifierConfig, ImageClassifier

    classifier = ImageClassifier()
    classifier.config = ClassifierConfig(class_names=class_names, task=task, image_size=IMAGE_SIZE)
    classifier.model = keras_model
    return classifier


# The pyfunc in-process, for each model family.


@pytest.mark.parametrize(
    ("family", "task", "class_names"),
    [
        ("small_cnn", "binary", ["normal", "finding"]),
        ("vgg16", "multiclass", ["a", "b", "c"]),
        ("resnet50", "multilabel", ["a", "b", "c"]),
        ("densenet121", "multilabel", ["a", "b", "c"]),
    ],
)
def test_every_family_answers_with_a_heatmap_of_its_top_finding(family, task, class_names, paint_squares):
    import keras

    from models import build_model
    from serve.preprocess import load_image_tensor

    keras.utils.set_random_seed(0)
    outputs = 1 if task == "binary" else len(class_names)
    model = build_model(family, (IMAGE_SIZE, IMAGE_SIZE, 3), outputs, task=task, weights=None)
    classifier = classifier_for(model, class_names, task)
    images = [png_text(paint_squares(48, {RED: RED_SQUARE})), png_text(paint_squares(40, {GREEN: (4, 4, 20)}))]

    explained = classifier.predict(None, pd.DataFrame({"image": images}), params={"explain": True})

    probability_columns = [class_names[1]] if task == "binary" else class_names
    assert {*probability_columns, "predicted"} <= set(explained.columns)
    assert [column for column in explained.columns if column.startswith("gradcam_")] == [
        "gradcam_class",
        "gradcam_overlay",
        "gradcam_input",
    ]
    # The Grad-CAM pass gives the probabilities of the model itself.
    tensors = np.stack([load_image_tensor(base64.b64decode(image), IMAGE_SIZE) for image in images])
    expected = keras.ops.convert_to_numpy(model(tensors, training=False))
    np.testing.assert_allclose(explained[probability_columns].to_numpy(), expected, atol=1e-5)
    top = [probability_columns[int(index)] for index in expected.argmax(axis=1)]
    assert explained["gradcam_class"].tolist() == top
    for row in explained.itertuples():
        overlay, model_input = decode_png(row.gradcam_overlay), decode_png(row.gradcam_input)
        assert overlay.shape == (IMAGE_SIZE, IMAGE_SIZE, 4) and overlay.dtype == np.uint8
        assert model_input.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        # The heat is normalised per image: its peak is fully opaque, or there is no evidence at all.
        assert overlay[..., 3].max() in (0, 255)
    # The first image's red square, seen at the model's input size, is in its top right corner.
    first_input = decode_png(explained["gradcam_input"][0]).astype(int)
    assert first_input[8, 28, 0] > 200 and first_input[8, 28, 1] < 50 and first_input[24, 6].max() < 50


def test_explain_class_names_the_output_and_a_binary_model_explains_its_positive_class(paint_squares):
    import keras

    from models import build_model
    from serve.pyfunc import InvalidImageInput

    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", (IMAGE_SIZE, IMAGE_SIZE, 3), 1, task="binary", weights=None)
    classifier = classifier_for(model, ["normal", "finding"], "binary")
    frame = pd.DataFrame({"image": [png_text(paint_squares(32, {RED: (2, 2, 10)}))]})
    answer = classifier.predict(None, frame, params={"explain": "true", "explain_class": "finding"})
    assert answer["gradcam_class"].tolist() == ["finding"]
    # The explained answer carries the plain answer's probabilities and labels.
    plain = classifier.predict(None, frame)
    np.testing.assert_allclose(answer["finding"], plain["finding"], atol=1e-5)
    assert answer["predicted"].tolist() == plain["predicted"].tolist()
    with pytest.raises(InvalidImageInput, match="explains its positive class 'finding' only") as negative:
        classifier.predict(None, frame, params={"explain": True, "explain_class": "normal"})
    assert negative.value.reason == "bad_param"
    with pytest.raises(InvalidImageInput, match="must be one of finding") as unknown:
        classifier.predict(None, frame, params={"explain": True, "explain_class": "Finding"})
    assert unknown.value.reason == "bad_param"
    with pytest.raises(InvalidImageInput, match="explain must be true or false") as not_a_bool:
        classifier.predict(None, frame, params={"explain": "sometimes"})
    assert not_a_bool.value.reason == "bad_param"
    # Without explain=true, explain_class asks for nothing.
    assert "gradcam_class" not in classifier.predict(None, frame, params={"explain_class": "normal"})


def test_overlay_alpha_is_the_heat_and_colours_run_from_blue_to_red():
    from serve.explain import overlay_rgba

    heat = np.linspace(0.0, 1.0, 11).reshape(1, 11)
    overlay = overlay_rgba(heat)
    np.testing.assert_array_equal(overlay[0, :, 3], np.rint(heat[0] * 255).astype(np.uint8))
    cold, warm, hot = overlay[0, 1, :3].astype(int), overlay[0, 5, :3].astype(int), overlay[0, 10, :3].astype(int)
    assert cold[2] > cold[0] and hot[0] > hot[2] and warm[1] == 255


def test_rejections_carry_a_machine_readable_reason():
    from serve.pyfunc import ClassifierConfig, ImageClassifier, InvalidImageInput, bad_input

    assert bad_input("x").reason == "invalid_input"
    classifier = ImageClassifier()
    classifier.config = ClassifierConfig(class_names=["a", "b"], task="binary", image_size=IMAGE_SIZE)
    cases = {
        "not_base64": pd.DataFrame({"image": ["%%%"]}),
        "missing_image": pd.DataFrame({"image": [""]}),
        "not_an_image": pd.DataFrame({"image": [base64.b64encode(b"plain text " * 20).decode()]}),
        "missing_column": pd.DataFrame({"picture": ["abc"]}),
        "no_rows": pd.DataFrame({"image": []}),
    }
    for reason, frame in cases.items():
        with pytest.raises(InvalidImageInput) as rejected:
            classifier.predict(None, frame)
        assert rejected.value.reason == reason, rejected.value.message


# A real `mlflow models serve` of the spot model, whose findings and their places are known.


def invoke(url: str, image: str, params: dict | None = None) -> requests.Response:
    body: dict = {"dataframe_split": {"columns": ["image"], "data": [[image]]}}
    if params is not None:
        body["params"] = params
    return requests.post(f"{url}/invocations", json=body, timeout=120)


@pytest.mark.slow
def test_served_heatmap_is_hottest_inside_the_square_of_the_explained_finding(spot_scoring_server, paint_squares):
    image = png_text(paint_squares(64, {RED: RED_SQUARE, GREEN: GREEN_SQUARE}))
    scale = IMAGE_SIZE / 64

    top = invoke(spot_scoring_server, image, {"explain": True})
    assert top.status_code == 200, top.text
    (row,) = top.json()["predictions"]
    # The red square is the larger one, so red_spot is the top finding and its heat sits in the red square.
    assert row["red_spot"] > row["green_spot"] > 0.5 > row["bright_spot"]
    assert row["gradcam_class"] == "red_spot"
    assert inside(hottest_cell(row["gradcam_overlay"]), RED_SQUARE, scale)
    assert not inside(hottest_cell(row["gradcam_overlay"]), GREEN_SQUARE, scale)

    green = invoke(spot_scoring_server, image, {"explain": True, "explain_class": "green_spot"})
    assert green.status_code == 200, green.text
    (row,) = green.json()["predictions"]
    assert row["gradcam_class"] == "green_spot"
    assert inside(hottest_cell(row["gradcam_overlay"]), GREEN_SQUARE, scale)
    # The served model input is the picture, resized to 32 px: red where the red square is.
    model_input = decode_png(row["gradcam_input"])
    assert model_input.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert tuple(model_input[8, 24]) == RED and tuple(model_input[24, 8]) == GREEN


@pytest.mark.slow
def test_served_answer_has_no_heatmap_unless_asked_and_rejects_an_unknown_class(spot_scoring_server, paint_squares):
    image = png_text(paint_squares(64, {RED: RED_SQUARE}))
    plain = invoke(spot_scoring_server, image)
    assert plain.status_code == 200, plain.text
    (row,) = plain.json()["predictions"]
    assert {"red_spot", "green_spot", "bright_spot", "predicted"} <= set(row)
    assert not [column for column in row if column.startswith("gradcam_")]
    assert row["predicted"] == "red_spot"

    unknown = invoke(spot_scoring_server, image, {"explain": True, "explain_class": "blue_spot"})
    assert unknown.status_code == 400
    message = unknown.json()["message"]
    assert message.startswith("explain_class must be one of red_spot, green_spot, bright_spot") and "\n" not in message
    not_boolean = invoke(spot_scoring_server, image, {"explain": "yes"})
    assert not_boolean.status_code == 400 and "explain" in not_boolean.json()["message"]
