"""The field types and base model of the settings: coerces the strings MLflow and the command line pass; reads and writes nothing.

`Whole`, `Number`, `Flag`, `Text` and `choice_of(...)` turn `'3.0'`, `true` and MLflow's quoted empty
`''` into typed values; `Settings` is strict about unknown keys and turns a pydantic error into one
ConfigError line that names the parameter and what is valid.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError, model_validator

from serve.common import ConfigError

TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


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
