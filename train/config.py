"""Reads `python -m train main` arguments into a validated TrainConfig; writes nothing.

Validation runs before TensorFlow is imported, so a bad model, dataset,
optimizer or data_dir is reported in one line within a second or two.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass, fields
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd", "nadam")
PRECISIONS = ("auto", "float32", "mixed_float16")
SYNTHETIC_TASKS = ("binary", "multilabel")
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message says how to fix it."""


def unquote(value):
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


def parse_bool(value: Any, name: str = "value") -> bool:
    """Parse true/false words the way users type them on a command line (never Python truthiness)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def parse_int(value: Any, name: str = "value") -> int:
    """Parse an integer that MLflow may have passed as a float string such as '3.0'."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def parse_float(value: Any, name: str = "value") -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def check_split_settings(dataset: str, validation_fraction: float, view: str) -> None:
    """Raise ConfigError unless validation_fraction leaves room for the other splits and view fits the dataset."""
    from train.data.chestxray14 import normalize_view
    from train.data.splits import check_fractions

    try:
        normalized = normalize_view(view)
        if dataset == "chestxray14":
            if not 0.0 < validation_fraction < 1.0:
                raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
        else:
            # Other datasets carve a 15% test split as well.
            check_fractions(validation_fraction, 0.15)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if normalized != "all" and dataset != "chestxray14":
        raise ConfigError(f"view={view} filters chestxray14 images only; use view=all for dataset {dataset!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; field names equal the MLproject parameter names."""

    model: str = "small_cnn"
    dataset: str = "synthetic"
    data_dir: str = ""
    image_size: int = 128
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weights: str = "none"
    trainable_layers: int = -1
    dropout: float = 0.3
    l2: float = 0.0
    convolutions: int = 3
    augment: bool = True
    max_examples: int = 0
    validation_fraction: float = 0.1
    view: str = "all"
    seed: int = 42
    precision: str = "auto"
    jit_compile: bool = False
    patience: int = 5
    synthetic_task: str = "binary"
    register_as: str = ""
    run_name: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from raw strings or values, rejecting unknown keys, then validate it."""
        known = {field.name: field for field in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(known)}")
        converted: dict[str, Any] = {}
        for name, value in values.items():
            kind = known[name].type
            if value is None:
                continue
            if kind == "int":
                converted[name] = parse_int(value, name)
            elif kind == "float":
                converted[name] = parse_float(value, name)
            elif kind == "bool":
                converted[name] = parse_bool(value, name)
            else:
                converted[name] = str(value).strip()
        config = cls(**converted)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def weights_choice(self) -> str | None:
        """The weights argument for models.build_model: None, 'imagenet' or a file path."""
        word = self.weights.strip()
        if word.lower() in ("", "none", "null", "random"):
            return None
        if word.lower() == "imagenet":
            return "imagenet"
        return word

    def validate(self) -> None:
        """Check every setting cheaply (no TensorFlow import); raise ConfigError naming the fix."""
        from models import available_models
        from train.data import available_datasets, validate_dataset_args

        models = available_models()
        if self.model not in models:
            raise ConfigError(f"unknown model {self.model!r}; valid models: {', '.join(models)}")
        datasets = available_datasets()
        if self.dataset not in datasets:
            raise ConfigError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(datasets)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; valid precisions: {', '.join(PRECISIONS)}")
        if self.synthetic_task not in SYNTHETIC_TASKS:
            raise ConfigError(
                f"unknown synthetic_task {self.synthetic_task!r}; valid choices: {', '.join(SYNTHETIC_TASKS)}"
            )
        weights = self.weights_choice
        if weights not in (None, "imagenet") and not os.path.isfile(weights):
            raise ConfigError(
                f"weights file {weights!r} does not exist; use imagenet, none or a path to a weights file"
            )
        if weights == "imagenet" and self.model == "small_cnn":
            raise ConfigError("small_cnn has no ImageNet weights; use weights=none or a weights file")
        minimum_size = 32
        if self.image_size < minimum_size:
            raise ConfigError(f"image_size must be at least {minimum_size}, got {self.image_size}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be zero or positive, got {self.l2}")
        if self.trainable_layers < -1:
            raise ConfigError(
                f"trainable_layers must be -1 (all), 0 (frozen backbone) or N > 0, got {self.trainable_layers}"
            )
        if self.convolutions < 1:
            raise ConfigError(f"convolutions must be at least 1, got {self.convolutions}")
        if self.max_examples < 0:
            raise ConfigError(f"max_examples must be 0 (all) or positive, got {self.max_examples}")
        if self.patience < 1:
            raise ConfigError(f"patience must be at least 1, got {self.patience}")
        check_split_settings(self.dataset, self.validation_fraction, self.view)
        try:
            validate_dataset_args(self.dataset, self.data_dir or None)
        except ValueError as error:
            raise ConfigError(str(error)) from None
