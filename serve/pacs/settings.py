"""The PACS worker's command line: reads arguments and the environment, writes a checked WorkerSettings (a mistake is one line, before any model is loaded)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from serve.following import DEFAULT_INTERVAL_SECONDS, INTERVAL_ENVIRONMENT, interval_of
from serve.pacs.feeds import FEEDS

MODEL_ENVIRONMENT = "MEDIMG_MODEL_URI"
DICOMWEB_ENVIRONMENT = "MEDIMG_DICOMWEB_URL"
DEFAULT_STATE_DIR = "pacs-state"
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_MAX_BACKOFF_SECONDS = 300.0
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_LOOKBACK_DAYS = 1
DEFAULT_METRICS_HOST = "127.0.0.1"
# Orthanc serves its DICOMweb plugin under /dicom-web/ by default; its own REST API (the change feed) is the root.
ORTHANC_DICOMWEB_ROOT = "dicom-web"


@dataclass(frozen=True)
class WorkerSettings:
    model: str
    dicomweb_url: str
    feed: str
    orthanc_url: str
    state_dir: Path
    modalities: tuple[str, ...]
    once: bool
    skip_backlog: bool
    poll_seconds: float
    max_backoff_seconds: float
    timeout_seconds: float
    lookback_days: int
    metrics_port: int
    metrics_host: str
    parametric_map: bool = False
    # For models:/NAME@ALIAS: seconds between checks of the alias (serve.following); 0 or a version URI: never.
    follow_seconds: float = 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve.pacs",
        description="Watch a DICOMweb PACS, score new images with a registered model and store a TID 1500 SR and a "
        "Secondary Capture overlay into each scored study. PACS credentials come from the environment only: "
        "MEDIMG_PACS_USERNAME with MEDIMG_PACS_PASSWORD or MEDIMG_PACS_PASSWORD_FILE, or MEDIMG_PACS_TOKEN or "
        "MEDIMG_PACS_TOKEN_FILE (bearer).",
    )
    add = parser.add_argument
    add(
        "--model",
        default=os.environ.get(MODEL_ENVIRONMENT, ""),
        help=f"model URI, e.g. models:/NAME@champion (default ${MODEL_ENVIRONMENT})",
    )
    add(
        "--dicomweb",
        default=os.environ.get(DICOMWEB_ENVIRONMENT, ""),
        help=f"DICOMweb base URL, e.g. http://pacs:8042/dicom-web (default ${DICOMWEB_ENVIRONMENT})",
    )
    add(
        "--feed",
        choices=FEEDS,
        default="orthanc",
        help="where new studies come from: Orthanc's change feed (default) or QIDO-RS polling of any DICOMweb PACS",
    )
    add(
        "--orthanc-url",
        default="",
        help="Orthanc's REST API for the change feed (default: the DICOMweb URL without its /dicom-web)",
    )
    add(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"folder of the ledger; one per worker (default: ./{DEFAULT_STATE_DIR})",
    )
    add(
        "--modalities",
        default="",
        help="comma-separated Modality values to score, e.g. CR,DX (default: those the model was trained on)",
    )
    add("--once", action="store_true", help="score what is waiting, then exit (cron jobs, tests)")
    add(
        "--skip-backlog",
        action="store_true",
        help="on a first start, leave what the PACS already holds alone and score only what arrives",
    )
    add_timing_options(add)
    add(
        "--follow-seconds",
        default=os.environ.get(INTERVAL_ENVIRONMENT, ""),
        help="for models:/NAME@ALIAS (or models:/NAME): check the alias every this many seconds and score the next "
        f"study with the version it points at, without a restart; 0: never (default: ${INTERVAL_ENVIRONMENT}, else "
        f"{DEFAULT_INTERVAL_SECONDS:g}); a URI naming a version is never followed",
    )
    add(
        "--parametric-map",
        action="store_true",
        help="also store the Grad-CAM heatmap as a DICOM Parametric Map, referenced from the SR (default: off)",
    )
    add("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (default: off)")
    add("--metrics-host", default=DEFAULT_METRICS_HOST, help=f"interface of /metrics (default {DEFAULT_METRICS_HOST})")
    add("--log-level", default="info", choices=["error", "warning", "info", "debug"])
    add(
        "--hash-uid",
        default="",
        metavar="UID",
        help="print the hash that stands for UID in this state folder's ledger and log, then exit",
    )
    return parser


def add_timing_options(add) -> None:
    """The options of time: between looks at the feed, between tries while the PACS is away, one request, the QIDO look-back."""
    add(
        "--poll-seconds",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        help=f"seconds between looks at the feed (default {DEFAULT_POLL_SECONDS:g})",
    )
    add(
        "--max-backoff-seconds",
        type=float,
        default=DEFAULT_MAX_BACKOFF_SECONDS,
        help=f"longest wait between tries while the PACS is unreachable (default {DEFAULT_MAX_BACKOFF_SECONDS:g})",
    )
    add(
        "--timeout-seconds",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"HTTP timeout of one PACS request (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    add(
        "--lookback-days",
        type=int,
        default=DEFAULT_LOOKBACK_DAYS,
        help=f"QIDO feed: studies dated this many days ago or later (default {DEFAULT_LOOKBACK_DAYS})",
    )


def check_url(url: str, option: str) -> str:
    """An http(s) URL without credentials in it; ValueError otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{option} must be an http:// or https:// URL, e.g. http://pacs:8042/dicom-web")
    if parts.username or parts.password:
        raise ValueError(
            f"{option} must not hold credentials (command lines are visible to other users); "
            "set MEDIMG_PACS_USERNAME and MEDIMG_PACS_PASSWORD_FILE instead"
        )
    return url.strip().rstrip("/")


