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
6. record: the challenger's registered version carries the decision as tags, its run the model card (a challenger
   that is already a version of `registered_model`, e.g. registered by hand from a notebook, is decided in place:
   no new version; versions the pipeline registers carry the creation tag medimg.registered_by=pipeline);
7. serve: the serving image's Dockerfile and requirements for the champion (and, with build_image=true,
   the image itself, built by serve.image).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.common import CommandFailed, ConfigError, first_line
from train.settings import EvaluateSettings, PipelineSettings
from train.tracking import names
from train.tracking.experiments import medimg_run
from train.tracking.lineage import DataIdentity, check_same_data

SANITY_FLOOR = 0.5


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
    """Why no Docker engine can build an image here ('' when one answers), asked through the client serve.image uses."""
    from serve.image import ImageOptions

    docker = ImageOptions.from_environment().docker
    if shutil.which(docker) is None:
        return f"the docker command ({docker}) is not installed"
    result = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"no Docker engine answers ({first_line(result.stderr) or 'docker info failed'})"
    return ""


def source_of(reference: str, client) -> tuple[str, str]:
    """(model URI, training run id) of a challenger given as a run id or a model URI."""
    from mlflow.exceptions import MlflowException

    from train.release.evaluate import resolve_model

    if "/" not in reference and ":" not in reference:
        try:
            run = client.get_run(reference)
        except MlflowException:
            raise ConfigError(
                f"challenger {reference!r} is neither a run id of this tracking store nor a model URI"
            ) from None
        model_uri = run.data.tags.get(names.MODEL_URI_TAG, "")
        if not model_uri:
            raise ConfigError(f"run {reference} logged no medimg model (no {names.MODEL_URI_TAG} tag); train one first")
        return model_uri, reference
    resolved = resolve_model(reference, client)
    return resolved.load_uri, resolved.run_id


def registered_challenger(client, settings: PipelineSettings, champion):
    """The version of `registered_model` the challenger URI names (a version registered by hand, e.g. from a notebook),
    to be evaluated and decided in place; None when the challenger is a run or a model outside that registered model.

    Refused in one line: a version with no source run, or whose source run carries no medimg data tags (no frozen
    test split is known for it), and the champion itself.
    """
    from mlflow.exceptions import MlflowException

    from train.release.evaluate import resolve_model

    if not settings.challenger.startswith("models:/"):
        return None
    resolved = resolve_model(settings.challenger, client)
    if resolved.name != settings.registered_model:
        return None
    where = f"challenger {resolved.label}"
    if champion is not None and str(champion.version) == resolved.version:
        raise ConfigError(f"{where} is the champion already: name another version or a run as the challenger")
    if not resolved.run_id:
        raise ConfigError(
            f"{where} has no source run, so its training data and frozen test split are unknown: register a model "
            "that a medimg training run logged (python -m train main), then run the pipeline on it"
        )
    try:
        tags = client.get_run(resolved.run_id).data.tags
    except MlflowException:
        raise ConfigError(f"{where}: its source run {resolved.run_id} is not in this tracking store") from None
    missing = [tag for tag in (names.DATASET_TAG, names.TASK_TAG, names.DATASET_DIGEST_TAG) if not tags.get(tag)]
    if missing:
        raise ConfigError(
            f"{where}: its source run {resolved.run_id} has no medimg data tags ({', '.join(missing)}), so no frozen "
            "test split is known for it; train it with python -m train main (or mlflow run . -e main)"
        )
    return client.get_model_version(resolved.name, resolved.version)


def data_of(client, run_id: str) -> DataIdentity:
    return DataIdentity.from_tags(client.get_run(run_id).data.tags) if run_id else DataIdentity()


def check_challenger_data(challenger: DataIdentity, champion: DataIdentity, version: str) -> None:
    """Refuse a challenger trained on other data than the champion: their test splits would not be the same images."""
    check_same_data(
        challenger,
        champion,
        what=f"the challenger was trained on {challenger.describe()}, the champion (version {version}) on "
        f"{champion.describe()}",
        fix="a paired comparison needs one frozen test split: train the challenger on the champion's data settings",
    )


def metric_for(settings: PipelineSettings, task: str) -> str:
    return settings.metric or ("test_mean_auroc" if task == "multilabel" else "test_auroc")


def evaluate_step(model_uri: str, role: str, progress: Progress):
    """Score a model on its training run's test split, logged as a nested evaluation run named by its role."""
    from train.release.evaluate import log_evaluation_pictures, record_evaluation, score_model

    settings = EvaluateSettings.from_dict({"model_uri": model_uri, "split": "test"})
    evaluation = score_model(settings)
    label = f"evaluate {role}" + (f" (version {evaluation.source.version})" if evaluation.source.version else "")
    with medimg_run(label, nested=True) as run:
        evaluation.run_id = run.info.run_id
        record_evaluation(run.info.run_id, settings, evaluation)
        log_evaluation_pictures(settings, evaluation)
    progress.say(
        f"evaluate {role}", f"{model_uri} on {evaluation.data.name}/test, {len(evaluation.probabilities)} images"
    )
    return evaluation


