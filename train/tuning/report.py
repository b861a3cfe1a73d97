"""The summary of a search on its parent MLflow run: reads the Optuna study; writes trial counts, plots, the trials table, the best trial and its registration."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

from serve.common import first_line
from train.tracking import names
from train.tuning.space import SearchSpace
from train.tuning.study import TRIAL_RUN_ATTR


class TuningFailed(RuntimeError):
    """The search ran but produced nothing usable (no completed trial, a model that cannot be registered)."""


def log_plots(study, metric: str) -> None:
    """Optimisation history, intermediate values and parameter importances as PNGs on the active (parent) run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        # Optuna marks its matplotlib plots experimental; the warning would repeat on every run.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if completed:
            axes = optuna_plots.plot_optimization_history(study, target_name=metric)
            mlflow.log_figure(axes.figure, "plots/optimization_history.png")
            plt.close(axes.figure)
        if any(trial.intermediate_values for trial in study.get_trials(deepcopy=False)):
            axes = optuna_plots.plot_intermediate_values(study)
            axes.set_xlabel("epoch (step 0 = first epoch)")
            axes.set_ylabel(metric)
            mlflow.log_figure(axes.figure, "plots/intermediate_values.png")
            plt.close(axes.figure)
        reason = ""
        if len(completed) < 2:
            reason = f"needs at least 2 completed trials, the study has {len(completed)}"
        else:
            try:
                importances = optuna.importance.get_param_importances(study)
                axes = optuna_plots.plot_param_importances(study, target_name=metric)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                # Too little variation (one distinct value per parameter, equal objective values) has no importances.
                reason = first_line(error, limit=None)
            else:
                mlflow.log_figure(axes.figure, "plots/param_importances.png")
                plt.close(axes.figure)
                mlflow.log_dict(
                    {name: float(value) for name, value in importances.items()}, "tuning/param_importances.json"
                )
        if reason:
            print(f"parameter importances not computed: {reason}", flush=True)
            mlflow.set_tag(names.TUNE_IMPORTANCES_TAG, f"not computed: {reason}")


def trials_table(study) -> str:
    """One CSV row per trial: number, state, value, parameters and its MLflow run id."""
    import csv
    import io

    trials = study.get_trials(deepcopy=False)
    names = sorted({name for trial in trials for name in trial.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", "epochs_reported", *names, "run_id"])
    for trial in trials:
        writer.writerow(
            [
                trial.number,
                trial.state.name,
                "" if trial.value is None else trial.value,
                len(trial.intermediate_values),
                *[trial.params.get(name, "") for name in names],
                trial.user_attrs.get(TRIAL_RUN_ATTR, ""),
            ]
        )
    return buffer.getvalue()


def summarize(study, space: SearchSpace, run_id: str) -> dict[str, Any] | None:
    """Log trial counts, plots and the best trial on the parent run; return the best trial's summary (None if none)."""
    import mlflow
    from optuna.trial import TrialState

    from train.tracking.resilience import log_new_params

    trials = study.get_trials(deepcopy=False)
    states = Counter(trial.state for trial in trials)
    mlflow.log_metrics(
        {
            "trials_complete": states[TrialState.COMPLETE],
            "trials_pruned": states[TrialState.PRUNED],
            "trials_failed": states[TrialState.FAIL],
        }
    )
    mlflow.log_text(trials_table(study), "tuning/trials.csv")
    log_plots(study, space.metric)
    if not states[TrialState.COMPLETE]:
        return None
    best = study.best_trial
    best_run_id = best.user_attrs.get(TRIAL_RUN_ATTR, "")
    model_uri = ""
    if best_run_id:
        model_uri = mlflow.get_run(best_run_id).data.tags.get(names.MODEL_URI_TAG, "")
    summary = {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "run_id": best_run_id,
        "model_uri": model_uri,
    }
    mlflow.log_metric(f"best_{space.metric}", best.value)
    log_new_params(run_id, {f"best.{name}": value for name, value in best.params.items()})
    mlflow.set_tags(
        {
            names.TUNE_BEST_TRIAL_TAG: str(best.number),
            names.TUNE_BEST_RUN_ID_TAG: best_run_id,
            names.TUNE_BEST_MODEL_URI_TAG: model_uri,
        }
    )
    mlflow.log_dict(summary, "tuning/best_trial.json")
    return summary


def register_best(summary: dict[str, Any], name: str, study_name: str) -> str:
    """Register the best trial's logged model under `name`; return the new version."""
    import mlflow

    if not summary["model_uri"]:
        raise TuningFailed(f"the best trial's run {summary['run_id']} has no medimg.model_uri tag; nothing registered")
    version = mlflow.register_model(
        summary["model_uri"], name, tags={names.REGISTERED_BY_TAG: names.REGISTERED_BY_TUNE}
    )
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version.version, names.TUNE_STUDY_TAG, study_name)
    client.set_model_version_tag(name, version.version, names.TUNE_TRIAL_TAG, str(summary["trial"]))
    mlflow.set_tag(names.TUNE_REGISTERED_TAG, f"{name}/{version.version}")
    return str(version.version)