def orthanc_root(dicomweb_url: str) -> str:
    """Orthanc's REST root from its DICOMweb URL (http://host:8042/dicom-web -> http://host:8042); '' when unknown."""
    head, _, last = dicomweb_url.rstrip("/").rpartition("/")
    return head if last == ORTHANC_DICOMWEB_ROOT else ""


def settings_from(arguments: argparse.Namespace, environment: Mapping[str, str]) -> WorkerSettings:
    """Checked settings; ValueError with one line naming the mistake."""
    from serve.model_uri import check_model_uri
    from serve.pacs.scoring import parse_modalities

    if not arguments.model:
        raise ValueError(f"no model: pass --model models:/NAME@champion or set {MODEL_ENVIRONMENT}")
    check_model_uri(arguments.model)
    if not arguments.dicomweb:
        raise ValueError(f"no PACS: pass --dicomweb http://HOST:8042/dicom-web or set {DICOMWEB_ENVIRONMENT}")
    dicomweb = check_url(arguments.dicomweb, "--dicomweb")
    orthanc = ""
    if arguments.feed == "orthanc":
        orthanc = check_url(arguments.orthanc_url, "--orthanc-url") if arguments.orthanc_url else orthanc_root(dicomweb)
        if not orthanc:
            raise ValueError(
                "--feed orthanc needs Orthanc's REST URL: pass --orthanc-url, or --feed qido for another DICOMweb PACS"
            )
    for option, value in (
        ("--poll-seconds", arguments.poll_seconds),
        ("--max-backoff-seconds", arguments.max_backoff_seconds),
        ("--timeout-seconds", arguments.timeout_seconds),
    ):
        if not value > 0:
            raise ValueError(f"{option} must be positive, got {value:g}")
    if arguments.lookback_days < 0:
        raise ValueError(f"--lookback-days must be 0 or more, got {arguments.lookback_days}")
    if not 0 <= arguments.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be a TCP port (1-65535; 0 = off), got {arguments.metrics_port}")
    return WorkerSettings(
        model=arguments.model.strip(),
        dicomweb_url=dicomweb,
        feed=arguments.feed,
        orthanc_url=orthanc,
        state_dir=Path(arguments.state_dir),
        modalities=parse_modalities(arguments.modalities) if arguments.modalities.strip() else (),
        once=arguments.once,
        skip_backlog=arguments.skip_backlog,
        poll_seconds=arguments.poll_seconds,
        max_backoff_seconds=max(arguments.max_backoff_seconds, arguments.poll_seconds),
        timeout_seconds=arguments.timeout_seconds,
        lookback_days=arguments.lookback_days,
        metrics_port=arguments.metrics_port,
        metrics_host=arguments.metrics_host,
        parametric_map=arguments.parametric_map,
        follow_seconds=interval_of(arguments.follow_seconds),
    )
