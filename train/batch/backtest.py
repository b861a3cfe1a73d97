"""Back-tests a batch job on labelled input with evaluate's own code: finds the labels in the input, loads and checks the split, then logs evaluate's metrics, intervals, tables and plots on the batch run.

Labels are found (dataset empty) by `train.data.labels_in`: a folder written by `prepare` names its dataset,
otherwise each dataset's spec says whether the folder holds its labels for the model's classes. The split is chosen, loaded, predicted and scored
exactly as `python -m train evaluate --dataset <found> --data-dir <input> --split <split>` would
(train.release.evaluate: load_evaluation_data, score_split, log_evaluation_scores,
log_evaluation_pictures), so the batch run's `<split>_*` metrics equal that evaluation's.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.model_uri import ResolvedModel
from train.settings import BatchSettings, EvaluateSettings
from train.tracking import names


@dataclass
class BackTest:
    """A labelled split ready to score: evaluate's settings, the checked data and the loaded classifier."""

    settings: EvaluateSettings
    loaded: object
    classifier: object

    def score_and_log(self) -> dict[str, float]:
        """Predict and score the split as evaluate does; log its metrics, tables and plots on the active run."""
        import mlflow

        from train.release.evaluate import log_evaluation_pictures, log_evaluation_scores, score_split
        from train.tracking.lineage import DataIdentity

        evaluation = score_split(self.settings, self.loaded, self.classifier)
        mlflow.set_tags(
            {
                **DataIdentity.of(evaluation.data).tags(),
                names.SPLIT_TAG: self.settings.split,
                names.BACKTEST_TAG: "true",
            }
        )
        if self.settings.allow_different_data:
            mlflow.set_tag(names.ALLOW_DIFFERENT_DATA_TAG, "true")
        log_evaluation_scores(evaluation, self.settings.split)
        log_evaluation_pictures(self.settings, evaluation)
        return evaluation.metrics


def plan_back_test(settings: BatchSettings, source: ResolvedModel, classifier, client) -> BackTest | None:
    """The back-test of a batch job, its data loaded and checked now (before any image is scored); None without labels."""
    from train.release.evaluate import load_evaluation_data

    if not settings.back_test_requested:
        return None
    from train.data import labels_in

    dataset = settings.dataset or labels_in(settings.input, list(classifier.config.class_names))
    if not dataset:
        return None
    evaluate_settings = EvaluateSettings.from_dict(
        {
            "model_uri": settings.model_uri,
            "dataset": dataset,
            "data_dir": settings.input,
            "split": settings.split,
            "batch_size": settings.batch_size,
            "allow_different_data": settings.allow_different_data,
        }
    )
    print(f"back-testing on the {settings.split} split of the labelled input ({dataset})", flush=True)
    return BackTest(evaluate_settings, load_evaluation_data(evaluate_settings, source, classifier, client), classifier)
