"""Typed settings of every `python -m train` command: reads the strings MLflow and the command line pass; writes nothing.

One pydantic model per entry point is the single place where a parameter's type, default,
range, choices and help text live. Everything else is derived from it: the argparse flags and
`--help` of `python -m train`, the MLproject parity test, the resolved-config artifact and the
search-space checks of `tune`. Values arrive as strings (`'3.0'`, `true`, MLflow's quoted
empty `''`) and are coerced here; a bad value becomes one ConfigError line that names the
parameter and what is valid. Nothing here imports TensorFlow, so a mistake fails in a second.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from models import available_models
from train.data import available_datasets

TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")
MINIMUM_IMAGE_SIZE = 32
# Non-chestxray14 datasets carve a test split of this share besides validation.
TEST_FRACTION = 0.15


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message says how to fix it, in one line."""


def first_line(text: Any) -> str:
    """The first line of a message, for errors that must stay on one line."""
    stripped = str(text).strip()
    return stripped.splitlines()[0] if stripped else ""


def unquote(value: Any) -> Any:
    """Undo one level of shell quoting that MLflow leaves on values.

    MLflow's Kubernetes backend quotes parameter values but runs the command without a shell,
    and `mlflow run` logs the quoted form as the run's params (`''` for an empty value).
    """
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            parts = shlex.split(value)
        except ValueError:
            return value
        if len(parts) <= 1:
            return parts[0] if parts else ""
    return value


def _whole_number(value: Any) -> Any:
    """'3', '3.0' and 3.0 become 3 (MLflow passes integers as floats); anything else is refused."""
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"must be a whole number, got {value!r}")
    return int(number)


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None


def parse_bool(value: Any) -> bool:
    """true/false words as users type them on a command line (never Python truthiness)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def _text(value: Any) -> Any:
    return str(value).strip() if value is not None else value


# Field types: what the command line and MLflow pass is a string; these coerce it.
Whole = Annotated[int, BeforeValidator(_whole_number)]
Number = Annotated[float, BeforeValidator(_number)]
Flag = Annotated[bool, BeforeValidator(parse_bool)]
Text = Annotated[str, BeforeValidator(_text)]


def choice_of(*choices: str, case_sensitive: bool = False):
    """A string field limited to `choices`; other letter cases are accepted and mapped to the listed spelling."""

    def normalise(value: Any) -> Any:
        word = str(value).strip()
        if not case_sensitive:
            for candidate in choices:
                if word.lower() == candidate.lower():
                    return candidate
        return word

    return Annotated[Literal[choices], BeforeValidator(normalise)]


ModelName = choice_of(*available_models(), case_sensitive=True)
DatasetName = choice_of(*available_datasets(), case_sensitive=True)


def field_choices(settings_class: type[BaseModel], name: str) -> tuple[str, ...]:
    """The allowed values of a choice field ((), for free fields)."""
    annotation = settings_class.model_fields[name].annotation
    return tuple(get_args(annotation)) if get_origin(annotation) is Literal else ()


def field_kind(settings_class: type[BaseModel], name: str) -> str:
    """'int', 'float', 'bool', 'str' or 'choice': how a field's value is typed."""
    annotation = settings_class.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return "choice"
    return {int: "int", float: "float", bool: "bool"}.get(annotation, "str")


def coerce(settings_class: type[BaseModel], name: str, value: Any) -> Any:
    """One field's value from a raw string (e.g. a logged run param), converted as the settings model would."""
    field = settings_class.model_fields[name]
    try:
        return TypeAdapter(Annotated[field.annotation, *field.metadata]).validate_python(unquote(value))
    except ValidationError as error:
        raise ConfigError(describe_error(settings_class, {**error.errors()[0], "loc": (name,)})) from None


