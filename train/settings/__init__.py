"""Typed settings of every `python -m train` command: reads the strings MLflow and the command line pass; writes nothing.

One pydantic model per entry point is the single place where a parameter's type, default,
range, choices and help text live. Everything else is derived from it: the argparse flags and
`--help` of `python -m train`, the MLproject parity test, the resolved-config artifact and the
search-space checks of `tune`. Values arrive as strings (`'3.0'`, `true`, MLflow's quoted
empty `''`) and are coerced here; a bad value becomes one ConfigError line that names the
parameter and what is valid. Nothing here imports TensorFlow, so a mistake fails in a second.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from models import available_models
from serve.common import CommandFailed, ConfigError, first_line
from serve.model_uri import check_model_uri
from train.data import (
    DEFAULT_DATASET,
    DEFAULT_PREPARED_DATASET,
    MINIMUM_IMAGE_SIZE,
    available_datasets,
    datasets_where,
    get_dataset_spec,
    labelled_datasets,
)
from train.data.groups import GROUP_PRESETS
from train.data.prepare import IMAGES_PER_WORKER
from train.data.prepared import DEFAULT_ENCODING, ENCODINGS
from train.scoring.operating_point import REPORTED_SPECIFICITY, parse_operating_point
from train.settings.fields import (
    FALSE_WORDS,
    TRUE_WORDS,
    Flag,
    Number,
    Settings,
    Text,
    Whole,
    choice_of,
    coerce,
    describe_error,
    field_choices,
    field_kind,
    parse_bool,
    unquote,
)

__all__ = [
    "ENTRY_POINT_SETTINGS",
    "BatchSettings",
    "CommandFailed",
    "ConfigError",
    "EvaluateSettings",
    "MainSettings",
    "PipelineSettings",
    "PrepareSettings",
    "PromoteSettings",
    "Settings",
    "TuneSettings",
    "TuneWorkerSettings",
    "coerce",
    "describe_error",
    "field_choices",
    "field_kind",
    "first_line",
    "parse_bool",
    "unquote",
]

# batch dataset=none: no back-test.
NO_LABELS = "none"
ModelName = choice_of(*available_models(), case_sensitive=True)


def named(names: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`: dataset names for a help text."""
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


# Help texts name the datasets a spec fact holds for, so they never restate a spec.
REQUIRE_DATA_DIR = named(datasets_where(lambda spec: spec.requires_data_dir))
OPTIONAL_DATA_DIR = named(datasets_where(lambda spec: "data_dir" in spec.options and not spec.requires_data_dir))
OFFICIAL_TEST_SPLIT = named(datasets_where(lambda spec: spec.official_test_split))
VIEW_FILTER = named(datasets_where(lambda spec: "view" in spec.options))
MISSING_CHECK = named(datasets_where(lambda spec: "max_missing_fraction" in spec.options))
AUGMENTATION_DEFAULTS = "; ".join(
    f"{named(datasets_where(lambda spec, policy=policy: spec.augmentation == policy))}: {policy}"
    for policy in ("radiograph", "cells")
)
DatasetName = choice_of(*available_datasets(), case_sensitive=True)


def check_dataset(dataset: str, validation_fraction: float, **options: Any) -> None:
    """ValueError unless the split fractions leave a train split and every option set applies to the dataset."""
    from train.data import LoadOptions, check_options

    get_dataset_spec(dataset).check_fractions(validation_fraction)
    check_options(dataset, LoadOptions(validation_fraction=validation_fraction, **options))


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
    f"name, or a preset ({', '.join(GROUP_PRESETS)}); none = per image; empty = the dataset's default ("
    + "; ".join(
        f"{name}: {get_dataset_spec(name).grouping}"
        for name in datasets_where(lambda spec: "group_pattern" in spec.options)
    )
    + ")"
)


