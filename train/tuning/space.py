"""Reads a tuning search-space YAML (configs/search_spaces/*.yaml) into a validated SearchSpace; writes nothing.

A search space names the metric to optimise, fixed `main` settings and
the distributions Optuna samples the others from:

    metric: val_auroc            # best value over the epochs of each trial
    direction: maximize          # optional; val_loss defaults to minimize
    fixed: {dataset: malaria, image_size: 128, epochs: 10}
    space:
      model: {choices: [small_cnn, vgg16]}
      learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}
      batch_size: {choices: [16, 32, 64]}
      dropout: {low: 0.0, high: 0.5}
      trainable_layers: {type: int, low: 0, high: 20, step: 5}
    first_trials:                # optional; evaluated first, in this order
      - {model: small_cnn, learning_rate: 1.0e-3}
    pruner_settings:             # optional; settings of the pruner chosen with --pruner
      median: {n_startup_trials: 5, n_warmup_steps: 2}

Every mistake is reported as one ConfigError line that names the bad key, and
every fixed value and every choice or bound is checked by MainSettings itself
before any trial starts. Nothing here imports TensorFlow or Optuna at module level.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serve.common import ConfigError, first_line
from train.settings import MainSettings, field_kind

TOP_LEVEL_KEYS = ("metric", "direction", "fixed", "space", "first_trials", "pruner_settings")
DISTRIBUTION_TYPES = ("categorical", "float", "int")
DISTRIBUTION_KEYS = ("type", "choices", "low", "high", "log", "step")
# Per-epoch validation metrics the training loop puts in the Keras logs (precision and recall: binary tasks only).
METRICS = ("val_auroc", "val_loss", "val_auc", "val_accuracy", "val_precision", "val_recall")
DIRECTIONS = ("maximize", "minimize")
# Settings that choose the data, its split or the run rather than the model: trials that differ in
# them are scored on different validation sets (or are not trials at all), so they are fixed-only.
NOT_TUNABLE = ("dataset", "data_dir", "max_examples", "validation_fraction", "view", "seed", "register_as", "run_name")
# The trial names each run (trial-N) and only the best trial is registered (register_best_as).
NOT_FIXABLE = {
    "register_as": "register the best trial with register_best_as instead",
    "run_name": "trial runs are named trial-<number>",
}
PRUNER_SETTINGS = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}
SEARCH_SPACE_FOLDER = "configs/search_spaces"
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_space_path(path: str | os.PathLike) -> Path:
    """The search-space file: as given (relative to the working directory), else relative to the repository.

    `mlflow run docker` starts commands in MLflow's copy of docker/, and the image keeps
    configs/ next to the code, so configs/search_spaces/... resolves there.
    """
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        return REPO_ROOT / path
    return path.absolute()


def _field_types() -> dict[str, str]:
    """Setting name -> 'int', 'float', 'bool', 'str' or 'choice', from the main settings model."""
    return {name: field_kind(MainSettings, name) for name in MainSettings.model_fields}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Parameter:
    """One tuned `main` setting and the distribution Optuna samples it from."""

    name: str
    kind: str
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter's value."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def candidates(self) -> list[tuple[str, Any]]:
        """The values MainSettings must accept, each with the key it comes from: every choice, or low and high."""
        if self.kind == "categorical":
            return [("choices", value) for value in self.choices]
        return [("low", self.low), ("high", self.high)]

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if not _is_number(value):
            return False
        if self.kind == "int" and (not float(value).is_integer()):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"one of {list(self.choices)}"
        return f"a{'n int' if self.kind == 'int' else ' float'} in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: what to optimise, what stays fixed and what is sampled."""

    name: str
    metric: str
    direction: str
    fixed: dict[str, Any]
    parameters: dict[str, Parameter]
    first_trials: list[dict[str, Any]] = field(default_factory=list)
    pruner_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike, *, data_dir: str = "") -> SearchSpace:
        """Read and validate a search-space file; `data_dir`, when given, overrides `fixed.data_dir`."""
        path = resolve_space_path(path)
        if not path.is_file():
            raise ConfigError(f"search space file {str(path)!r} does not exist; examples are in {SEARCH_SPACE_FOLDER}/")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or first_line(error, limit=None)
            raise ConfigError(f"search space {path}: not valid YAML{where}: {problem}") from None
        return cls.from_dict(raw, name=path.stem, source=str(path), data_dir=data_dir)

    @classmethod
    def from_dict(cls, raw: Any, *, name: str = "search_space", source: str = "", data_dir: str = "") -> SearchSpace:
        where = f"search space {source or name}"

        def fail(message: str) -> ConfigError:
            return ConfigError(f"{where}: {message}")

        if not isinstance(raw, dict):
            raise fail(f"must be a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}")
        unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS), key=str)
        if unknown:
            raise fail(f"unknown key {unknown[0]!r}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")

        metric = raw.get("metric", "val_auroc")
        if metric not in METRICS:
            raise fail(f"metric: unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
        direction = raw.get("direction", "minimize" if metric == "val_loss" else "maximize")
        if direction not in DIRECTIONS:
            raise fail(f"direction: must be maximize or minimize, got {direction!r}")

        types = _field_types()
        fixed = raw.get("fixed") or {}
        if not isinstance(fixed, dict):
            raise fail("fixed: must be a mapping of main settings to values")
        fixed = dict(fixed)
        for key in fixed:
            if key not in types:
                raise fail(f"fixed.{key}: not a setting of main; valid settings: {', '.join(types)}")
            if key in NOT_FIXABLE:
                raise fail(f"fixed.{key}: cannot be fixed in a search space; {NOT_FIXABLE[key]}")
            if isinstance(fixed[key], dict | list):
                raise fail(f"fixed.{key}: must be a single value, got {fixed[key]!r}")
        if data_dir:
            fixed["data_dir"] = data_dir

        space = raw.get("space")
        if not isinstance(space, dict) or not space:
            raise fail("space: must map at least one setting to a distribution, e.g. dropout: {low: 0.0, high: 0.5}")
        parameters = {}
        for key, spec in space.items():
            parameters[key] = _parse_parameter(key, spec, types, fixed, fail)
        base = _check_values(fixed, parameters, fail)

        first_trials = _parse_first_trials(raw.get("first_trials"), parameters, base, fail)
        pruner_settings = _parse_pruner_settings(raw.get("pruner_settings"), fail)
        return cls(
            name=name,
            metric=metric,
            direction=direction,
            fixed=fixed,
            parameters=parameters,
            first_trials=first_trials,
            pruner_settings=pruner_settings,
            source=source,
        )

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every parameter from an Optuna trial, in file order."""
        return {name: parameter.suggest(trial) for name, parameter in self.parameters.items()}

    def trial_settings(self, params: dict[str, Any], run_name: str = "") -> MainSettings:
        """The main settings of one trial: the fixed settings, the sampled ones and the run name."""
        return MainSettings.from_dict({**self.fixed, **params, "run_name": run_name})

    def grid(self) -> dict[str, list]:
        """The grid sampler's search space; only finite choices can be enumerated."""
        for parameter in self.parameters.values():
            if parameter.kind != "categorical":
                raise ConfigError(
                    f"search space {self.source or self.name}: space.{parameter.name}: the grid sampler needs "
                    f"finite choices, e.g. {{choices: [...]}}; use sampler tpe or random for ranges"
                )
        return {name: list(parameter.choices) for name, parameter in self.parameters.items()}

    def grid_size(self) -> int:
        return math.prod(len(choices) for choices in self.grid().values())

    def to_dict(self) -> dict[str, Any]:
        """The resolved search space, as logged with the parent run."""
        space = {}
        for name, parameter in self.parameters.items():
            if parameter.kind == "categorical":
                space[name] = {"choices": list(parameter.choices)}
            else:
                space[name] = {"type": parameter.kind, "low": parameter.low, "high": parameter.high}
                if parameter.log:
                    space[name]["log"] = True
                if parameter.step is not None:
                    space[name]["step"] = parameter.step
        resolved: dict[str, Any] = {
            "metric": self.metric,
            "direction": self.direction,
            "fixed": dict(self.fixed),
            "space": space,
        }
        if self.first_trials:
            resolved["first_trials"] = [dict(values) for values in self.first_trials]
        if self.pruner_settings:
            resolved["pruner_settings"] = {name: dict(values) for name, values in self.pruner_settings.items()}
        return resolved


def _config_error(values: dict[str, Any]) -> str:
    """MainSettings' complaint about `values`, or an empty string when it accepts them."""
    try:
        MainSettings.from_dict(values)
    except ConfigError as error:
        return str(error)
    return ""


def _check_values(fixed: dict[str, Any], parameters: dict[str, Parameter], fail) -> dict[str, Any]:
    """Let MainSettings judge the fixed values and every choice and bound, so no trial samples a value training rejects.

    Candidates are checked against a base config: the fixed values plus the first
    candidate of every tuned setting (the model decides whether weights=imagenet is
    valid, for instance). When the base itself fails, the key to blame is the first
    whose change makes the complaint go away. Returns the base config.
    """
    base = {**fixed, **{name: parameter.candidates()[0][1] for name, parameter in parameters.items()}}
    base_error = _config_error(base)
    if base_error:
        for name, parameter in parameters.items():
            what, _ = parameter.candidates()[0]
            if any(_config_error({**base, name: value}) != base_error for _, value in parameter.candidates()[1:]):
                raise fail(f"space.{name}.{what}: {base_error}")
        for name in fixed:
            without = {key: value for key, value in base.items() if key != name}
            if _config_error(without) != base_error:
                raise fail(f"fixed.{name}: {base_error}")
        raise fail(f"fixed: {base_error}")
    for name, parameter in parameters.items():
        for what, value in parameter.candidates():
            error = _config_error({**base, name: value})
            if error:
                raise fail(f"space.{name}.{what}: {error}")
    return base


def _parse_parameter(key: Any, spec: Any, types: dict[str, str], fixed: dict[str, Any], fail) -> Parameter:
    label = f"space.{key}"
    if key not in types:
        tunable = [name for name in types if name not in NOT_TUNABLE]
        raise fail(f"{label}: unknown parameter; tunable settings: {', '.join(tunable)}")
    if key in NOT_TUNABLE:
        raise fail(f"{label}: {key} cannot be tuned; put it under fixed instead")
    if key in fixed:
        raise fail(f"{label}: {key} is also under fixed; keep it in one place")
    if not isinstance(spec, dict):
        raise fail(f"{label}: must be a mapping such as {{choices: [...]}} or {{low: ..., high: ...}}, got {spec!r}")
    unknown = sorted(set(spec) - set(DISTRIBUTION_KEYS), key=str)
    if unknown:
        raise fail(f"{label}.{unknown[0]}: unknown key; valid keys: {', '.join(DISTRIBUTION_KEYS)}")

    field_type = types[key]
    kind = spec.get("type")
    if kind is None:
        if "choices" in spec:
            kind = "categorical"
        elif field_type == "int":
            kind = "int"
        else:
            kind = "float"
    if kind not in DISTRIBUTION_TYPES:
        raise fail(f"{label}.type: unknown distribution type {kind!r}; valid types: {', '.join(DISTRIBUTION_TYPES)}")

    if kind == "categorical":
        extra = sorted({"low", "high", "log", "step"} & set(spec))
        if extra:
            raise fail(f"{label}.{extra[0]}: a categorical parameter takes only choices")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(f"{label}.choices: needs a non-empty list of values, got {choices!r}")
        for value in choices:
            if value is not None and not isinstance(value, bool | int | float | str):
                raise fail(f"{label}.choices: values must be plain numbers, words or booleans, got {value!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise fail(f"{label}.choices: lists a value twice")
        return Parameter(name=key, kind=kind, choices=tuple(choices))

    if "choices" in spec:
        raise fail(f"{label}.choices: a {kind} parameter takes low and high, not choices")
    if field_type not in ("int", "float"):
        raise fail(f"{label}: {key} is a {field_type} setting; give it {{choices: [...]}}")
    if kind == "float" and field_type == "int":
        raise fail(f"{label}.type: {key} is a whole-number setting; use type int or choices")
    for bound in ("low", "high"):
        if bound not in spec:
            raise fail(f"{label}.{bound}: missing; a {kind} parameter needs low and high")
        if not _is_number(spec[bound]):
            raise fail(f"{label}.{bound}: must be a number, got {spec[bound]!r}")
        if kind == "int" and not float(spec[bound]).is_integer():
            raise fail(f"{label}.{bound}: must be a whole number for an int parameter, got {spec[bound]!r}")
    low, high = spec["low"], spec["high"]
    if kind == "int":
        low, high = int(low), int(high)
    if low >= high:
        raise fail(f"{label}: low ({low}) must be below high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{label}.log: must be true or false, got {log!r}")
    if log and low <= 0:
        raise fail(f"{label}.low: a log-scale range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        if log:
            raise fail(f"{label}.step: cannot be combined with log: true")
        if not _is_number(step) or step <= 0:
            raise fail(f"{label}.step: must be a positive number, got {step!r}")
        if kind == "int" and not float(step).is_integer():
            raise fail(f"{label}.step: must be a whole number for an int parameter, got {step!r}")
    return Parameter(name=key, kind=kind, low=low, high=high, log=log, step=step)


def _parse_first_trials(raw: Any, parameters: dict[str, Parameter], base: dict[str, Any], fail) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise fail("first_trials: must be a list of mappings from tuned settings to values")
    trials = []
    for index, values in enumerate(raw):
        label = f"first_trials[{index}]"
        if not isinstance(values, dict):
            raise fail(f"{label}: must be a mapping from tuned settings to values, got {values!r}")
        for key, value in values.items():
            if key not in parameters:
                raise fail(f"{label}.{key}: not a parameter under space; tuned settings: {', '.join(parameters)}")
            if not parameters[key].contains(value):
                raise fail(f"{label}.{key}: {value!r} is outside the space; expected {parameters[key].describe()}")
        try:
            MainSettings.from_dict({**base, **values})
        except ConfigError as error:
            raise fail(f"{label}: {error}") from None
        trials.append(dict(values))
    return trials


def _parse_pruner_settings(raw: Any, fail) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail(f"pruner_settings: must map a pruner ({', '.join(PRUNER_SETTINGS)}) to its settings")
    settings = {}
    for pruner, values in raw.items():
        if pruner not in PRUNER_SETTINGS:
            raise fail(f"pruner_settings.{pruner}: unknown pruner; valid pruners: {', '.join(PRUNER_SETTINGS)}")
        if not isinstance(values, dict):
            raise fail(f"pruner_settings.{pruner}: must be a mapping of settings, got {values!r}")
        for key, value in values.items():
            if key not in PRUNER_SETTINGS[pruner]:
                valid = ", ".join(PRUNER_SETTINGS[pruner])
                raise fail(f"pruner_settings.{pruner}.{key}: unknown setting; valid settings: {valid}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail(f"pruner_settings.{pruner}.{key}: must be a whole number >= 0, got {value!r}")
        settings[pruner] = dict(values)
    return settings
