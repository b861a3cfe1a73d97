"""The local batch engine: reads images from a source, decodes them in parallel threads and scores them in batches with the model's own pyfunc; writes rows to a PartWriter.

Every image goes through the loaded `serve.pyfunc.ImageClassifier`, the object `mlflow models serve`
runs: its header checks (`check_image`: format, pixel limit, frame), its decoder (`decode`, which is
serve.preprocess, the training decoder) and its batched prediction with calibration and thresholds
(`predictions_frame`), so a file gets the numbers the REST answer gives for it. A file the model refuses
is a row whose `error` is `<reason>: <message>` with the pyfunc's reason (`not_an_image`, `undecodable_image`,
...), or `unreadable_file` when it cannot be read; it never stops the job.

Memory stays flat: at most `2 x batch_size` images are read ahead (a bounded window of futures), and
rows leave through the PartWriter in complete parts.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serve.contract import (
    DECODER_FAILURE_REASON,
    ERROR_COLUMN,
    EXPLAINED_CLASS_COLUMN,
    FRAME_COLUMN,
    HEATMAP_COLUMN,
    MODEL_ID_COLUMN,
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    OVERLAY_COLUMN,
    PATH_COLUMN,
    SHA256_COLUMN,
    UNREADABLE_FILE_REASON,
)
from train.data.archive import Item

# mallopt's parameter number for the most heap arenas (glibc's malloc.h) and the count batch jobs keep.
M_ARENA_MAX = -8
HEAP_ARENAS = 2
# Called once per scored batch with the answer rows (the served answer's columns) and the bytes of their images.
# Called with each batch's answer frame, the images' bytes and their model inputs (HxWx3 float32, 0-255).
AnswerObserver = Callable[["object", list[bytes], list[np.ndarray]], None]


@dataclass
class Counts:
    """What a job did: images scored, failed by reason, skipped because the output had them, listed twice."""

    scored: int = 0
    failed: Counter = field(default_factory=Counter)
    resumed: int = 0
    duplicates: int = 0

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


@dataclass
class Prepared:
    """One image read, hashed, checked and decoded (tensor), or the reason it cannot be scored."""

    path: str
    sha256: str = ""
    frame: int | None = None
    tensor: np.ndarray | None = None
    data: bytes | None = None
    reason: str = ""
    message: str = ""

    @property
    def error(self) -> str:
        return f"{self.reason}: {self.message}" if self.reason else ""


def limit_heap_arenas(count: int = HEAP_ARENAS) -> bool:
    """Let glibc's malloc keep at most `count` heap arenas; True when it took the setting.

    glibc gives threads that allocate at once their own arenas (up to 8 per core), and memory freed in
    one of them is rarely handed back: with decoding threads, the process grew by about half from 2,000
    to 20,000 files (bench/batch.py). Two arenas keep it flat at no measurable cost in speed; the same as
    MALLOC_ARENA_MAX=2, set before the decoding threads start. Other C libraries ignore it.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name) if name else None
        return bool(library and library.mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False


def model_identity(name: str, version: str, model_id: str) -> dict[str, str]:
    return {MODEL_NAME_COLUMN: name, MODEL_VERSION_COLUMN: version, MODEL_ID_COLUMN: model_id}


class LocalEngine:
    """Scores items with a loaded ImageClassifier: `workers` decoding threads, `batch_size` images per prediction."""

    def __init__(
        self,
        classifier,
        identity: dict[str, str],
        *,
        batch_size: int,
        workers: int,
        frame: int,
        heatmaps: Path | None = None,
        on_answers: AnswerObserver | None = None,
    ):
        self.classifier, self.identity = classifier, identity
        self.batch_size, self.workers, self.frame = batch_size, workers, frame
        self.heatmaps, self.on_answers = heatmaps, on_answers
        self.pending: list[Prepared] = []
        self.counts = Counts()

    def prepare(self, item: Item) -> Prepared:
        """Read, hash, check and decode one image exactly as the pyfunc does for one request row."""
        from serve.common import first_line
        from serve.pyfunc import InvalidImageInput, check_bytes

        prepared = Prepared(item.path)
        try:
            data = item.read()
        except OSError as error:
            prepared.reason, prepared.message = UNREADABLE_FILE_REASON, f"cannot be read ({error.strerror or error})"
            return prepared
        prepared.sha256 = hashlib.sha256(data).hexdigest()
        try:
            prepared.frame = check_bytes(data, 0, self.classifier.config.max_pixels, self.frame)
            prepared.tensor = self.classifier.decode(data, prepared.frame, 0)
        except InvalidImageInput as error:
            prepared.frame = None
            prepared.reason, prepared.message = error.reason, error.message.removeprefix("row 0: ")
            return prepared
        except (ValueError, ArithmeticError, LookupError, AttributeError, TypeError, RuntimeError, OSError) as error:
            # A decoder bug on one odd file is that file's row, not the end of a job over a whole archive.
            prepared.frame = None
            prepared.reason, prepared.message = DECODER_FAILURE_REASON, f"{type(error).__name__}: {first_line(error)}"
            return prepared
        prepared.data = data
        return prepared

    def run(self, items: Iterable[Item], done: set[str], write: Callable[[Sequence[dict]], None], progress) -> Counts:
        """Score every item whose path is not in `done`, in source order; `write` receives rows in that order."""
        window: deque = deque()
        seen = set(done)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medimg-batch") as pool:
            for item in items:
                if item.path in seen:
                    if item.path in done:
                        self.counts.resumed += 1
                    else:
                        self.counts.duplicates += 1
                    continue
                seen.add(item.path)
                window.append(pool.submit(self.prepare, item))
                # A bounded window: images are read and decoded ahead of the model, never the whole archive.
                if len(window) >= 2 * self.batch_size:
                    self.take(window.popleft().result(), write, progress)
            while window:
                self.take(window.popleft().result(), write, progress)
        self.flush(write, progress)
        return self.counts

    def take(self, prepared: Prepared, write, progress) -> None:
        self.pending.append(prepared)
        if sum(entry.tensor is not None for entry in self.pending) >= self.batch_size:
            self.flush(write, progress)

    def flush(self, write, progress) -> None:
        """Score the decoded images among the pending ones and write every pending row, in source order."""
        if not self.pending:
            return
        scored = [entry for entry in self.pending if entry.tensor is not None]
        answers = self.answer(scored) if scored else []
        rows, next_answer = [], iter(answers)
        for entry in self.pending:
            if entry.tensor is None:
                self.counts.failed[entry.reason] += 1
                rows.append(
                    {
                        PATH_COLUMN: entry.path,
                        SHA256_COLUMN: entry.sha256,
                        FRAME_COLUMN: None,
                        ERROR_COLUMN: entry.error,
                    }
                    | self.identity
                )
                continue
            answer = next(next_answer)
            rows.append(
                {PATH_COLUMN: entry.path, SHA256_COLUMN: entry.sha256, ERROR_COLUMN: ""} | answer | self.identity
            )
        self.counts.scored += len(scored)
        write(rows)
        progress.update(len(self.pending))
        self.pending = []

    def answer(self, scored: list[Prepared]) -> list[dict]:
        """The served answer of each decoded image (probabilities, predicted, thresholds, frame), as dicts.

        This is the one place where every answer row passes together with the bytes of its image.
        """
        from serve.pyfunc import predictions_frame

        frames = [int(entry.frame) for entry in scored]
        encoded = [entry.data for entry in scored]
        if self.heatmaps is not None:
            from models.gradcam import TOP_CLASS

            probabilities, explanations = self.classifier.explain(encoded, frames, TOP_CLASS)
            answers = predictions_frame(probabilities, self.classifier.config, None, frames)
            answers[EXPLAINED_CLASS_COLUMN] = explanations[EXPLAINED_CLASS_COLUMN].tolist()
            answers[HEATMAP_COLUMN] = self.write_heatmaps(scored, explanations[OVERLAY_COLUMN].tolist())
        else:
            from models import batch_predictor

            batch = np.stack([entry.tensor for entry in scored])
            # One traced graph for every batch size: the last, shorter batch does not trace again.
            raw = np.asarray(batch_predictor(self.classifier.model)(batch), dtype=np.float64)
            answers = predictions_frame(self.classifier.calibrated(raw), self.classifier.config, None, frames)
        if self.on_answers is not None:
            self.on_answers(answers, encoded, [entry.tensor for entry in scored])
        return answers.to_dict("records")

    def write_heatmaps(self, scored: list[Prepared], overlays: list[str]) -> list[str]:
        """Write each image's Grad-CAM heatmap PNG as <sha256>-<frame>.png; return the file names."""
        names = []
        for entry, overlay in zip(scored, overlays, strict=True):
            name = f"{entry.sha256}-{entry.frame}.png"
            (self.heatmaps / name).write_bytes(base64.b64decode(overlay))
            names.append(name)
        return names