class MainSettings(Settings):
    """`main`: train one model on one dataset, log everything, optionally register it."""

    command: ClassVar[str] = "main"

    model: ModelName = Field("small_cnn", description="model family")
    dataset: DatasetName = Field(DEFAULT_DATASET, description="dataset to train on")
    data_dir: Text = Field("", description=f"dataset folder (required for {REQUIRE_DATA_DIR})")
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
        f"(left-right flips and jitter only), none, or auto = the dataset's ({AUGMENTATION_DEFAULTS})",
    )
    max_examples: Whole = Field(0, ge=0, description="seeded, stratified cap on the number of examples, 0 = all")
    validation_fraction: Number = Field(
        0.1,
        description=f"share held out for validation ({OFFICIAL_TEST_SPLIT}: carved out of the non-test images by patient)",
    )
    view: View = Field("all", description=f"{VIEW_FILTER} view filter")
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
        check_dataset(
            self.dataset,
            self.validation_fraction,
            view=self.view,
            group_pattern=self.group_pattern,
            synthetic_task=self.synthetic_task,
        )
        check_data(self.dataset, self.data_dir)
        return self


class PrepareSettings(Settings):
    """`prepare`: turn a raw dataset into resized, sharded TFRecords once."""

    command: ClassVar[str] = "prepare"

    dataset: DatasetName = Field(DEFAULT_PREPARED_DATASET, description="dataset to prepare")
    data_dir: Text = Field(
        "",
        description=f"raw dataset folder (required for {REQUIRE_DATA_DIR}; optional for {OPTIONAL_DATA_DIR}: empty = "
        "its loader's default source)",
    )
    output_dir: Text = Field("", description="folder that receives the TFRecord shards and manifest.json (required)")
    image_size: Whole = Field(
        256, ge=MINIMUM_IMAGE_SIZE, description="side in pixels of the stored images; train at this size or smaller"
    )
    shard_size: Whole = Field(1024, ge=1, description="images per TFRecord shard")
    image_encoding: choice_of(*ENCODINGS) = Field(
        DEFAULT_ENCODING,
        description=(
            "how records store pixels: png (lossless, smallest lossless), raw (uint8 pixels: fastest to read, "
            "about 2x png on disk), jpeg (quality 95: lossy, smallest, several times faster to read than png)"
        ),
    )
    workers: Whole = Field(
        0,
        ge=0,
        description=f"worker processes; 0 = up to all cores, one per {IMAGES_PER_WORKER} images (fewer: this process)",
    )
    seed: Whole = Field(42, ge=0, description="seed of the split assignment and shard order")
    validation_fraction: Number = Field(
        0.1,
        description=f"share of all images held out for validation ({OFFICIAL_TEST_SPLIT}: of the non-test images, "
        "by patient)",
    )
    view: View = Field("all", description=f"{VIEW_FILTER} view filter")
    group_pattern: GroupPattern = Field("", description=GROUP_PATTERN_HELP)
    max_missing_fraction: Number = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description=f"{MISSING_CHECK}: stop when more than this share of listed images is missing (and > 5)",
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
        check_dataset(
            self.dataset,
            self.validation_fraction,
            view=self.view,
            group_pattern=self.group_pattern,
            max_missing_fraction=self.max_missing_fraction,
        )
        if self.data_dir:
            source, output = Path(self.data_dir).resolve(), Path(self.output_dir).resolve()
            # Loaders of class folders would read the output as one more class; some read only the files they list.
            reads_everything = not get_dataset_spec(self.dataset).reads_listed_files
            if output == source or (output.is_relative_to(source) and reads_everything):
                raise ValueError(f"output_dir {self.output_dir} must be outside data_dir {self.data_dir}")
        return self


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
        REPORTED_SPECIFICITY, gt=0.0, lt=1.0, description="the fixed specificity at which sensitivity is reported"
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
            get_dataset_spec(self.dataset)
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


def check_batch_input(input_path: str, output: str, engine: str) -> None:
    """ValueError unless `input` lists images the engine can read and `output` can be a folder outside it."""
    from pathlib import Path

    from train.data.archive import open_source

    if not input_path:
        raise ValueError(
            "input is required: a folder of images, a .csv/.parquet list with a `path` column, or a "
            "folder written by prepare"
        )
    source = open_source(input_path)
    if not output:
        raise ValueError(
            "output is required: the folder that receives the Parquet parts (a name ending in .csv "
            "writes CSV parts), e.g. output=scores.parquet"
        )
    target = Path(output).resolve()
    if target.is_file():
        raise ValueError(f"output {output} is a file; the output is a folder of part files, name a new folder")
    if source.kind != "list" and target.is_relative_to(Path(input_path).resolve()):
        raise ValueError(f"output {output} must be outside input {input_path}, or its files would be read as input")
    if engine == "spark" and source.kind != "folder":
        raise ValueError(
            f"engine=spark reads folders of image files (Spark's binaryFile source); score a {source.kind} "
            "input with engine=local"
        )


