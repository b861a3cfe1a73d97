"""AWS on-demand prices, run and stack costs: reads an instance type, hourly price, a run's wall time or the stack's parameters; returns dollars.

The one price table of medimg, aws/prices.yaml: training logs `cost_usd` with `estimate_cost_from_environment`
(MEDIMG_INSTANCE_TYPE / MEDIMG_HOURLY_PRICE_USD), and `python -m aws up|cost` read the same table, `cost --month`
for what the whole stack costs per month. Nothing here imports boto3 or MLflow at module level, so training can
import it cheaply.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

# The price table (aws/prices.yaml): on-demand us-east-1 dollars.
PRICE_TABLE: dict[str, dict[str, float]] = yaml.safe_load(Path(__file__).with_name("prices.yaml").read_text())
# Dollars per hour by EC2 instance type.
ON_DEMAND_HOURLY_USD: dict[str, float] = PRICE_TABLE["ec2_hourly_usd"]

INSTANCE_TYPE_ENV = "MEDIMG_INSTANCE_TYPE"
HOURLY_PRICE_ENV = "MEDIMG_HOURLY_PRICE_USD"


def price_per_hour(instance_type: str | None = None, hourly_price: float | None = None) -> float | None:
    """An explicit hourly price, else the listed price of `instance_type` (ValueError if unlisted); None for neither."""
    if hourly_price is not None:
        if not math.isfinite(hourly_price) or hourly_price < 0:
            raise ValueError(f"Hourly price must be a finite number of dollars >= 0, got {hourly_price!r}.")
        return float(hourly_price)
    if instance_type and instance_type not in ON_DEMAND_HOURLY_USD:
        raise ValueError(
            f"Unknown instance type {instance_type!r}: no price is listed for it. Known types: "
            f"{', '.join(sorted(ON_DEMAND_HOURLY_USD))}. Pass an hourly price instead (--hourly-price or {HOURLY_PRICE_ENV})."
        )
    return ON_DEMAND_HOURLY_USD[instance_type] if instance_type else None


def environment_pricing(environ: dict[str, str] | None = None) -> tuple[str | None, float | None]:
    """(instance type, hourly price) from MEDIMG_INSTANCE_TYPE and MEDIMG_HOURLY_PRICE_USD; None for each unset."""
    environ = os.environ if environ is None else environ
    price_text = environ.get(HOURLY_PRICE_ENV, "").strip()
    try:
        hourly_price = float(price_text) if price_text else None
    except ValueError:
        raise ValueError(
            f"{HOURLY_PRICE_ENV}={price_text!r} is not a number; set it to dollars per hour, e.g. 1.006."
        ) from None
    return environ.get(INSTANCE_TYPE_ENV, "").strip() or None, hourly_price


def estimate_cost_usd(
    seconds: float, instance_type: str | None = None, hourly_price: float | None = None
) -> float | None:
    """Dollars for `seconds` at price_per_hour(...); None when no price is given, so callers skip an unknown cost."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"Wall time must be a finite number of seconds >= 0, got {seconds!r}.")
    price = price_per_hour(instance_type, hourly_price)
    return None if price is None else seconds / 3600.0 * price


def estimate_cost_from_environment(seconds: float, environ: dict[str, str] | None = None) -> float | None:
    """The cost of `seconds` using MEDIMG_HOURLY_PRICE_USD or MEDIMG_INSTANCE_TYPE; None when neither is set."""
    return estimate_cost_usd(seconds, *environment_pricing(environ))


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
    if instance_type is None and hourly_price is None:
        instance_type, hourly_price = environment_pricing()
    price = price_per_hour(instance_type, hourly_price)
    if price is None:
        raise ValueError(f"Pass --instance-type (one of {', '.join(sorted(ON_DEMAND_HOURLY_USD))}) or --hourly-price.")
    if hours is not None and hours < 0:
        raise ValueError(f"--hours must be >= 0, got {hours}.")
    seconds, source = (
        (hours * 3600.0, "given hours") if hours is not None else run_wall_time_seconds(run_id, tracking_uri)
    )
    return CostEstimate(seconds, price, instance_type, estimate_cost_usd(seconds, hourly_price=price), source)


@dataclass(frozen=True)
class MonthlyItem:
    name: str
    usd: float
    basis: str


@dataclass(frozen=True)
class MonthlyEstimate:
    items: tuple[MonthlyItem, ...]

    @property
    def total_usd(self) -> float:
        return sum(item.usd for item in self.items)

    def describe(self) -> str:
        hours = PRICE_TABLE["assumptions"]["hours_per_month"]
        lines = [f"The stack per month ({hours} h; on-demand us-east-1 prices of aws/prices.yaml):"]
        lines += [f"  {item.name:<30}${item.usd:>9.2f}  {item.basis}" for item in self.items]
        return "\n".join([*lines, f"  {'total':<30}${self.total_usd:>9.2f}  (estimate)"])


