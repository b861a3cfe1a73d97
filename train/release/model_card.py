"""Writes the model card of a registered version: reads its training run, its test evaluation and the pipeline's decision; writes model_card.md on the version's run."""

from __future__ import annotations

import math
import shlex

from train.data import get_dataset_spec
from train.settings import MainSettings, PipelineSettings, unquote
from train.tracking import names


def number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def with_interval(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "n/a"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return f"{number(value)} ({number(low)}-{number(high)})" if low is not None and high is not None else number(value)


def class_rows(classes: dict, concepts: dict | None = None) -> list[str]:
    """Markdown rows of the per-class table: the finding's coded concept (as the SR and the app's answer name it),
    AUROC and the rates at the operating point, each with its interval."""
    concepts = concepts or {}
    rows = [
        "| finding | concept | positives / negatives | AUROC (95% CI) | threshold | sensitivity (95% CI) | specificity (95% CI) | PPV | NPV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(statistic: str, index: int) -> str:
        values = classes.get(statistic)
        if values is None:
            return "n/a"
        low, high = classes[f"{statistic}_ci_low"][index], classes[f"{statistic}_ci_high"][index]
        return f"{number(values[index])} ({number(low)}-{number(high)})"

    for index, name in enumerate(classes["class"]):
        threshold = number(classes["threshold"][index]) if "threshold" in classes else "most probable class"
        concept = concepts[name].label() if name in concepts else "n/a"
        rows.append(
            f"| {name} | {concept} | {classes['positives'][index]} / {classes['negatives'][index]} | {cell('auroc', index)} | "
            f"{threshold} | {cell('sensitivity', index)} | {cell('specificity', index)} | {cell('ppv', index)} | "
            f"{cell('npv', index)} |"
        )
    return rows


def output_concepts_of(config) -> dict:
    """Each output's coded concept (serve.concepts), by output name; empty without the model's configuration."""
    from serve.concepts import concepts_of

    return dict(zip(config.output_columns, concepts_of(config), strict=True)) if config is not None else {}


def subgroup_rows(subgroups: dict) -> list[str]:
    if not subgroups:
        return ["No subgroup metadata for this dataset."]
    rows = ["| attribute | subgroup | images | patients | mean AUROC (95% CI) |", "|---|---|---|---|---|"]
    for index, attribute in enumerate(subgroups["attribute"]):
        auroc = f"{number(subgroups['mean_auroc'][index])} ({number(subgroups['ci_low'][index])}-{number(subgroups['ci_high'][index])})"
        rows.append(
            f"| {attribute} | {subgroups['subgroup'][index]} | {subgroups['examples'][index]} | "
            f"{subgroups['patients'][index]} | {auroc} |"
        )
    return rows


def reproduce_lines(params: dict, tags: dict, name: str, version: str) -> list[str]:
    """The commands that retrain, re-evaluate and re-challenge this version."""
    arguments = " ".join(
        f"-P {key}={shlex.quote(str(unquote(params[key])))}"
        for key in MainSettings.model_fields
        if key in params and key != "register_as" and str(unquote(params[key])) != ""
    )
    commit = tags.get(names.GIT_COMMIT_TAG, "")
    lines = ["```bash"]
    if commit:
        lines.append(f"git checkout {commit}")
    lines += [
        f"mlflow run . --env-manager local {arguments}",
        f"mlflow run . --env-manager local -e evaluate -P model_uri=models:/{name}/{version}",
        f"mlflow run . --env-manager local -e pipeline -P registered_model={name} -P challenger=models:/{name}/{version}",
        "```",
    ]
    return lines


def epochs_trained(run) -> str:
    """'N epoch(s) (limit M)': the epochs the run trained (its epochs_run metric) against its epoch limit (a param)."""
    limit = unquote(run.data.params.get("epochs", "?"))
    trained = run.data.metrics.get("epochs_run")
    if trained is None:
        return f"at most {limit} epochs"
    return f"{number(trained, 0)} epoch(s) (limit {limit})"


def render(settings: PipelineSettings, version, run, evaluation, decision) -> str:
    """The model card in Markdown."""
    name, metrics, data = settings.registered_model, evaluation.metrics, evaluation.data
    params, tags = run.data.params, run.data.tags
    config = evaluation.classifier_config
    calibration = (config.calibration if config is not None else None) or {}
    operating_point = config.operating_point if config is not None else params.get("operating_point", "?")
    groups = data.splits["test"].groups
    patients = f"; {len(set(groups))} test patients" if groups is not None else ""
    counts = {split: params.get(f"{split}_examples", "?") for split in ("train", "val", "test")}
    lines = [
        f"# Model card: {name} version {version.version}",
        "",
        f"**Decision:** {'promoted to @champion' if decision.promoted else 'not promoted'}. {decision.reason}.",
        "",
        "## Intended use",
        "",
        f"Decision support for reading {data.name} images: a second reader that flags the findings "
        f"{', '.join(data.class_names if data.task != 'binary' else data.class_names[1:])} with a calibrated "
        "probability and a yes/no at a stated operating point. Not for autonomous diagnosis, not for images "
        "unlike the training data (other modalities, views, populations), not validated prospectively.",
        "",
        "## Model",
        "",
        f"{params.get('model', '?')} at {params.get('image_size', '?')} px, weights {params.get('weights', '?')}, "
        f"trained from run `{run.info.run_id}` for {epochs_trained(run)}, "
        f"best epoch {number(run.data.metrics.get('best_epoch'), 0)}).",
        "",
        "## Data and splits",
        "",
        f"Dataset `{data.name}` ({data.task}), source `{data.source}`, content digest `{data.digest}`. "
        f"Images: train {counts['train']}, validation {counts['val']}, test {counts['test']}{patients}.",
        "",
        "## Test metrics (95% bootstrap intervals)",
        "",
        "Each finding's concept is the code the served model answers with and the PACS worker writes into its SR "
        "(SCT: SNOMED CT; 99MEDIMG: medimg's private code where no standard concept is stored).",
        "",
        f"Headline: {decision.metric} = {with_interval(metrics, decision.metric)}; classes scored: "
        f"{number(metrics.get('test_n_classes_scored'), 0)} of {number(metrics.get('test_n_classes'), 0)}.",
        "",
        *class_rows(evaluation.scores.classes, output_concepts_of(config)),
        "",
        "## Calibration and operating point",
        "",
        f"Probabilities are calibrated on the validation split ({calibration.get('method', 'see classifier.json')}): "
        f"test ECE {number(metrics.get('test_ece_uncalibrated'))} before, {number(metrics.get('test_ece'))} after; "
        f"Brier {number(metrics.get('test_brier_uncalibrated'))} before, {number(metrics.get('test_brier'))} after. "
        f"Thresholds (operating point `{operating_point}`) are in the table above.",
        "",
        "## Subgroups",
        "",
        *subgroup_rows(evaluation.scores.subgroups),
        "",
        "## Limitations",
        "",
        f"- {get_dataset_spec(data.name).limitations}",
        "- Intervals cover sampling error of this test split only, not a shift to another hospital or scanner.",
        "- Probabilities hold at the training data's prevalence; a population where a finding is rarer lowers the PPV.",
        "",
        "## Reproduce",
        "",
        *reproduce_lines(params, tags, name, version.version),
        "",
    ]
    return "\n".join(lines)


def log_model_card(client, settings: PipelineSettings, version, evaluation, decision) -> str:
    """Write model_card.md on the version's training run; return its text."""
    run = client.get_run(version.run_id)
    text = render(settings, version, run, evaluation, decision)
    client.log_text(version.run_id, text, names.MODEL_CARD_ARTIFACT)
    return text