class BatchSettings(Settings):
    """`batch`: score an archive (folder, path list, prepared folder) into Parquet, resumable; back-tests when labels exist."""

    command: ClassVar[str] = "batch"

    model_uri: Text = Field(
        "",
        description="model to score with: models:/<name>@<alias>, models:/<name>/<version>, models:/<name> "
        "(= @champion, else the latest version), models:/<model_id> or runs:/<run_id>/model (required)",
    )
    input: Text = Field(
        "",
        description="a folder of images (searched recursively: PNG, JPEG, BMP, GIF, DICOM with or without "
        "extension), a .csv or .parquet file with a `path` column, or a folder written by prepare (required)",
    )
    output: Text = Field(
        "",
        description="folder of part files that receives one row per image: Parquet, or CSV when the name ends "
        "in .csv (required)",
    )
    engine: choice_of("local", "spark") = Field(
        "local", description="local: this machine; spark: Apache Spark through mlflow.pyfunc.spark_udf"
    )
    spark_master: Text = Field(
        "local[*]", description="engine=spark: the Spark master, e.g. local[4] or spark://host:7077"
    )
    batch_size: Whole = Field(32, ge=1, description="images per model prediction")
    explain: Flag = Field(
        False, description="write a Grad-CAM heatmap PNG per image into <output>_heatmaps/ (engine=local)"
    )
    resume: Flag = Field(
        True,
        description="skip the images whose path the output already holds; false: delete its parts and score all",
    )
    workers: Whole = Field(0, ge=0, description="engine=local: threads that read and decode images, 0 = the cores")
    part_size: Whole = Field(
        1000, ge=1, description="engine=local: rows per part file; a killed job loses at most the part in progress"
    )
    frame: Whole = Field(-1, ge=-1, description="frame of multi-frame DICOM to score, 0-based; -1 = the middle one")
    dataset: Text = Field(
        "",
        description="labels for back-testing: empty = found in the input (a prepared folder, or a folder whose "
        f"layout a dataset recognises), {NO_LABELS} = no back-test, or one of {', '.join(labelled_datasets())}",
    )
    split: choice_of("train", "val", "test") = Field("test", description="the split that is back-tested")
    allow_different_data: Flag = Field(
        False,
        description="back-test on labelled data whose name or content differs from the training run's "
        "(an external test set)",
    )
    run_name: Text = Field("", description="MLflow run name; empty = batch <model> version <n>")

    @property
    def back_test_requested(self) -> bool:
        return self.dataset.lower() != NO_LABELS

    @model_validator(mode="after")
    def _check_together(self) -> BatchSettings:
        check_model_uri(self.model_uri)
        check_batch_input(self.input, self.output, self.engine)
        if self.engine == "spark" and self.explain:
            raise ValueError("explain=true writes heatmap files on this machine; use engine=local with it")
        if self.engine == "spark" and not self.spark_master:
            raise ValueError("spark_master is required with engine=spark, e.g. local[*] or spark://host:7077")
        if self.dataset and self.back_test_requested:
            labelled = labelled_datasets()
            if self.dataset not in labelled:
                raise ValueError(
                    f"unknown dataset {self.dataset!r} for back-testing; use empty (found in the input), "
                    f"{NO_LABELS} or one of {', '.join(labelled)}"
                )
            check_data(self.dataset, self.input)
        return self


# Entry points of the MLproject files and the settings of each (tune-worker is internal).
ENTRY_POINT_SETTINGS: dict[str, type[Settings]] = {
    settings.command: settings
    for settings in (
        MainSettings,
        PrepareSettings,
        EvaluateSettings,
        PromoteSettings,
        TuneSettings,
        PipelineSettings,
        BatchSettings,
    )
}