def compare(metric: str, challenger, champion, seed: int):
    """The paired comparison of two evaluations of the same images on `metric`."""
    from train.scoring.comparison import delong_test, paired_bootstrap
    from train.scoring.metrics import metric_safe, scored_classes

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
    client,
    settings: PipelineSettings,
    challenger_uri: str,
    challenger_run: str,
    decision: Decision,
    evaluation,
    existing=None,
):
    """Register the challenger (or find the version that holds it) and tag the decision on it; aliases move later.

    `existing`: the version the challenger already is (registered by hand), decided in place, never registered again.
    Returns (version, created): created is True when this call made the version.
    """
    from mlflow.exceptions import MlflowException

    from train.release.promote import Candidate, find_or_register

    name = settings.registered_model
    if existing is not None:
        version, created = existing, False
    else:
        candidate = Candidate(challenger_run, challenger_uri, decision.challenger_value, 0)
        try:
            version, created = find_or_register(client, name, candidate, names.REGISTERED_BY_PIPELINE)
        except MlflowException as error:
            raise CommandFailed(f"cannot register {challenger_uri} as {name!r}: {first_line(error.message)}") from None
    for key, value in decision_tags(decision, evaluation).items():
        client.set_model_version_tag(name, version.version, key, value)
    return version, created


def move_aliases(client, name: str, version: str, promoted: bool) -> None:
    """The last step: champion (the old one becomes previous) when promoted, else challenger."""
    from train.release.promote import move_champion

    if promoted:
        move_champion(client, name, version)
    else:
        client.set_registered_model_alias(name, names.CHALLENGER, version)


def decision_tags(decision: Decision, evaluation) -> dict[str, str]:
    """What the registry shows next to the version: decision, reason, metrics with intervals, p-value, data."""
    low, high = decision.challenger_ci
    tags = {
        names.DECISION_TAG: "promoted" if decision.promoted else "not promoted",
        names.DECISION_REASON_TAG: decision.reason[:5000],
        names.DECISION_METRIC_TAG: decision.metric,
        names.metric_tag(decision.metric): f"{decision.challenger_value:.4f} (95% CI {low:.4f}-{high:.4f})",
        names.DATASET_TAG: evaluation.data.name,
        names.DATASET_DIGEST_TAG: evaluation.data.digest,
        names.SOURCE_RUN_ID_TAG: evaluation.source.run_id,
    }
    if decision.comparison is not None:
        comparison = decision.comparison
        tags.update(
            {
                names.COMPARED_CHAMPION_VERSION_TAG: decision.champion_version,
                names.CHAMPION_METRIC_TAG: f"{comparison.champion:.4f}",
                names.DIFFERENCE_TAG: f"{comparison.difference:+.4f} (95% CI {comparison.ci_low:+.4f} to {comparison.ci_high:+.4f})",
                names.P_VALUE_TAG: f"{comparison.p_value:.4g}",
                names.COMPARISON_METHOD_TAG: comparison.method,
            }
        )
    return tags


def write_serving_image(name: str, version: str, build: bool, progress: Progress) -> None:
    """Log the serving image's Dockerfile and requirements (serve.image); with `build`, build the image too.

    CommandFailed (exit 1, not a settings mistake) when the image's requirements are stale or the build fails.
    """
    import mlflow

    from serve.image import DOCKERFILE, IMAGE_REQUIREMENTS, ImageBuildError, build_image, write_requirements

    uri = f"models:/{name}/{version}"
    if write_requirements(check=True):
        raise CommandFailed(
            f"{IMAGE_REQUIREMENTS.name} of the serving image differs from requirements.txt; "
            "run `python -m serve.image --requirements` and commit it"
        )
    for path in (DOCKERFILE, IMAGE_REQUIREMENTS):
        mlflow.log_artifact(str(path), names.SERVING_DOCKERFILE_ARTIFACT)
    progress.say(
        "serve",
        f"Dockerfile logged as {names.SERVING_DOCKERFILE_ARTIFACT}/; image: python -m serve.image --model {uri}",
    )
    if build:
        try:
            built = build_image(uri)
        except (ValueError, ImageBuildError) as error:
            raise CommandFailed(f"serving image of {uri}: {first_line(str(error))}") from None
        mlflow.set_tags({names.SERVING_IMAGE_TAG: built.tag, names.SERVING_IMAGE_ID_TAG: built.image_id})
        progress.say("serve", f"image {built.tag} built ({built.image_id})")