def describe_range(settings_class: type[BaseModel], name: str) -> str:
    """A field's allowed range in words: 'at least 1', 'in [0, 1)', ... from its Field(ge=, gt=, le=, lt=) bounds."""
    bounds = {}
    for constraint in settings_class.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(constraint, key, None) is not None:
                bounds[key] = getattr(constraint, key)
    low_key = "ge" if "ge" in bounds else "gt" if "gt" in bounds else None
    high_key = "le" if "le" in bounds else "lt" if "lt" in bounds else None
    if low_key and high_key:
        opening, closing = "[" if low_key == "ge" else "(", "]" if high_key == "le" else ")"
        return f"in {opening}{bounds[low_key]:g}, {bounds[high_key]:g}{closing}"
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    key = low_key or high_key
    return f"{words[key]} {bounds[key]:g}" if key else "in range"


def _plural(name: str) -> str:
    return name + ("es" if name.endswith("s") else "s")


def describe_error(settings_class: type[BaseModel], error: Mapping[str, Any]) -> str:
    """One line for one pydantic error: the parameter, what is wrong and what is valid."""
    location = ".".join(str(part) for part in error.get("loc", ()))
    kind = error.get("type", "")
    given = error.get("input")
    if kind == "extra_forbidden":
        valid = ", ".join(settings_class.model_fields)
        return f"unknown setting {location!r}; valid settings: {valid}"
    if kind == "literal_error":
        valid = ", ".join(field_choices(settings_class, location))
        return f"unknown {location} {given!r}; valid {_plural(location)}: {valid}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{location} must be {describe_range(settings_class, location)}, got {given}"
    if kind == "missing":
        return f"{location} is required: {settings_class.model_fields[location].description}"
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"{location} {message}" if location else message


