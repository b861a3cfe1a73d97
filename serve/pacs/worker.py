"""The PACS worker's loop: reads new studies from a feed and their images over DICOMweb, writes an SR and a Secondary Capture per scored image into the same study, the ledger, metrics and a log of counts, reasons and hashed UIDs.

A study is looked at when the feed names it: QIDO-RS lists its instances, those already in the ledger or
not eligible are passed over, each other one is retrieved (WADO-RS), scored through the model's pyfunc and
its two results stored (STOW-RS); the ledger records the instance only after the PACS accepted them. An
instance that cannot be scored is recorded with its reason and never tried again. When the PACS cannot be
reached the worker waits (doubling the wait up to a limit) and tries the same batch again, saying so in
the log once when the PACS goes away and once when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from serve.contract import EXPLAINED_CLASS_COLUMN, FRAME_COLUMN, OVERLAY_COLUMN, read_answer
from serve.monitoring import DriftMonitor
from serve.pacs.dicomweb import InstanceGone, InstanceRow, InstanceUnreadable, Pacs, PacsUnavailable, StoreRejected
from serve.pacs.ledger import FAILED, REPORTED, SKIPPED, Ledger
from serve.pacs.metrics import WorkerMetrics
from serve.pacs.reports import (
    SR_TEMPLATE,
    ResultUids,
    Scored,
    burned_in_picture,
    findings_of,
    overlay_lines,
    secondary_capture,
    structured_report,
)
from serve.pacs.scoring import BadInstance, Eligibility, Scorer

log = logging.getLogger("serve.pacs")
# The one eligibility decision that can change between runs (--modalities): reconsidered, counted once.
RECONSIDERED = "modality"


class NotEligible(Exception):
    """The retrieved header rules the instance out (attributes QIDO-RS did not list)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Worker:
    """Scores what a feed names until stopped (or, with `once`, until the feed has nothing more)."""

    def __init__(
        self,
        pacs: Pacs,
        feed,
        ledger: Ledger,
        scorer: Scorer,
        eligibility: Eligibility,
        metrics: WorkerMetrics,
        *,
        poll_seconds: float,
        max_backoff_seconds: float,
        stop: threading.Event | None = None,
        parametric_map: bool = False,
        follower=None,
    ):
        """follower: a serve.following.Follower of the scorer's alias; each study is scored by its current scorer."""
        self.pacs, self.feed, self.ledger = pacs, feed, ledger
        self.asked_for_parametric_map, self.follower = parametric_map, follower
        self.eligibility, self.metrics = eligibility, metrics
        self.poll_seconds, self.max_backoff_seconds = poll_seconds, max_backoff_seconds
        self.stop = stop or threading.Event()
        self.down_since: float | None = None
        self.scored, self.studies = 0, 0
        self.skipped: Counter[str] = Counter()
        self.scorer, self._monitor_collector = None, None
        self.use(scorer)

    def use(self, scorer: Scorer) -> None:
        """Score with `scorer` from now on: its drift monitor (against its validation reference) on /metrics."""
        self.scorer = scorer
        # Whether a Parametric Map of the heatmap is stored beside the Secondary Capture (--parametric-map).
        self.parametric_map = self.asked_for_parametric_map and scorer.explains
        if self._monitor_collector is not None:
            self.metrics.registry.unregister(self._monitor_collector)
        self.monitor = DriftMonitor.for_config(scorer.config)
        self._monitor_collector = self.monitor.register(
            self.metrics.registry,
            model_name=scorer.resolved.name or scorer.resolved.uri,
            model_version=scorer.resolved.version,
        )

    def run(self, *, once: bool = False) -> int:
        """Work until stopped; 0, or 1 when `once` finds the PACS unreachable (nothing is lost: the next run resumes)."""
        delay = self.poll_seconds
        while not self.stop.is_set():
            try:
                batch = self.feed.next_batch()
                self.came_back()
                more = self.work(batch)
            except PacsUnavailable as error:
                self.metrics.errors.labels(error.operation).inc()
                self.metrics.up.set(0)
                if once:
                    log.error("PACS unreachable (%s); the next run starts where this one stopped", error)
                    return 1
                self.went_away(error)
                self.stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_seconds)
                continue
            delay = self.poll_seconds
            if not more:
                if once:
                    break
                self.stop.wait(self.poll_seconds)
        self.summary()
        return 0

    def went_away(self, error: PacsUnavailable) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "PACS unreachable (%s); retrying with back-off up to %g s, studies wait in the PACS meanwhile",
                error,
                self.max_backoff_seconds,
            )

    def came_back(self) -> None:
        self.metrics.up.set(1)
        if self.down_since is not None:
            log.info("PACS reachable again after %.0f s; scoring resumes", time.monotonic() - self.down_since)
            self.down_since = None

    def work(self, batch) -> bool:
        """Look at the studies of one feed batch; True when the feed has more waiting."""
        for study_uid, arrived in batch.studies.items():
            self.process_study(study_uid, arrived)
            if self.stop.is_set():
                # Stopped between images: the batch stays unfinished and the next start looks at it again.
                return False
        self.feed.finished(batch)
        return batch.more

    def process_study(self, study_uid: str, arrived: float) -> None:
        # One version scores the whole study: the follower's swap takes effect between studies.
        if self.follower is not None and self.follower.current is not self.scorer:
            self.use(self.follower.current)
        outcomes: Counter[str] = Counter()
        for row in self.pacs.instances(study_uid):
            if self.stop.is_set():
                break
            outcome = self.process_instance(row, arrived)
            if outcome:
                outcomes[outcome] += 1
        scored = outcomes.pop(REPORTED, 0)
        if scored:
            self.studies += 1
            self.metrics.studies.inc()
        # The worker's own results come back through the feed after every store: counted, not logged.
        outcomes.pop("own_output", None)
        if scored or outcomes:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(outcomes.items()))
            log.info(
                "study %s: %d image(s) scored, %d skipped%s",
                self.ledger.hash(study_uid),
                scored,
                sum(outcomes.values()),
                f" ({reasons})" if reasons else "",
            )

    def process_instance(self, row: InstanceRow, arrived: float) -> str | None:
        """REPORTED, the reason it was skipped, or None when the ledger had already decided about it."""
        known = self.ledger.outcome(row.sop_uid)
        if known is not None and (known[0] != SKIPPED or known[1] != RECONSIDERED):
            return None
        reason = self.eligibility.reason(row)
        if reason:
            if known == (SKIPPED, reason):
                return None
            return self.skip(row, SKIPPED, reason)
        try:
            self.report(row, arrived)
        except NotEligible as not_eligible:
            return None if known == (SKIPPED, not_eligible.reason) else self.skip(row, SKIPPED, not_eligible.reason)
        except BadInstance as bad:
            return self.skip(row, FAILED, bad.reason, bad.detail)
        except InstanceGone:
            return self.skip(row, FAILED, "gone")
        except InstanceUnreadable as unreadable:
            return self.skip(row, FAILED, "unreadable", unreadable.reason)
        except StoreRejected as rejected:
            return self.skip(row, FAILED, "store_rejected", rejected.reason)
        return REPORTED

    def skip(self, row: InstanceRow, outcome: str, reason: str, detail: str = "") -> str:
        self.ledger.record(row.sop_uid, outcome, reason)
        self.metrics.skipped.labels(reason).inc()
        self.skipped[reason] += 1
        if outcome == FAILED:
            extra = f": {detail}" if detail else ""
            log.warning("instance %s not scored (%s%s)", self.ledger.hash(row.sop_uid), reason, extra)
        return reason

    def report(self, row: InstanceRow, arrived: float) -> None:
        """Retrieve, score and store the SR and Secondary Capture of one image; ledger and metrics after the store."""
        data, dataset = self.pacs.retrieve(row)
        reason = self.eligibility.header_reason(dataset)
        if reason:
            raise NotEligible(reason)
        answer = self.scorer.score(data)
        self.answered(answer, data)
        results = self.results(answer, data, dataset, row)
        self.pacs.store(results, row.study_uid)
        self.ledger.record(row.sop_uid, REPORTED, model=self.scorer.label, template=SR_TEMPLATE)
        self.scored += 1
        self.metrics.delay.observe(max(0.0, time.time() - arrived))
        self.metrics.instances.inc()

    def answered(self, answer: dict, image: bytes) -> None:
        """The one place every answer row passes with the bytes of its image (before its results are stored).

        The drift monitor takes the answer and the image's statistics; the model-input picture of the explained
        answer gives the mean intensity, so the image is not decoded again.
        """
        outputs = self.scorer.outputs
        for name in read_answer(answer, outputs).predicted:
            if name in outputs:
                self.metrics.findings.labels(name).inc()
        self.monitor.observe(answer, self.monitor.image_statistics(image, answer_row=answer))

    def results(self, answer: dict, data: bytes, dataset, row: InstanceRow) -> list:
        """The SR, the Secondary Capture (and with --parametric-map the heatmap's Parametric Map) of one answer;
        BadInstance when the source cannot carry them."""
        from serve.preprocess import decode_array, dicom_frames

        algorithm = self.scorer.algorithm
        frame = int(answer.get(FRAME_COLUMN) or 0)
        explained = str(answer.get(EXPLAINED_CLASS_COLUMN) or "")
        uids = ResultUids.of(row.study_uid, row.sop_uid, algorithm)
        try:
            findings = findings_of(answer, self.scorer.outputs, self.scorer.config.task)
            scored = Scored(findings, self.scorer.concepts, frame if dicom_frames(dataset) > 1 else None, explained)
            heatmap = self.heatmap(answer, dataset, uids)
            report = structured_report(dataset, scored, algorithm, uids, heatmap)
            pixels = burned_in_picture(
                decode_array(data, frame), answer.get(OVERLAY_COLUMN), overlay_lines(findings, algorithm, explained)
            )
            capture = secondary_capture(dataset, pixels, algorithm, uids, explained)
        except Exception as error:  # Whatever an odd source or answer makes highdicom or the decoder raise.
            # One odd image (attributes that break their value representation, say) must not stop the worker.
            raise BadInstance("unwritable_report", type(error).__name__) from None
        return [report, capture] if heatmap is None else [report, capture, heatmap]

    def heatmap(self, answer: dict, dataset, uids: ResultUids):
        """The Parametric Map of the answer's heatmap, or None (not asked for, no heatmap, a multi-frame image)."""
        overlay = answer.get(OVERLAY_COLUMN)
        if not self.parametric_map or not overlay:
            return None
        from serve.pacs.heatmap import parametric_map

        explained = str(answer.get(EXPLAINED_CLASS_COLUMN) or "")
        return parametric_map(dataset, str(overlay), explained, self.scorer.algorithm, uids)

    def summary(self) -> None:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.skipped.items()))
        log.info(
            "stopped: %d image(s) in %d study(ies) scored, %d skipped%s",
            self.scored,
            self.studies,
            sum(self.skipped.values()),
            f" ({reasons})" if reasons else "",
        )