def _database_items(parameters: dict[str, str], storage_gib: float) -> list[MonthlyItem]:
    """The database, its storage and its enhanced monitoring; Multi-AZ doubles the first two (one standby)."""
    hours, monthly = PRICE_TABLE["assumptions"]["hours_per_month"], PRICE_TABLE["monthly_usd"]
    hourly, database_class = PRICE_TABLE["rds_postgres_hourly_usd"], parameters["DatabaseInstanceClass"]
    if database_class not in hourly:
        raise ValueError(f"No price for database class {database_class!r}: known classes: {', '.join(sorted(hourly))}.")
    multi_az = parameters["DatabaseMultiAz"] == "true"
    copies, zones = (2, "Multi-AZ: primary + standby") if multi_az else (1, "single-AZ")
    items = [
        MonthlyItem("database", copies * hourly[database_class] * hours, f"{database_class}, {zones}"),
        MonthlyItem(
            "database storage", copies * storage_gib * monthly["rds_gp3_per_gib"], f"{storage_gib:g} GiB gp3 x {copies}"
        ),
        MonthlyItem("database secret", monthly["secret"], "Secrets Manager"),
    ]
    interval = int(parameters["DatabaseMonitoringInterval"])
    if interval:
        assumed = PRICE_TABLE["assumptions"]
        gigabytes = hours * 3600 / interval * assumed["enhanced_monitoring_kib_per_sample"] * 1024 / 1e9
        kept = gigabytes * assumed["monitoring_log_retention_days"] * 12 / 365
        usd = gigabytes * monthly["cloudwatch_logs_ingest_per_gb"] + kept * monthly["cloudwatch_logs_store_per_gb"]
        items.append(
            MonthlyItem("enhanced monitoring", usd, f"every {interval} s, {gigabytes:.2f} GB into CloudWatch Logs")
        )
    return items


def monthly_estimate(
    parameters: dict[str, str], *, database_storage_gib: float, gpu_hours: float = 0.0, artifact_gb: float | None = None
) -> MonthlyEstimate:
    """What a stack with these template parameters costs per month, item by item, from the price table.

    The GPU host is billed only while it runs (`gpu_hours`); everything else for as long as the stack exists.
    """
    monthly, assumed = PRICE_TABLE["monthly_usd"], PRICE_TABLE["assumptions"]
    artifact_gb = assumed["artifact_gb"] if artifact_gb is None else artifact_gb
    if not math.isfinite(gpu_hours) or gpu_hours < 0 or not math.isfinite(artifact_gb) or artifact_gb < 0:
        raise ValueError(f"GPU hours and artifact GB must be finite and >= 0, got {gpu_hours} and {artifact_gb}.")
    instance_type = parameters["InstanceType"]
    price_text = parameters.get("HourlyPriceUsd") or ""
    hourly = price_per_hour(instance_type, float(price_text) if price_text else None)
    volume_gib = float(parameters["VolumeSizeGiB"])
    log_days = int(parameters["AccessLogRetentionDays"])
    log_gb = assumed["s3_requests_per_month"] * assumed["access_log_bytes_per_request"] / 1e9 * log_days * 12 / 365
    where = parameters.get("AccessLogBucket") or f"the stack's log bucket, {log_days} days"
    items = [
        MonthlyItem("GPU host", gpu_hours * hourly, f"{instance_type}, {gpu_hours:g} h running at ${hourly:.4f}/h"),
        MonthlyItem(
            "root disk", volume_gib * monthly["ebs_gp3_per_gib"], f"{volume_gib:g} GiB gp3, running or stopped"
        ),
        MonthlyItem("artifact bucket", artifact_gb * monthly["s3_standard_per_gb"], f"{artifact_gb:g} GB in S3"),
        MonthlyItem("access logs", log_gb * monthly["s3_standard_per_gb"], f"{log_gb:.2f} GB kept in {where}"),
    ]
    with_database = parameters["WithDatabase"] == "true"
    # As the template decides: the key encrypts a bucket the stack creates, never an adopted one.
    bucket_kms = parameters["ArtifactBucketKms"] == "true" and not parameters.get("ExistingBucket")
    if with_database or bucket_kms:
        uses = ["database secret"] * with_database + ["artifacts"] * bucket_kms
        items.append(MonthlyItem("KMS key", monthly["kms_key"], f"the stack's key, for the {' and '.join(uses)}"))
    if with_database:
        items += _database_items(parameters, database_storage_gib)
    return MonthlyEstimate(tuple(items))