class Settings(BaseModel):
    """Base of the per-entry-point settings: strict about unknown keys, frozen, one-line errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # The entry point / command these settings belong to; set by each subclass.
    command: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _unquote_and_drop_absent(cls, values: Any) -> Any:
        # None means "not given" (an argparse flag left out); the field default applies.
        if isinstance(values, Mapping):
            return {key: unquote(value) for key, value in values.items() if value is not None}
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Settings from raw strings or values; ConfigError with one line for the first mistake."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as error:
            raise ConfigError(describe_error(cls, error.errors()[0])) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any):
        """A copy with `changes`, validated again."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {name: field.default for name, field in cls.model_fields.items()}

    @classmethod
    def help_text(cls, name: str) -> str:
        """The --help line of a field: its description, its choices and its default."""
        field = cls.model_fields[name]
        choices = field_choices(cls, name)
        listed = f"; one of {', '.join(choices)}" if choices else ""
        return f"{field.description}{listed} (default: {field.default!r})"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One --flag per field, read as a string; the model converts and validates it."""
        for name in cls.model_fields:
            parser.add_argument(
                "--" + name.replace("_", "-"), dest=name, default=None, metavar=name.upper(), help=cls.help_text(name)
            )
        parser.add_argument(
            "-P",
            "--param",
            dest="params",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a parameter as `mlflow run` takes it (-P epochs=3); repeat for more; same as its --flag",
        )

    @classmethod
    def from_arguments(cls, arguments: argparse.Namespace):
        """Settings from --flags and -P name=value pairs; a name given both ways with two values is a ConfigError."""
        values = {name: getattr(arguments, name, None) for name in cls.model_fields}
        for pair in getattr(arguments, "params", None) or []:
            name, equals, value = pair.partition("=")
            if not equals or not name:
                raise ConfigError(f"-P takes NAME=VALUE, got {pair!r}")
            if values.get(name) is not None and values[name] != value:
                raise ConfigError(f"{name} is given twice, as {values[name]!r} and {value!r}; keep one")
            values[name] = value
        return cls.from_dict(values)

    @classmethod
    def mlproject_parameters(cls) -> dict[str, tuple[str, Any]]:
        """What the MLproject entry point must declare: name -> (MLflow type, default)."""
        declared = {}
        for name, field in cls.model_fields.items():
            kind = field_kind(cls, name)
            if kind in ("int", "float"):
                declared[name] = ("float", field.default)
            elif kind == "bool":
                declared[name] = ("string", str(field.default).lower())
            else:
                declared[name] = ("string", field.default)
        return declared


def check_split_settings(dataset: str, validation_fraction: float, view: str) -> None:
    """Raise ValueError unless validation_fraction leaves room for the other splits and view fits the dataset."""
    if dataset == "chestxray14":
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    else:
        from train.data.splits import check_fractions

        check_fractions(validation_fraction, TEST_FRACTION)
        if view != "all":
            raise ValueError(f"view={view} filters chestxray14 images only; use view=all for dataset {dataset!r}")


def check_group_pattern(dataset: str, group_pattern: str) -> None:
    """group_pattern applies to file-based datasets with patient or slide names: imagefolder and malaria."""
    if group_pattern and dataset not in ("imagefolder", "malaria"):
        hint = "chestxray14 always splits by patient" if dataset == "chestxray14" else "its images have no patients"
        raise ValueError(f"group_pattern applies to imagefolder and malaria, not {dataset} ({hint}); leave it empty")


def check_data(dataset: str, data_dir: str) -> None:
    """Raise ValueError when dataset needs a data_dir that is missing, or data_dir is not a usable folder."""
    from train.data import validate_dataset_args

    validate_dataset_args(dataset, data_dir or None)


def weights_choice(weights: str) -> str | None:
    """The weights argument for models.build_model: None, 'imagenet' or a file path."""
    word = weights.strip()
    if word.lower() in ("", "none", "null", "random"):
        return None
    if word.lower() == "imagenet":
        return "imagenet"
    return word


View = choice_of("all", "PA", "AP")


def _augment_word(value: Any) -> Any:
    """true/false of earlier versions still work: true = auto (the dataset's policy), false = none."""
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return "auto"
    if word in FALSE_WORDS:
        return "none"
    return word


Augment = Annotated[Literal["auto", "cells", "radiograph", "none"], BeforeValidator(_augment_word)]


def parse_operating_point(rule: str) -> tuple[str, float]:
    """('youden', 0) | ('sensitivity', x) | ('specificity', x) | ('threshold', x); ValueError naming the valid forms."""
    text = str(rule).strip().lower()
    valid = "use youden, sensitivity:0.95, specificity:0.90 or a threshold between 0 and 1"
    if text == "youden":
        return "youden", 0.0
    kind, _, value = text.partition(":")
    try:
        number = float(value if value else kind)
    except ValueError:
        raise ValueError(f"{rule!r} is not understood; {valid}") from None
    if value and kind not in ("sensitivity", "specificity"):
        raise ValueError(f"{rule!r} is not understood; {valid}")
    if not 0.0 < number < 1.0 and not (not value and 0.0 <= number <= 1.0):
        raise ValueError(f"{rule!r} needs a value between 0 and 1; {valid}")
    return (kind, number) if value else ("threshold", number)


def _operating_point(value: Any) -> Any:
    parse_operating_point(str(value))
    return str(value).strip().lower()


OperatingPoint = Annotated[str, BeforeValidator(_operating_point)]


def _group_pattern(value: Any) -> Any:
    from train.data.groups import compile_group_pattern, resolve_group_pattern

    text = str(value).strip()
    pattern = resolve_group_pattern(text)
    if pattern:
        try:
            compile_group_pattern(pattern)
        except ValueError as error:
            raise ValueError(str(error).removeprefix("group_pattern ")) from None
    return text


GroupPattern = Annotated[str, BeforeValidator(_group_pattern)]
GROUP_PATTERN_HELP = (
    "keep each patient's or slide's images in one split: a regex whose first group (...) is the key in the file "
    "name, or a preset (pneumonia, malaria); none = per image; empty = the dataset's default (malaria "
    "cell_images/: by smear; imagefolder: per image)"
)


class MainSettings(Settings):
    """`main`: train one model on one dataset, log everything, optionally register it."""

    command: ClassVar[str] = "main"

    model: ModelName = Field("small_cnn", description="model family")
    dataset: DatasetName = Field("synthetic", description="dataset to train on")
    data_dir: Text = Field("", description="dataset folder (required for chestxray14 and imagefolder)")
    image_size: Whole = Field(128, ge=MINIMUM_IMAGE_SIZE, description="square input size in pixels")
    epochs: Whole = Field(10, ge=1, description="maximum epochs; early stopping on validation AUROC ends sooner")
    batch_size: Whole = Field(32, ge=1, description="global batch size (split across GPUs under MirroredStrategy)")
    learning_rate: Number = Field(1e-3, gt=0, description="initial learning rate; halved when validation stalls")
    optimizer: choice_of("adam", "adamw", "sgd", "nadam") = Field(
        "adam", description="optimizer (sgd: Nesterov momentum 0.9)"
    )
    weights: Text = Field("none", description="imagenet, none, or a path to a weights file")
    trainable_layers: Whole = Field(-1, ge=-1, description="-1 all layers, 0 frozen backbone, N the last N layers")
    dropout: Number = Field(0.3, ge=0.0, lt=1.0, description="dropout before the output layer")
    l2: Number = Field(0.0, ge=0.0, description="L2 penalty on the output layer's kernel")
    convolutions: Whole = Field(3, ge=1, description="conv blocks of small_cnn (filters double per block from 32)")
    augment: Augment = Field(
        "auto",
        description="training-time augmentation: cells (flips both ways, quarter turns, jitter), radiograph "
        "(left-right flips and jitter only), none, or auto = the dataset's (chestxray14 and imagefolder: "
        "radiograph; synthetic and malaria: cells)",
    )
    max_examples: Whole = Field(0, ge=0, description="seeded, stratified cap on the number of examples, 0 = all")
    validation_fraction: Number = Field(
        0.1, description="share held out for validation (chestxray14: carved out of train_val by patient)"
    )
    view: View = Field("all", description="chestxray14 view filter")
    group_pattern: GroupPattern = Field("", description=GROUP_PATTERN_HELP)
    seed: Whole = Field(42, ge=0, description="seeds splits, shuffling, augmentation and weight initialisation")
    precision: choice_of("auto", "float32", "mixed_float16") = Field(
        "auto", description="auto: mixed_float16 only on GPUs with compute capability >= 7.0"
    )
    jit_compile: Flag = Field(False, description="compile the model with XLA (true or false)")
    patience: Whole = Field(5, ge=1, description="epochs without validation improvement before stopping")
    monitor: choice_of("val_auroc", "val_loss") = Field(
        "val_auroc",
        description="validation metric that picks the best epoch, stops early and lowers the learning rate; "
        "val_auroc needs both label values of every class in the validation split",
    )
    operating_point: OperatingPoint = Field(
        "youden",
        description="how each class's decision threshold is chosen on the validation split: youden, "
        "sensitivity:0.95, specificity:0.90 or a fixed threshold such as 0.5",
    )
    synthetic_task: choice_of("binary", "multilabel") = Field("binary", description="variant of the synthetic dataset")
    register_as: Text = Field("", description="registered model name; empty = do not register")
    run_name: Text = Field("", description="MLflow run name; empty = generated")

    @property
    def weights_choice(self) -> str | None:
        return weights_choice(self.weights)

    @model_validator(mode="after")
    def _check_together(self) -> MainSettings:
        weights = self.weights_choice
        if weights not in (None, "imagenet") and not os.path.isfile(weights):
            raise ValueError(f"weights file {weights!r} does not exist; use imagenet, none or a path to a weights file")
        if weights == "imagenet" and self.model == "small_cnn":
            raise ValueError("small_cnn has no ImageNet weights; use weights=none or a weights file")
        check_split_settings(self.dataset, self.validation_fraction, self.view)
        check_group_pattern(self.dataset, self.group_pattern)
        check_data(self.dataset, self.data_dir)
        return self


class PrepareSettings(Settings):
    """`prepare`: turn a raw dataset into resized, sharded TFRecords once."""

    command: ClassVar[str] = "prepare"

    dataset: DatasetName = Field("chestxray14", description="dataset to prepare")
    data_dir: Text = Field(
        "", description="raw dataset folder (malaria: TFDS data dir or cell_images/ folder; empty = TFDS default)"
    )
    output_dir: Text = Field("", description="folder that receives the TFRecord shards and manifest.json (required)")
    image_size: Whole = Field(
        256, ge=MINIMUM_IMAGE_SIZE, description="side in pixels of the stored images; train at this size or smaller"
    )
    shard_size: Whole = Field(1024, ge=1, description="images per TFRecord shard")
    workers: Whole = Field(0, ge=0, description="worker processes, 0 = all cores")
    seed: Whole = Field(42, ge=0, description="seed of the split assignment and shard order")
    validation_fraction: Number = Field(
        0.1, description="share of train_val (chestxray14, by patient) or of all images held out for validation"
    )
    view: View = Field("all", description="chestxray14 view filter")
    group_pattern: GroupPattern = Field("", description=GROUP_PATTERN_HELP)
    max_missing_fraction: Number = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="chestxray14: stop when more than this share of listed images is missing (and > 5)",
    )

    @property
    def worker_count(self) -> int:
        """Processes to use: `workers`, or every core this process may run on when workers is 0."""
        if self.workers:
            return self.workers
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:
            # macOS and Windows have no sched_getaffinity.
            return os.cpu_count() or 1

    @model_validator(mode="after")
    def _check_together(self) -> PrepareSettings:
        from pathlib import Path

        from train.data.prepared import is_prepared

        if not self.output_dir:
            raise ValueError("output_dir is required: the folder that receives the TFRecord shards and manifest.json")
        check_data(self.dataset, self.data_dir)
        if is_prepared(self.data_dir):
            raise ValueError(f"data_dir {self.data_dir} is already a prepared folder; train from it directly")
        check_split_settings(self.dataset, self.validation_fraction, self.view)
        check_group_pattern(self.dataset, self.group_pattern)
        if self.data_dir:
            source, output = Path(self.data_dir).resolve(), Path(self.output_dir).resolve()
            # Loaders of class folders would read the output as one more class; chestxray14 reads listed files only.
            if output == source or (output.is_relative_to(source) and self.dataset != "chestxray14"):
                raise ValueError(f"output_dir {self.output_dir} must be outside data_dir {self.data_dir}")
        return self


