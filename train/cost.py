"""Reads a run's wall time and an EC2 instance type or hourly price; returns the run's estimated cost in US dollars."""

from __future__ import annotations

import math
import os

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
