"""AWS on-demand prices and run costs: reads an instance type, hourly price or a run's wall time; returns dollars.

The one price table of medimg: training logs `cost_usd` with `estimate_cost_from_environment`
(MEDIMG_INSTANCE_TYPE / MEDIMG_HOURLY_PRICE_USD), and `python -m aws up|cost` read the same table.
Nothing here imports boto3 or MLflow at module level, so training can import it cheaply.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

# On-demand Linux prices in US dollars per hour, region us-east-1, taken from
# https://aws.amazon.com/ec2/pricing/on-demand/ as listed in 2025 (P4d and P5 after
# AWS's June 2025 price reduction). Prices differ by region and change over time,
# so MEDIMG_HOURLY_PRICE_USD or `--hourly-price` overrides this table.
ON_DEMAND_HOURLY_USD: dict[str, float] = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.12xlarge": 4.6016,
    "g6e.xlarge": 1.861,
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p3.16xlarge": 24.48,
    "p4d.24xlarge": 21.96,
    "p5.48xlarge": 55.04,
}

INSTANCE_TYPE_ENV = "MEDIMG_INSTANCE_TYPE"
HOURLY_PRICE_ENV = "MEDIMG_HOURLY_PRICE_USD"


def hourly_price_usd(instance_type: str) -> float:
    """The on-demand us-east-1 price per hour of `instance_type`; ValueError naming the known types if unlisted."""
    try:
        return ON_DEMAND_HOURLY_USD[instance_type]
    except KeyError:
        known = ", ".join(sorted(ON_DEMAND_HOURLY_USD))
        raise ValueError(
            f"Unknown instance type {instance_type!r}: no price is listed for it. "
            f"Known types: {known}. Pass an hourly price instead (--hourly-price or {HOURLY_PRICE_ENV})."
        ) from None


def estimate_cost_usd(
    seconds: float, instance_type: str | None = None, hourly_price: float | None = None
) -> float | None:
    """Dollars for `seconds` of wall time at `hourly_price`, or at the listed price of `instance_type`.

    An explicit hourly price wins over the instance type. Returns None when neither is
    given, so callers can skip logging a cost they cannot know.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"Wall time must be a finite number of seconds >= 0, got {seconds!r}.")
    if hourly_price is not None:
        if not math.isfinite(hourly_price) or hourly_price < 0:
            raise ValueError(f"Hourly price must be a finite number of dollars >= 0, got {hourly_price!r}.")
        price = float(hourly_price)
    elif instance_type:
        price = hourly_price_usd(instance_type)
    else:
        return None
    return seconds / 3600.0 * price


def estimate_cost_from_environment(seconds: float, environ: dict[str, str] | None = None) -> float | None:
    """The cost of `seconds` using MEDIMG_HOURLY_PRICE_USD or MEDIMG_INSTANCE_TYPE; None when neither is set."""
    environ = os.environ if environ is None else environ
    price_text = environ.get(HOURLY_PRICE_ENV, "").strip()
    instance_type = environ.get(INSTANCE_TYPE_ENV, "").strip() or None
    hourly_price = None
    if price_text:
        try:
            hourly_price = float(price_text)
        except ValueError:
            raise ValueError(
                f"{HOURLY_PRICE_ENV}={price_text!r} is not a number; set it to dollars per hour, e.g. 1.006."
            ) from None
    return estimate_cost_usd(seconds, instance_type=instance_type, hourly_price=hourly_price)


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