def check_model_uri(model_uri: str) -> None:
    """Raise ValueError unless model_uri looks like a model URI or names a model folder."""
    import re

    pattern = re.compile(r"^(runs:/[0-9a-f]{32}(/.*)?|models:/[^/@]+(@[^/]+|/[^/]+)?)$")
    if not model_uri:
        raise ValueError("model_uri is required, e.g. models:/<name>@champion or runs:/<run_id>/model")
    if "://" not in model_uri and not pattern.match(model_uri) and not os.path.isdir(model_uri):
        raise ValueError(
            f"model_uri {model_uri!r} is not a model URI; use models:/<name>@<alias>, "
            "models:/<name>/<version>, models:/<model_id>, runs:/<run_id>/model or a model folder"
        )


class EvaluateSettings(Settings):
    """`evaluate`: score a model URI on a dataset split; data settings left empty follow its training run."""

    command: ClassVar[str] = "evaluate"

    model_uri: Text = Field(
        "",
        description="models:/<name>@<alias>, models:/<name>/<version>, models:/<model_id> or runs:/<run_id>/model",
    )
    dataset: Text = Field("", description="dataset to score on; empty = the one the model was trained on")
    data_dir: Text = Field("", description="dataset folder; empty = the training run's")
    split: choice_of("train", "val", "test") = Field("test", description="split to score")
    threshold: Number = Field(
        -1.0,
        ge=-1.0,
        le=1.0,
        description="decision threshold of every class; -1 = each class's operating point stored with the model",
    )
    specificity: Number = Field(
        0.9, gt=0.0, lt=1.0, description="the fixed specificity at which sensitivity is reported"
    )
    max_examples: Whole = Field(
        -1, ge=-1, description="cap on the dataset size as in training; -1 = the training run's, 0 = all"
    )
    seed: Whole = Field(-1, ge=-1, description="split seed; -1 = the training run's")
    batch_size: Whole = Field(32, ge=1, description="images per prediction batch")
    run_name: Text = Field("", description="name of the evaluation run; empty = generated")
    allow_different_data: Flag = Field(
        False,
        description="score on data whose name, task or content digest differs from the training run's "
        "(e.g. an external test set); recorded on the run",
    )

    @model_validator(mode="after")
    def _check_together(self) -> EvaluateSettings:
        check_model_uri(self.model_uri)
        if self.dataset:
            datasets = available_datasets()
            if self.dataset not in datasets:
                raise ValueError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(datasets)}")
            check_data(self.dataset, self.data_dir)
        return self


