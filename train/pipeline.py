"""The eval-and-deploy flow (`python -m train pipeline`): reads a challenger (or trains one) and the registry's @champion; writes nested MLflow runs, a registered version with its decision, a model card and a serving Dockerfile.

Steps, each a nested run under one parent run, with one progress line each:

1. train: a challenger from the `main` parameters (skipped when `challenger` names a run or model);
2. evaluate challenger and 3. evaluate champion: both on the same frozen test split, the one their
   training runs share (same dataset name, task and content digest; anything else is refused in one line);
4. compare: the paired difference on the chosen metric with its 95% interval and p-value (DeLong's test
   for one AUROC, a paired bootstrap over patients for a mean AUROC);
5. decide: promote when the challenger is at most `margin` worse than the champion and not significantly
   worse at `alpha`; without a champion, when its AUROC interval lies above 0.5. On promotion the old
   champion becomes `previous` (`python -m train promote --rollback NAME` undoes it);
6. record: the challenger's registered version carries the decision as tags, its run the model card;
7. serve: a Dockerfile for the champion from `mlflow models generate-dockerfile` (and, with
   build_image=true, the image from `mlflow models build-docker`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.settings import ConfigError, EvaluateSettings, PipelineSettings, first_line

SANITY_FLOOR = 0.5
SERVING_DOCKERFILE_ARTIFACT = "serving"


@dataclass
class Decision:
    """The outcome of the flow: whether the challenger was promoted, why, and on what numbers."""

    promoted: bool
    reason: str
    metric: str
    challenger_value: float
    challenger_ci: tuple[float, float]
    champion_version: str = ""
    comparison: Any = None


class Progress:
    """One line per step with the time since the flow started."""

    def __init__(self):
        self.started = time.perf_counter()

    def say(self, step: str, message: str) -> None:
        print(f"[pipeline {time.perf_counter() - self.started:7.1f} s] {step}: {message}", flush=True)


def docker_engine_error() -> str:
    """Why no Docker engine can build an image here ('' when one answers)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"no Docker engine answers ({first_line(result.stderr) or 'docker info failed'})"
    return ""


def source_of(reference: str, client) -> tuple[str, str]:
    """(model URI, training run id) of a challenger given as a run id or a model URI."""
    from mlflow.exceptions import MlflowException

    from train.evaluate import resolve_model_source

    if "/" not in reference and ":" not in reference:
        try:
            run = client.get_run(reference)
        except MlflowException:
            raise ConfigError(
                f"challenger {reference!r} is neither a run id of this tracking store nor a model URI"
            ) from None
        model_uri = run.data.tags.get("medimg.model_uri", "")
        if not model_uri:
            raise ConfigError(f"run {reference} logged no medimg model (no medimg.model_uri tag); train one first")
        return model_uri, reference
    return reference, resolve_model_source(reference, client).run_id or ""


def data_of(client, run_id: str) -> tuple[str, str, str]:
    from train.promote import data_key

    return data_key(client.get_run(run_id).data.tags) if run_id else ("", "", "")


def check_same_data(challenger: tuple[str, str, str], champion: tuple[str, str, str], version: str) -> None:
    """Refuse a challenger trained on other data than the champion: their test splits would not be the same images."""
    from train.promote import describe_data

    if challenger != champion:
        raise ConfigError(
            f"the challenger was trained on {describe_data(challenger)}, the champion (version {version}) on "
            f"{describe_data(champion)}; a paired comparison needs one frozen test split: train the challenger on "
            "the champion's data settings"
        )


def metric_for(settings: PipelineSettings, task: str) -> str:
    return settings.metric or ("test_mean_auroc" if task == "multilabel" else "test_auroc")


def evaluate_step(model_uri: str, role: str, progress: Progress):
    """Score a model on its training run's test split, logged as a nested evaluation run."""
    import mlflow

    from train.evaluate import log_evaluation_pictures, record_evaluation, score_model

    settings = EvaluateSettings.from_dict({"model_uri": model_uri, "split": "test", "run_name": f"evaluate {role}"})
    evaluation = score_model(settings)
    with mlflow.start_run(run_name=f"evaluate {role}", nested=True) as run:
        evaluation.run_id = run.info.run_id
        record_evaluation(run.info.run_id, settings, evaluation)
        log_evaluation_pictures(settings, evaluation)
    progress.say(
        f"evaluate {role}", f"{model_uri} on {evaluation.data.name}/test, {len(evaluation.probabilities)} images"
    )
    return evaluation


