"""Where new studies come from: reads Orthanc's change feed or polls QIDO-RS, writes feed positions to the ledger once a batch is done.

A feed hands out batches of studies to look at (StudyInstanceUID -> when its newest image arrived, in
epoch seconds) and is told when the worker finished a batch; only then does it move its position on, so a
worker that stops or crashes mid-batch looks at the same studies again after a restart (the ledger keeps
it from scoring an image twice).

- `OrthancFeed`: Orthanc's `/changes` (NewInstance and StableStudy events, paged with `since`); an image
  is looked at as soon as it is stored, without waiting for its study to become stable.
- `QidoFeed`: any DICOMweb PACS: studies dated `lookback_days` ago or later, looked at when their number of
  instances changed since the worker last finished them.
"""

from __future__ import annotations

import calendar
import datetime
import time
from dataclasses import dataclass, field

from serve.pacs.dicomweb import CHANGES_PAGE, Pacs
from serve.pacs.ledger import Ledger

ORTHANC_POSITION = "orthanc_changes_since"
# Orthanc stamps changes in UTC, to the second.
ORTHANC_DATE_FORMAT = "%Y%m%dT%H%M%S"
FEEDS = ("orthanc", "qido")


@dataclass
class Batch:
    """Studies to look at (UID -> arrival time) and the feed position after them; `more`: the feed has more now."""

    studies: dict[str, float] = field(default_factory=dict)
    position: str = ""
    more: bool = False
    instance_counts: dict[str, int] = field(default_factory=dict)


def orthanc_arrival(date: str, fallback: float) -> float:
    """Epoch seconds of an Orthanc change date (UTC, YYYYMMDDTHHMMSS); `fallback` when it does not parse."""
    try:
        return float(calendar.timegm(time.strptime(str(date), ORTHANC_DATE_FORMAT)))
    except ValueError:
        return fallback


class OrthancFeed:
    """Orthanc's change feed: every NewInstance and StableStudy since the last finished batch."""

    name = "orthanc"

    def __init__(self, pacs: Pacs, ledger: Ledger, *, skip_backlog: bool = False):
        self.pacs, self.ledger, self.skip_backlog = pacs, ledger, skip_backlog

    def describe(self) -> str:
        position = self.ledger.meta(ORTHANC_POSITION)
        start = f"change {position}" if position is not None else "the start" if not self.skip_backlog else "now"
        return f"Orthanc change feed from {start}"

    def _since(self) -> int:
        position = self.ledger.meta(ORTHANC_POSITION)
        if position is None and self.skip_backlog:
            # A first start that leaves the backlog alone begins after the newest change.
            last = int(self.pacs.orthanc("/changes", last="").get("Last", 0))
            self.ledger.set_meta(ORTHANC_POSITION, str(last))
            return last
        return int(position or 0)

    def next_batch(self) -> Batch:
        page = self.pacs.orthanc("/changes", since=self._since(), limit=CHANGES_PAGE)
        batch = Batch(position=str(page.get("Last", "")), more=not page.get("Done", True))
        now = time.time()
        studies_by_id: dict[str, str] = {}
        for change in page.get("Changes", []):
            kind, resource = change.get("ChangeType"), change.get("ID", "")
            if kind == "NewInstance":
                study = self.pacs.orthanc(f"/instances/{resource}/study")
            elif kind == "StableStudy":
                study = studies_by_id.get(resource) or self.pacs.orthanc(f"/studies/{resource}")
            else:
                continue
            # An instance or study deleted since the change answers nothing: nothing to score.
            uid = str((study.get("MainDicomTags") or {}).get("StudyInstanceUID", "")).strip()
            if not uid:
                continue
            studies_by_id[study.get("ID", "")] = study
            arrived = orthanc_arrival(change.get("Date", ""), now)
            # A study's images are timed from its earliest change in the batch: a delay is never under-reported.
            batch.studies[uid] = min(batch.studies.get(uid, now), arrived)
        return batch

    def finished(self, batch: Batch) -> None:
        if batch.position:
            self.ledger.set_meta(ORTHANC_POSITION, batch.position)


class QidoFeed:
    """QIDO-RS polling: studies dated in the last `lookback_days` whose number of instances changed."""

    name = "qido"

    def __init__(self, pacs: Pacs, ledger: Ledger, *, lookback_days: int, skip_backlog: bool = False):
        self.pacs, self.ledger = pacs, ledger
        self.lookback_days, self.skip_backlog = lookback_days, skip_backlog

    def describe(self) -> str:
        return f"QIDO-RS polling of studies dated from {self.lookback_days} day(s) ago"

    def next_batch(self) -> Batch:
        since = (datetime.date.today() - datetime.timedelta(days=self.lookback_days)).strftime("%Y%m%d")
        now = time.time()
        batch = Batch()
        first_start = self.skip_backlog and self.ledger.meta("qido_started") is None
        for uid, count in self.pacs.studies_since(since):
            if first_start:
                self.ledger.set_study_instances(uid, count)
            elif self.ledger.study_instances(uid) != count:
                batch.studies[uid] = now
                batch.instance_counts[uid] = count
        if first_start:
            self.ledger.set_meta("qido_started", str(now))
        return batch

    def finished(self, batch: Batch) -> None:
        for uid, count in batch.instance_counts.items():
            self.ledger.set_study_instances(uid, count)