class PromoteSettings(Settings):
    """`promote`: register the best run's model and move the alias champion if it wins."""

    command: ClassVar[str] = "promote"

    experiment: Text = Field("", description="experiment name(s), comma-separated; empty = the active experiment")
    metric: Text = Field(
        "",
        description="run metric that picks the best run, e.g. test_auroc, best_val_auroc; empty = the test-set "
        "AUROC (test_mean_auroc for multi-label) where every candidate has it, else best_val_auroc",
    )
    mode: choice_of("max", "min") = Field("max", description="max (higher is better) or min")
    registered_model: Text = Field("", description="registered model name to register the best run's model into")
    rollback: Text = Field(
        "", description="registered model name: move @champion back to @previous (and @previous to the demoted one)"
    )

    @property
    def experiment_names(self) -> list[str]:
        return [name.strip() for name in self.experiment.split(",") if name.strip()]

    @model_validator(mode="after")
    def _check_together(self) -> PromoteSettings:
        if self.rollback:
            return self
        if not self.registered_model:
            raise ValueError("registered_model is required: the registered model name to promote into")
        return self


class PipelineSettings(MainSettings):
    """`pipeline`: challenger against @champion on one frozen test split, a paired test, promote or not.

    The fields of `main` are passed through: they train the challenger when none is given.
    """

    command: ClassVar[str] = "pipeline"

    registered_model: Text = Field("", description="registered model whose @champion the challenger meets (required)")
    challenger: Text = Field(
        "", description="run id or model URI of the challenger; empty = train one now from the main parameters"
    )
    metric: Text = Field(
        "",
        description="test metric the decision is made on: test_auroc, test_mean_auroc or test_auroc_<class>; "
        "empty = test_mean_auroc for multi-label, test_auroc otherwise",
    )
    margin: Number = Field(
        0.0, ge=0.0, lt=1.0, description="the challenger may be worse than the champion by at most this much"
    )
    alpha: Number = Field(0.05, gt=0.0, lt=1.0, description="significance level of the paired test")
    build_image: Flag = Field(
        False, description="also build the serving image with `mlflow models build-docker` (needs a Docker engine)"
    )

    @model_validator(mode="after")
    def _check_pipeline(self) -> PipelineSettings:
        if not self.registered_model:
            raise ValueError("registered_model is required: the registered model whose @champion is challenged")
        if self.register_as:
            raise ValueError(
                "register_as does not apply to pipeline: the challenger is registered into registered_model"
            )
        metric = self.metric
        if metric and metric not in ("test_auroc", "test_mean_auroc") and not metric.startswith("test_auroc_"):
            raise ValueError(
                f"metric {metric!r} cannot be compared by a paired test; use test_auroc, test_mean_auroc or "
                "test_auroc_<class>"
            )
        return self

    def main_settings(self) -> MainSettings:
        """The settings that train the challenger."""
        return MainSettings.from_dict({name: getattr(self, name) for name in MainSettings.model_fields})