def compare(metric: str, challenger, champion, seed: int):
    """The paired comparison of two evaluations of the same images on `metric`."""
    from train.comparison import delong_test, paired_bootstrap
    from train.metrics import metric_safe, scored_classes

    labels = challenger.predictions.labels
    if not np.array_equal(labels, champion.predictions.labels):
        raise ConfigError("the two evaluations did not score the same labelled images; their test splits differ")
    names = [challenger.data.class_names[1]] if challenger.data.task == "binary" else list(challenger.data.class_names)
    single = [index for index, name in enumerate(names) if metric == f"test_auroc_{metric_safe(name)}"]
    if challenger.data.task == "binary" or single:
        index = single[0] if single else 0
        return delong_test(
            labels[:, index], challenger.probabilities[:, index], champion.probabilities[:, index], metric
        )
    groups = challenger.data.splits["test"].groups
    classes = np.flatnonzero(scored_classes(labels))
    return paired_bootstrap(
        labels, challenger.probabilities, champion.probabilities, classes, metric=metric, groups=groups, seed=seed
    )


def decide(settings: PipelineSettings, metric: str, challenger, comparison, champion_version: str) -> Decision:
    """Promote when non-inferior by `margin` and not significantly worse; a first champion needs AUROC above chance."""
    value = challenger.metrics.get(metric, float("nan"))
    interval = (
        challenger.metrics.get(f"{metric}_ci_low", float("nan")),
        challenger.metrics.get(f"{metric}_ci_high", float("nan")),
    )
    if comparison is None:
        promoted = interval[0] > SANITY_FLOOR
        reason = (
            f"first champion: {metric} {value:.3f} (95% CI {interval[0]:.3f}-{interval[1]:.3f}) "
            f"{'lies above' if promoted else 'does not lie above'} chance ({SANITY_FLOOR})"
        )
        return Decision(promoted, reason, metric, value, interval)
    difference, p_value = comparison.difference, comparison.p_value
    significantly_worse = difference < 0 and p_value < settings.alpha
    non_inferior = difference >= -settings.margin
    promoted = non_inferior and not significantly_worse
    verdict = (
        "promoted"
        if promoted
        else ("significantly worse" if significantly_worse else f"worse by more than the margin {settings.margin:g}")
    )
    reason = (
        f"{verdict}: challenger minus champion {metric} = {difference:+.4f} (95% CI {comparison.ci_low:+.4f} to "
        f"{comparison.ci_high:+.4f}, p = {p_value:.3g}, {comparison.method}, alpha {settings.alpha:g})"
    )
    return Decision(promoted, reason, metric, value, interval, champion_version, comparison)


def register(
    client, settings: PipelineSettings, challenger_uri: str, challenger_run: str, decision: Decision, evaluation
):
    """Register the challenger (or reuse its version), tag the decision on it and move the aliases."""
    from mlflow.exceptions import MlflowException

    from train.promote import CHALLENGER, Candidate, find_or_register, move_champion

    name = settings.registered_model
    candidate = Candidate(challenger_run, challenger_uri, decision.challenger_value, 0)
    try:
        version, _ = find_or_register(client, name, candidate)
    except MlflowException as error:
        raise ConfigError(f"cannot register {challenger_uri} as {name!r}: {first_line(error.message)}") from None
    tags = decision_tags(decision, evaluation)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    if decision.promoted:
        move_champion(client, name, version.version)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def decision_tags(decision: Decision, evaluation) -> dict[str, str]:
    """What the registry shows next to the version: decision, reason, metrics with intervals, p-value, data."""
    low, high = decision.challenger_ci
    tags = {
        "medimg.decision": "promoted" if decision.promoted else "not promoted",
        "medimg.decision_reason": decision.reason[:5000],
        "medimg.decision_metric": decision.metric,
        f"medimg.metric.{decision.metric}": f"{decision.challenger_value:.4f} (95% CI {low:.4f}-{high:.4f})",
        "medimg.dataset": evaluation.data.name,
        "medimg.dataset_digest": evaluation.data.digest,
        "medimg.source_run_id": evaluation.source.run_id or "",
    }
    if decision.comparison is not None:
        comparison = decision.comparison
        tags.update(
            {
                "medimg.compared_champion_version": decision.champion_version,
                "medimg.champion_metric": f"{comparison.champion:.4f}",
                "medimg.difference": f"{comparison.difference:+.4f} (95% CI {comparison.ci_low:+.4f} to {comparison.ci_high:+.4f})",
                "medimg.p_value": f"{comparison.p_value:.4g}",
                "medimg.comparison_method": comparison.method,
            }
        )
    return tags