def challenge(client, settings: PipelineSettings, champion, champion_data, progress: Progress, parent_run_id: str):
    """Train (or take) the challenger and score it, and the champion, on the same test split; compare them."""
    import mlflow

    from train.job.trainer import train

    challenger_uri, challenger_run = source_of(settings.challenger, client) if settings.challenger else ("", "")
    if not challenger_run and not settings.challenger:
        main_settings = settings.main_settings()
        if not main_settings.run_name:
            main_settings = main_settings.replace(run_name="train challenger")
        result = train(main_settings, parent_run_id=parent_run_id)
        challenger_uri, challenger_run = result.model_uri, result.run_id
        progress.say("train", f"challenger run {challenger_run}, {result.metrics.get('epochs_run', 0):.0f} epoch(s)")
        if champion is not None:
            check_challenger_data(data_of(client, challenger_run), champion_data, champion.version)
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
        with medimg_run("compare", nested=True):
            mlflow.log_dict(comparison.to_dict(), names.COMPARISON_ARTIFACT)
            mlflow.log_metrics(
                {f"comparison_{key}": value for key, value in comparison.to_dict().items() if isinstance(value, float)}
            )
        progress.say(
            "compare", f"{metric}: {comparison.difference:+.4f} (p = {comparison.p_value:.3g}, {comparison.method})"
        )
    decision = decide(settings, metric, challenger, comparison, str(getattr(champion, "version", "")))
    return challenger_uri, challenger_run, challenger, decision


def pipeline(settings: PipelineSettings) -> Decision:
    """Run the flow; ConfigError (exit 2) for what is refused, CommandFailed (exit 1) for a step that fails.

    Aliases move only after every other step succeeded; a version this run registered is deleted again when a
    later step fails, so nothing is left half-done in the registry.
    """
    from mlflow.tracking import MlflowClient

    from train.release.promote import current_champion

    progress = Progress()
    if settings.build_image and (why := docker_engine_error()):
        raise ConfigError(
            f"build_image=true needs a Docker engine, but {why}; run with build_image=false for the Dockerfile only"
        )
    client = MlflowClient()
    champion = current_champion(client, settings.registered_model)
    champion_data = data_of(client, champion.run_id) if champion is not None else None
    in_place = registered_challenger(client, settings, champion) if settings.challenger else None
    if settings.challenger and champion is not None:
        check_challenger_data(
            data_of(client, source_of(settings.challenger, client)[1]), champion_data, champion.version
        )
    progress.say("start", f"champion {settings.registered_model}/{champion.version}" if champion else "no champion yet")
    with medimg_run(f"pipeline {settings.registered_model}") as parent:
        import mlflow

        mlflow.set_tag(names.KIND_TAG, names.KIND_PIPELINE)
        challenger_uri, challenger_run, evaluation, decision = challenge(
            client, settings, champion, champion_data, progress, parent.info.run_id
        )
        version, created = register(
            client, settings, challenger_uri, challenger_run, decision, evaluation, existing=in_place
        )
        progress.say("decide", decision.reason)
        try:
            release(client, settings, version, evaluation, decision, progress)
        except BaseException:
            undo(client, settings.registered_model, version, created, decision_tags(decision, evaluation), progress)
            raise
        record_decision(settings, version, decision)
    return decision


def undo(client, name: str, version, created: bool, tags: dict[str, str], progress: Progress) -> None:
    """After a failed step: delete the version this run registered; on a version that existed before (one registered
    by hand, decided in place), remove the decision tags this run set, so that no decision shows without its aliases."""
    from mlflow.exceptions import MlflowException

    if created:
        client.delete_model_version(name, version.version)
        progress.say("undo", f"version {version.version} deleted again: a step after registering it failed")
        return
    for key in tags:
        with contextlib.suppress(MlflowException):
            client.delete_model_version_tag(name, version.version, key)
    progress.say("undo", f"decision tags removed from version {version.version}: a step after deciding failed")


def release(client, settings: PipelineSettings, version, evaluation, decision: Decision, progress: Progress) -> None:
    """Model card, serving Dockerfile (and image) for a promoted version, then the aliases: in that order."""
    from train.release.model_card import log_model_card

    log_model_card(client, settings, version, evaluation, decision)
    if decision.promoted:
        write_serving_image(settings.registered_model, str(version.version), settings.build_image, progress)
    move_aliases(client, settings.registered_model, str(version.version), decision.promoted)


def record_decision(settings: PipelineSettings, version, decision: Decision) -> None:
    """The decision on the parent run (a note for the UI, tags for searches) and one JSON line on stdout."""
    import mlflow

    outcome = "promoted" if decision.promoted else "not promoted"
    sentence = (
        f"{settings.registered_model} version {version.version} "
        f"{'is the new champion' if decision.promoted else 'was not promoted'}: {decision.reason}."
    )
    mlflow.set_tags(
        {names.NOTE_TAG: sentence, names.DECISION_TAG: outcome, names.REGISTERED_VERSION_TAG: str(version.version)}
    )
    print(json.dumps({"decision": outcome, "version": str(version.version), "reason": decision.reason}), flush=True)


def run(settings: PipelineSettings) -> int:
    """`python -m train pipeline`."""
    pipeline(settings)
    return 0