Sampler = choice_of("tpe", "random", "grid")
Pruner = choice_of("median", "hyperband", "none")
DEFAULT_TUNE_STORAGE_FILE = "tune.db"


class TuneSettings(Settings):
    """`tune`: hyperparameter search; every trial is a child run."""

    command: ClassVar[str] = "tune"

    space: Text = Field(
        "configs/search_spaces/synthetic.yaml",
        description="search-space YAML (relative to the working directory; examples in configs/search_spaces/)",
    )
    n_trials: Whole = Field(20, ge=1, description="total number of trials in the study, over all workers and machines")
    timeout: Number = Field(0.0, ge=0.0, description="seconds after which workers start no new trial; 0 = no limit")
    study_name: Text = Field(
        "", description="Optuna study name; empty = <space>-<date>-<time>. An existing study is joined"
    )
    storage: Text = Field(
        "",
        description="Optuna storage URL, e.g. postgresql+psycopg2://user:password@host/db; "
        f"empty = sqlite {DEFAULT_TUNE_STORAGE_FILE}",
    )
    n_workers: Whole = Field(
        1, ge=1, description="worker processes on this machine (one GPU each, round-robin, when GPUs are present)"
    )
    sampler: Sampler = Field("tpe", description="grid needs choices for every parameter")
    pruner: Pruner = Field("median", description="stops hopeless trials early on the per-epoch metric")
    seed: Whole = Field(
        42, ge=0, description="sampler seed (worker i uses seed + i); the training seed is fixed.seed of the space"
    )
    register_best_as: Text = Field("", description="registered model name for the best trial's model; empty = none")
    data_dir: Text = Field("", description="dataset folder; overrides fixed.data_dir of the search space")


