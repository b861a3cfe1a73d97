"""Picks the best finished training run by a metric and registers its model; reads runs, writes registry versions and aliases.

`python -m train promote --experiment medimg --registered-model chest-classifier` finds the
FINISHED runs of the experiment(s) that logged a model (tag `medimg.model_uri`) and the metric
(default `best_val_auroc`: model selection on validation data, never on the test split),
registers the best run's logged model (or reuses the version that already holds it), tags the
version with the metric and its source run, and moves the alias `champion` to it only when it
beats the current champion on that metric; otherwise the alias `challenger` points at it.
Registry aliases only, never stages. Running it again with nothing new changes nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from train.config import ConfigError
from train.evaluate import first_line, from_strings

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_URI_TAG = "medimg.model_uri"
MODES = ("max", "min")


@dataclass(frozen=True)
class PromoteConfig:
    """Settings of one promotion; field names equal the MLproject `promote` parameter names."""

    experiment: str = ""
    metric: str = "best_val_auroc"
    mode: str = "max"
    registered_model: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PromoteConfig:
        return from_strings(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def experiment_names(self) -> list[str]:
        return [name.strip() for name in self.experiment.split(",") if name.strip()]

    def validate(self) -> None:
        if not self.registered_model:
            raise ConfigError("registered_model is required: the registered model name to promote into")
        if not self.metric:
            raise ConfigError("metric is required, e.g. best_val_auroc, test_auroc or test_mean_auroc")
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; valid modes: max (higher is better), min")


@dataclass(frozen=True)
class Candidate:
    run_id: str
    model_uri: str
    value: float
    start_time: int


@dataclass(frozen=True)
class PromotionResult:
    """What promote did: the chosen run and version, and which alias (if any) it moved."""

    registered_model: str
    metric: str
    run_id: str
    value: float
    version: str
    new_version: bool
    # "champion": the alias moved to this version; "challenger": the champion stayed; "unchanged": nothing moved.
    action: str
    champion_version: str
    champion_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def experiment_ids(client, names: list[str]) -> list[str]:
    """IDs of the named experiments; with no names, the active one (MLFLOW_EXPERIMENT_ID/_NAME) or Default."""
    if not names:
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return [os.environ["MLFLOW_EXPERIMENT_ID"]]
        names = [os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"]
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = sorted(item.name for item in client.search_experiments(max_results=100))
            raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(known) or 'none'}")
        ids.append(experiment.experiment_id)
    return ids


def is_better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def candidates(client, ids: list[str], metric: str) -> list[Candidate]:
    """FINISHED runs that logged a model and a finite value of `metric`."""
    found = []
    page_token = None
    while True:
        page = client.search_runs(
            ids, filter_string="attributes.status = 'FINISHED'", max_results=1000, page_token=page_token
        )
        for run in page:
            model_uri = run.data.tags.get(MODEL_URI_TAG, "")
            value = run.data.metrics.get(metric)
            if model_uri and value is not None and math.isfinite(value):
                found.append(Candidate(run.info.run_id, model_uri, float(value), int(run.info.start_time or 0)))
        page_token = page.token
        if not page_token:
            return found


def best_candidate(found: list[Candidate], mode: str) -> Candidate:
    """The best value; ties go to the earliest run, so repeated promotions choose the same one."""
    sign = -1.0 if mode == "max" else 1.0
    return min(found, key=lambda candidate: (sign * candidate.value, candidate.start_time, candidate.run_id))


def find_or_register(client, name: str, candidate: Candidate) -> tuple[Any, bool]:
    """The version of `name` that holds the candidate's model, registering it when none does."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        existing = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        existing = []
    for version in existing:
        if version.source == candidate.model_uri or (
            getattr(version, "model_id", None) and candidate.model_uri == f"models:/{version.model_id}"
        ):
            return version, False
    version = mlflow.register_model(candidate.model_uri, name)
    if str(version.status) != "READY":
        raise ConfigError(f"model version {name}/{version.version} is {version.status}, not READY; try again later")
    return version, True


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def champion_value(client, champion, metric: str) -> float | None:
    """The champion's metric, read from its source run (the version tag is a copy for the UI)."""
    from mlflow.exceptions import MlflowException

    if champion.run_id:
        try:
            value = client.get_run(champion.run_id).data.metrics.get(metric)
        except MlflowException:
            value = None
        if value is not None and math.isfinite(value):
            return float(value)
    tagged = champion.tags.get(f"medimg.metric.{metric}") if champion.tags else None
    try:
        return float(tagged) if tagged is not None else None
    except ValueError:
        return None


def promote(config: PromoteConfig) -> PromotionResult:
    """Register the best run's model under config.registered_model and move `champion` if it wins."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ids = experiment_ids(client, config.experiment_names)
    found = candidates(client, ids, config.metric)
    if not found:
        raise ConfigError(
            f"no FINISHED run with a logged model and metric {config.metric!r} in experiment(s) "
            f"{config.experiment or 'the active one'}; train one first or pick another metric"
        )
    best = best_candidate(found, config.mode)
    name = config.registered_model
    try:
        version, created = find_or_register(client, name, best)
    except MlflowException as error:
        raise ConfigError(f"cannot register {best.model_uri} as {name!r}: {first_line(error.message)}") from None
    tags = {
        "medimg.source_run_id": best.run_id,
        "medimg.promotion_metric": config.metric,
        f"medimg.metric.{config.metric}": repr(best.value),
    }
    for key, value in tags.items():
        if (version.tags or {}).get(key) != value:
            client.set_model_version_tag(name, version.version, key, value)

    champion = current_champion(client, name)
    # Version search results leave `aliases` empty; the registered model lists them (alias -> version).
    aliases = {alias: str(number) for alias, number in client.get_registered_model(name).aliases.items()}
    is_challenger = aliases.get(CHALLENGER) == str(version.version)
    best_value = best.value
    if champion is not None and str(champion.version) == str(version.version):
        action, champion_version, value_of_champion = "unchanged", champion.version, best_value
    else:
        value_of_champion = champion_value(client, champion, config.metric) if champion is not None else None
        wins = champion is None or (
            value_of_champion is not None and is_better(best_value, value_of_champion, config.mode)
        )
        if wins:
            client.set_registered_model_alias(name, CHAMPION, version.version)
            action, champion_version = CHAMPION, version.version
            if is_challenger:
                client.delete_registered_model_alias(name, CHALLENGER)
        else:
            champion_version = champion.version
            if is_challenger:
                action = "unchanged"
            else:
                client.set_registered_model_alias(name, CHALLENGER, version.version)
                action = CHALLENGER
            if value_of_champion is None:
                print(
                    f"champion {name}/{champion.version} has no {config.metric}; it stays champion. Move the alias "
                    f"yourself if version {version.version} should replace it.",
                    file=sys.stderr,
                )
    result = PromotionResult(
        registered_model=name,
        metric=config.metric,
        run_id=best.run_id,
        value=best_value,
        version=str(version.version),
        new_version=created,
        action=action,
        champion_version=str(champion_version),
        champion_value=value_of_champion,
    )
    print(json.dumps(result.to_dict()), flush=True)
    log_to_active_run(result)
    return result


def log_to_active_run(result: PromotionResult) -> None:
    """Under `mlflow run -e promote` MLflow made a run for this command; record the decision on it."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    import mlflow

    with mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"]):
        mlflow.set_tags(
            {
                "medimg.kind": "promotion",
                "medimg.promoted_run_id": result.run_id,
                "medimg.promoted_version": f"{result.registered_model}/{result.version}",
                "medimg.promotion_action": result.action,
            }
        )
