"""Reads a run's wall time from MLflow (metric `wall_time_s`) or an hour count; writes its estimated dollar cost."""

from __future__ import annotations

import os
from dataclasses import dataclass

from train.cost import (
    HOURLY_PRICE_ENV,
    INSTANCE_TYPE_ENV,
    ON_DEMAND_HOURLY_USD,
    estimate_cost_usd,
    hourly_price_usd,
)

WALL_TIME_KEY = "wall_time_s"


@dataclass(frozen=True)
class CostEstimate:
    seconds: float
    hourly_price_usd: float
    instance_type: str | None
    cost_usd: float
    source: str

    def describe(self) -> str:
        machine = self.instance_type or "the given price"
        return (
            f"{self.seconds / 3600:.3f} h ({self.source}) on {machine} at ${self.hourly_price_usd:.4f}/h "
            f"= ${self.cost_usd:.2f} (on-demand estimate)"
        )


def run_wall_time_seconds(run_id: str, tracking_uri: str | None = None) -> tuple[float, str]:
    """A run's wall time and where it came from: the trainer's `wall_time_s` metric, else the run's start and end."""
    # MLflow is imported here so `python -m aws --help` stays fast.
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException as error:
        raise ValueError(
            f"Run {run_id!r} was not found at tracking URI {tracking_uri or os.environ.get('MLFLOW_TRACKING_URI', '(default)')}: "
            "check --run-id and MLFLOW_TRACKING_URI (through the SSH tunnel: http://127.0.0.1:5000)."
        ) from error
    if WALL_TIME_KEY in run.data.metrics:
        return float(run.data.metrics[WALL_TIME_KEY]), f"metric {WALL_TIME_KEY}"
    if run.data.tags.get(WALL_TIME_KEY):
        return float(run.data.tags[WALL_TIME_KEY]), f"tag {WALL_TIME_KEY}"
    if run.info.end_time and run.info.start_time:
        return (run.info.end_time - run.info.start_time) / 1000.0, "run start to end"
    raise ValueError(
        f"Run {run_id} has no {WALL_TIME_KEY} metric and has not finished; pass --hours instead of --run-id."
    )


def estimate(
    *,
    run_id: str | None = None,
    hours: float | None = None,
    instance_type: str | None = None,
    hourly_price: float | None = None,
    tracking_uri: str | None = None,
) -> CostEstimate:
    """The cost of a run (by id) or of `hours`, priced by `hourly_price` or `instance_type` (env as fallback)."""
    if (run_id is None) == (hours is None):
        raise ValueError("Pass exactly one of --run-id or --hours.")
    if hourly_price is None and os.environ.get(HOURLY_PRICE_ENV):
        hourly_price = float(os.environ[HOURLY_PRICE_ENV])
    instance_type = instance_type or os.environ.get(INSTANCE_TYPE_ENV) or None
    if hourly_price is None and instance_type is None:
        known = ", ".join(sorted(ON_DEMAND_HOURLY_USD))
        raise ValueError(f"Pass --instance-type (one of {known}) or --hourly-price.")
    if hours is not None:
        if hours < 0:
            raise ValueError(f"--hours must be >= 0, got {hours}.")
        seconds, source = hours * 3600.0, "given hours"
    else:
        seconds, source = run_wall_time_seconds(run_id, tracking_uri)
    price = float(hourly_price) if hourly_price is not None else hourly_price_usd(instance_type)
    cost = estimate_cost_usd(seconds, instance_type=instance_type, hourly_price=price)
    return CostEstimate(seconds, price, instance_type, cost, source)
