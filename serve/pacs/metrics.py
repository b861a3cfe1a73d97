"""Prometheus metrics of the PACS worker: reads what the worker counts, writes the text exposition that `--metrics-port` serves at /metrics.

Names follow the Prometheus conventions (unit suffixes, `_total` counters; `promtool check metrics` clean):
studies and images scored, instances skipped by reason, seconds from an image's arrival at the PACS to its
report being stored, failed PACS requests by operation, whether the PACS answers, findings decided
present, and the model the worker scores with.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

# From a second (the worker polls every few seconds) to an hour (a PACS outage or a long backlog).
DELAY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
# Skip reasons decided before any retrieval; model rejections add theirs (serve.pyfunc's `reason`).
KNOWN_SKIP_REASONS = ("modality", "not_an_image", "own_output", "gone", "unreadable", "store_rejected")
OPERATIONS = ("changes", "search", "retrieve", "store")


class WorkerMetrics:
    """The worker's Prometheus registry."""

    def __init__(self, model: dict[str, str], classes: list[str]):
        disable_created_metrics()
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.studies = Counter(
            "medimg_pacs_studies_scored",
            "Studies in which at least one image was scored and reported",
            registry=registry,
        )
        self.instances = Counter(
            "medimg_pacs_instances_scored",
            "Images scored whose SR and Secondary Capture were stored in their study",
            registry=registry,
        )
        self.skipped = Counter(
            "medimg_pacs_instances_skipped", "Instances not scored, by reason", ["reason"], registry=registry
        )
        self.delay = Histogram(
            "medimg_pacs_arrival_to_report_seconds",
            "Seconds from an image's arrival at the PACS to its report being stored",
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "medimg_pacs_errors", "Failed PACS requests, by operation", ["operation"], registry=registry
        )
        self.up = Gauge("medimg_pacs_up", "1 while the PACS answers, 0 while it is unreachable", registry=registry)
        self.findings = Counter(
            "medimg_pacs_findings", "Scored images with the finding decided present", ["class"], registry=registry
        )
        self.model = Info("medimg_pacs_model", "The model the worker scores with", registry=registry)
        self.model.info(model)
        self.up.set(1)
        # Series at zero from the start, so dashboards and alerts see every label before its first event.
        for reason in KNOWN_SKIP_REASONS:
            self.skipped.labels(reason)
        for operation in OPERATIONS:
            self.errors.labels(operation)
        for name in classes:
            self.findings.labels(name)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, port: int, host: str) -> None:
        """GET /metrics on host:port from a daemon thread."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)
