"""`python -m serve.pacs`: reads the command line, the environment (PACS credentials) and a registered model, runs the PACS worker; writes only its ledger, its log (stderr) and /metrics.

    python -m serve.pacs --model models:/NAME@champion --dicomweb http://pacs:8042/dicom-web [--once]

Exit codes: 0 done (or stopped by SIGTERM/SIGINT), 1 the PACS was unreachable in a `--once` run (nothing is
lost; the next run resumes), 2 a settings mistake (one line, before any model is loaded).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys

from serve.common import first_line

WORKER_LOGGER = "serve.pacs"


class PrivacyFilter(logging.Filter):
    """Keeps the worker's own records (counts, reasons, hashed UIDs) and withholds the text of every other library's.

    dicomweb-client, urllib3, pydicom and highdicom name URLs, UIDs or attribute values in their messages; the
    log keeps only where such a record came from and its level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != WORKER_LOGGER and not record.name.startswith(f"{WORKER_LOGGER}."):
            record.msg, record.args = "%s: %s withheld (it may quote patient data)", (record.name, record.levelname)
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(PrivacyFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger(WORKER_LOGGER).setLevel(level.upper())
    # Python warnings (pydicom's about odd values, for one) go through the filter too.
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> int:
    from serve.pacs.ledger import Ledger, LedgerBusy
    from serve.pacs.settings import build_parser, settings_from

    arguments = build_parser().parse_args(argv)
    configure_logging(arguments.log_level)
    try:
        if arguments.hash_uid:
            with Ledger(arguments.state_dir) as ledger:
                print(ledger.hash(arguments.hash_uid))
            return 0
        settings = settings_from(arguments, os.environ)
        from serve.pacs.dicomweb import session_from_environment

        session = session_from_environment(os.environ)
        ledger = Ledger(settings.state_dir)
    except (ValueError, LedgerBusy, OSError, sqlite3.Error) as error:
        print(f"error: {first_line(error, limit=None)}", file=sys.stderr)
        return 2
    with ledger:
        return run(settings, session, ledger)


def run(settings, session, ledger) -> int:
    """Load the model, connect the feed and work until stopped; 2 when the model cannot be loaded."""
    import threading

    from serve.contract import MODEL_ID_COLUMN
    from serve.pacs.dicomweb import Pacs
    from serve.pacs.feeds import OrthancFeed, QidoFeed
    from serve.pacs.metrics import WorkerMetrics
    from serve.pacs.scoring import Eligibility, Scorer
    from serve.pacs.worker import Worker

    log = logging.getLogger(WORKER_LOGGER)
    try:
        scorer = Scorer.load(settings.model)
    except ValueError as error:
        print(f"error: {first_line(error, limit=None)}", file=sys.stderr)
        return 2
    eligibility = Eligibility(settings.modalities or tuple(scorer.config.modalities))
    if not eligibility.modalities:
        log.warning(
            "%s names no modality it was trained on: every image modality is scored; pass --modalities", scorer.label
        )
    pacs = Pacs(settings.dicomweb_url, session, timeout=settings.timeout_seconds, orthanc_url=settings.orthanc_url)
    if settings.feed == "orthanc":
        feed = OrthancFeed(pacs, ledger, skip_backlog=settings.skip_backlog)
    else:
        feed = QidoFeed(pacs, ledger, lookback_days=settings.lookback_days, skip_backlog=settings.skip_backlog)
    resolved = scorer.resolved
    metrics = WorkerMetrics(
        {"name": resolved.name, "version": resolved.version, MODEL_ID_COLUMN: resolved.model_id, "uri": resolved.uri},
        scorer.outputs,
    )
    if settings.metrics_port:
        try:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        except OSError as error:
            print(f"error: cannot serve /metrics on port {settings.metrics_port}: {error.strerror}", file=sys.stderr)
            return 2
    follower = worker_follower(settings, scorer, metrics)
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    worker = Worker(
        pacs,
        feed,
        ledger,
        scorer,
        eligibility,
        metrics,
        poll_seconds=settings.poll_seconds,
        max_backoff_seconds=settings.max_backoff_seconds,
        stop=stop,
        parametric_map=settings.parametric_map,
        follower=follower,
    )
    counts = ledger.counts()
    log.info(
        "scoring %s (%s) with %s; modalities %s; ledger %s holds %d reported, %d failed, %d skipped",
        settings.dicomweb_url,
        feed.describe(),
        scorer.label,
        eligibility.describe(),
        ledger.path,
        counts.get("reported", 0),
        counts.get("failed", 0),
        counts.get("skipped", 0),
    )
    try:
        return worker.run(once=settings.once)
    except Exception as error:
        from serve.loaded import fault_origin

        # A fault of the worker itself: its type and place, never its message (it could quote an attribute value).
        log.critical(
            "worker stopped by %s at %s; a restart resumes from the ledger", type(error).__name__, fault_origin(error)
        )
        return 1


def worker_follower(settings, scorer, metrics):
    """The serve.following.Follower of the worker's alias (started), or None for a URI that names one version or
    --follow-seconds 0. After a swap, /metrics's medimg_pacs_model names the new version."""
    from serve.contract import MODEL_ID_COLUMN
    from serve.following import Follower, FollowMetrics, followed_alias
    from serve.pacs.scoring import load_candidate

    alias = followed_alias(settings.model)
    if alias is None or not settings.follow_seconds:
        return None

    def swapped(_old, new) -> None:
        resolved = new.resolved
        labels = {"name": resolved.name, "version": resolved.version, MODEL_ID_COLUMN: resolved.model_id}
        metrics.model.info({**labels, "uri": resolved.uri})

    return Follower(
        settings.model,
        scorer,
        load=load_candidate,
        resolved_of=lambda current: current.resolved,
        interval=settings.follow_seconds,
        metrics=FollowMetrics(metrics.registry, *alias),
        on_swap=swapped,
        logger=logging.getLogger(WORKER_LOGGER),
    ).start()


if __name__ == "__main__":
    sys.exit(main())