def write_serving_image(client, name: str, version: str, build: bool, progress: Progress) -> None:
    """Log a Dockerfile that serves the version (generate-dockerfile); with `build`, build the image too."""
    import mlflow

    uri = f"models:/{name}/{version}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    with tempfile.TemporaryDirectory() as workdir:
        output = Path(workdir) / "serving"
        command = [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", uri, "-d", str(output)]
        result = subprocess.run(command, capture_output=True, text=True, env=environment)
        if result.returncode != 0:
            raise ConfigError(
                f"mlflow models generate-dockerfile failed: {first_line(result.stderr.splitlines()[-1] if result.stderr else '')}"
            )
        mlflow.log_artifact(str(output / "Dockerfile"), SERVING_DOCKERFILE_ARTIFACT)
    progress.say("serve", f"Dockerfile for {uri} logged as {SERVING_DOCKERFILE_ARTIFACT}/Dockerfile")
    if build:
        image = f"{name.lower()}:{version}"
        built = subprocess.run(
            [sys.executable, "-m", "mlflow", "models", "build-docker", "-m", uri, "-n", image], env=environment
        )
        if built.returncode != 0:
            raise ConfigError(
                f"mlflow models build-docker -m {uri} failed (exit {built.returncode}); see its output above"
            )
        mlflow.set_tag("medimg.serving_image", image)
        progress.say("serve", f"image {image} built")


def challenge(client, settings: PipelineSettings, champion, champion_data, progress: Progress, parent_run_id: str):
    """Train (or take) the challenger and score it, and the champion, on the same test split; compare them."""
    import mlflow

    from train.trainer import train

    challenger_uri, challenger_run = source_of(settings.challenger, client) if settings.challenger else ("", "")
    if not challenger_run and not settings.challenger:
        result = train(settings.main_settings(), parent_run_id=parent_run_id)
        challenger_uri, challenger_run = result.model_uri, result.run_id
        progress.say("train", f"challenger run {challenger_run}, {result.metrics.get('epochs_run', 0):.0f} epoch(s)")
        if champion is not None:
            check_same_data(data_of(client, challenger_run), champion_data, champion.version)
    challenger = evaluate_step(challenger_uri, "challenger", progress)
    metric = metric_for(settings, challenger.data.task)
    if metric not in challenger.metrics:
        raise ConfigError(
            f"metric {metric!r} is not among the challenger's test metrics; use test_auroc or test_mean_auroc"
        )
    comparison = None
    if champion is not None:
        champion_evaluation = evaluate_step(
            f"models:/{settings.registered_model}/{champion.version}", "champion", progress
        )
        comparison = compare(metric, challenger, champion_evaluation, settings.seed)
        with mlflow.start_run(run_name="compare", nested=True):
            mlflow.log_dict(comparison.to_dict(), "comparison.json")
            mlflow.log_metrics(
                {f"comparison_{key}": value for key, value in comparison.to_dict().items() if isinstance(value, float)}
            )
        progress.say(
            "compare", f"{metric}: {comparison.difference:+.4f} (p = {comparison.p_value:.3g}, {comparison.method})"
        )
    decision = decide(settings, metric, challenger, comparison, str(getattr(champion, "version", "")))
    return challenger_uri, challenger_run, challenger, decision


def pipeline(settings: PipelineSettings) -> Decision:
    """Run the flow; ConfigError (exit 2) for anything refused before or during it, nothing left half-registered."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from train.model_card import log_model_card
    from train.promote import current_champion

    progress = Progress()
    if settings.build_image and (why := docker_engine_error()):
        raise ConfigError(
            f"build_image=true needs a Docker engine, but {why}; run with build_image=false for the Dockerfile only"
        )
    client = MlflowClient()
    champion = current_champion(client, settings.registered_model)
    champion_data = data_of(client, champion.run_id) if champion is not None else None
    if settings.challenger and champion is not None:
        check_same_data(data_of(client, source_of(settings.challenger, client)[1]), champion_data, champion.version)
    progress.say("start", f"champion {settings.registered_model}/{champion.version}" if champion else "no champion yet")
    with mlflow.start_run(
        run_name=None if os.environ.get("MLFLOW_RUN_ID") else f"pipeline {settings.registered_model}"
    ) as parent:
        mlflow.set_tag("medimg.kind", "pipeline")
        challenger_uri, challenger_run, evaluation, decision = challenge(
            client, settings, champion, champion_data, progress, parent.info.run_id
        )
        version = register(client, settings, challenger_uri, challenger_run, decision, evaluation)
        progress.say("decide", decision.reason)
        log_model_card(client, settings, version, evaluation, decision)
        if decision.promoted:
            write_serving_image(client, settings.registered_model, str(version.version), settings.build_image, progress)
        sentence = (
            f"{settings.registered_model} version {version.version} "
            f"{'is the new champion' if decision.promoted else 'was not promoted'}: {decision.reason}."
        )
        mlflow.set_tags(
            {
                "mlflow.note.content": sentence,
                "medimg.decision": "promoted" if decision.promoted else "not promoted",
                "medimg.registered_version": str(version.version),
            }
        )
        print(
            json.dumps(
                {
                    "decision": "promoted" if decision.promoted else "not promoted",
                    "version": str(version.version),
                    "reason": decision.reason,
                }
            ),
            flush=True,
        )
    return decision


def run(settings: PipelineSettings) -> int:
    """`python -m train pipeline`."""
    pipeline(settings)
    return 0
