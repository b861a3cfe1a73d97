"""Prometheus metrics of the clinician app: reads answers and request timings, writes the text exposition for GET /metrics.

Requests by route and status, latency, rejected uploads by reason, each class's predicted probability,
the classes each answer predicted, model time with and without Grad-CAM, the served model (with the
label `reference`: `available`, or `none` for models logged without a monitoring reference) and
process uptime, registry webhooks by outcome; the app adds its drift monitor's gauges (serve.monitoring) and, when
it follows an alias, the served and target versions, swaps and refusals (serve.following).
monitoring/grafana/dashboards/medimg-app.json charts these names and monitoring/rules/ alerts on them.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from serve.contract import EXPLAIN_PARAM, PREDICTED_COLUMN
from serve.webhooks import RECEIVER_PATH

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = tuple(round(0.1 * step, 1) for step in range(1, 11))
ROUTES = ("/", "/predict", "/info", "/health", "/metrics", "/invocations", "/ping", "/version", RECEIVER_PATH)


class AppMetrics:
    """The app's Prometheus registry: requests, latency, rejections, scores, the model and uptime."""

    def __init__(self, model: dict[str, str], classes: list[str]):
        """model: the labels of medimg_model_info (name, version, aliases, uri, reference); classes: the probability
        columns. The app registers its drift monitor's collector and, when it follows an alias, the follower's series
        (serve.following.FollowMetrics) on `registry`."""
        # The *_created series only repeat the start time for every label set.
        disable_created_metrics()
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR):
            registry.register(collector)
        self.requests = Counter(
            "medimg_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "medimg_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "medimg_rejected_inputs", "Uploads answered 4xx, by reason", ["reason"], registry=registry
        )
        self.scores = Histogram(
            "medimg_predicted_probability",
            "Predicted probability of each class (drift)",
            ["class"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.findings = Counter("medimg_findings", "Answers that predicted the class", ["class"], registry=registry)
        self.prediction = Histogram(
            "medimg_prediction_duration_seconds",
            "Model time per image, by explain",
            [EXPLAIN_PARAM],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # The model that answers now: a follower of an alias calls .info() again after each swap.
        self.model = Info("medimg_model", "The served model", registry=registry)
        self.model.info(model)
        self.webhooks = Counter(
            "medimg_registry_webhooks",
            "Registry webhook deliveries, by outcome (accepted, ignored, or why one was refused with a 401)",
            ["outcome"],
            registry=registry,
        )
        started = time.monotonic()
        Gauge("medimg_process_uptime_seconds", "Seconds since the app started", registry=registry).set_function(
            lambda: time.monotonic() - started
        )
        # Series at zero from the start, so dashboards show every class before its first answer.
        for name in classes:
            self.scores.labels(name)
            self.findings.labels(name)

    def observe_answer(self, answer: dict, explain: bool, seconds: float) -> None:
        self.prediction.labels(str(explain).lower()).observe(seconds)
        for finding in answer["findings"]:
            if finding["probability"] is not None:
                self.scores.labels(finding["name"]).observe(finding["probability"])
            # The model's own decision: a class at its operating point, or a multi-class answer's top class.
            if finding["name"] in answer[PREDICTED_COLUMN]:
                self.findings.labels(finding["name"]).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(path: str) -> str:
    """A bounded label for the request path: the app's routes, /static, or `other`."""
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"