class TuneWorkerSettings(Settings):
    """`tune-worker`: one worker process of tune (tune starts these; they run trials of an existing study)."""

    command: ClassVar[str] = "tune-worker"

    space: Text = Field(description="search-space YAML the study was created with")
    storage: Text = Field(description="Optuna storage URL of the study")
    study_name: Text = Field(description="name of the existing study to run trials of")
    n_trials: Whole = Field(ge=1, description="stop when the study holds this many trials")
    parent_run_id: Text = Field("", description="MLflow run whose children the trial runs become")
    experiment_id: Text = Field("", description="MLflow experiment of the trial runs")
    timeout: Number = Field(0.0, ge=0.0, description="seconds after which no new trial starts; 0 = no limit")
    sampler: Sampler = Field("tpe", description="sampler of this worker")
    pruner: Pruner = Field("median", description="pruner of this worker")
    seed: Whole = Field(-1, ge=-1, description="sampler seed; -1 = unseeded")
    data_dir: Text = Field("", description="dataset folder; overrides fixed.data_dir")
    worker_index: Whole = Field(0, ge=0, description="number of this worker, for logs and tags")

    def to_arguments(self) -> list[str]:
        """Command-line flags that `python -m train tune-worker` parses back into these settings."""
        arguments = []
        for name, value in self.to_dict().items():
            if value != "":
                arguments += ["--" + name.replace("_", "-"), str(value)]
        return arguments


# Entry points of the MLproject files and the settings of each (tune-worker is internal).
ENTRY_POINT_SETTINGS: dict[str, type[Settings]] = {
    settings.command: settings
    for settings in (MainSettings, PrepareSettings, EvaluateSettings, PromoteSettings, TuneSettings, PipelineSettings)
}


def mlproject_snippet(settings_class: type[Settings]) -> str:
    """The MLproject YAML of an entry point, derived from its settings: what to paste when a parameter is added."""
    lines = [f"  {settings_class.command}:", "    parameters:"]
    for name, (kind, default) in settings_class.mlproject_parameters().items():
        shown = f'"{default}"' if kind == "string" else default
        lines.append(f"      {name}: {{type: {kind}, default: {shown}}}")
    flags = " ".join(f"--{name.replace('_', '-')} {{{name}}}" for name in settings_class.model_fields)
    lines += ["    command: >-", f"      python -m train {settings_class.command} {flags}"]
    return "\n".join(lines)
