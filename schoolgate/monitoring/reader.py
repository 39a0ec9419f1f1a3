"""A neural reader of searches: the third opinion, after the library's terms and rules and its
learned second opinion.

Pupils keep writing risks in words no term holds and no word-level model has met ("what does a
whole pack of tablets do to you", "who will find my note"). The reader is the sentence encoder
all-MiniLM-L6-v2 (Apache-2.0), fine-tuned on the labelled searches with one output, "severity 3
or not", exported to ONNX with int8 weights, and run by onnxruntime on the grading thread
(never on mitmproxy's event loop). It reads a search as a whole, so it meets a phrasing it never
saw by what it means rather than by its words.

Like the second opinion, it never overrules the library: a search an allow-phrase or context
phrase judged ordinary stays as judged, and a search already at severity 3 is not read again.
Its threshold was set on the quantised model it ships as, from training searches it was not
fitted on (``schoolgate train-reader``): above every one of their ordinary searches that it could
raise (most of them look-alikes written to read like the risks), so that a DSL's alerts stay
rare on ordinary school work.

A language folder of the library holds it as three files: ``reader.json`` (the threshold, the
token limit, what it was trained on, and the SHA-256 of the other two), ``reader.onnx`` and
``reader_vocab.txt``. A file whose digest does not match is refused, so a truncated copy
cannot run. onnxruntime is loaded on the first search read, not when the library is.

Nothing here knows of mitmproxy, the database or the web.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schoolgate.monitoring.assessment import Assessment, library_grade, raised
from schoolgate.monitoring.opinion import (
    OpinionError,
    SecondOpinion,
    finite,
    logit,
    read_model_file,
    sigmoid,
)
from schoolgate.monitoring.wordpiece import WordPiece

log = logging.getLogger(__name__)

FORMAT = 1
FILE_NAME = "reader.json"
MODEL_NAME = "reader.onnx"
VOCABULARY_NAME = "reader_vocab.txt"  # the word pieces (schoolgate.monitoring.wordpiece)
TERM = "reader"  # what the DSL sees as the match's term
MAX_TOKENS = 40  # a search is a line: longer ones are read by their first 40 word pieces
SCORES_KEPT = 50_000  # texts whose scores are kept (bounded: a flood of searches cannot grow it)


class ReaderError(OpinionError):
    """A reader that cannot be used: what is wrong, and where (``field``, and ``line`` for a
    file that is not JSON)."""


class Reader:
    """The fine-tuned encoder of one language folder. :meth:`review` is thread-safe."""

    def __init__(
        self,
        folder: Path,
        *,
        threshold: float,
        max_tokens: int = MAX_TOKENS,
        trained_on: dict[str, int] | None = None,
        digests: dict[str, str] | None = None,
        source: str = "",
    ) -> None:
        self.folder = Path(folder)
        self.threshold = threshold  # a probability; a search above it reads as severity 3
        self.cut = logit(threshold)
        self.max_tokens = max_tokens
        self.trained_on = dict(trained_on or {})
        self.digests = dict(digests or {})
        self.source = source or str(self.folder / FILE_NAME)
        self._lock = threading.Lock()
        self._session: Any = None
        self._pieces: WordPiece | None = None
        self._scores: dict[str, float] = {}

    # The compiled library is pickled (schoolgate.monitoring.compiled): the files are named,
    # and opened again by whoever unpickles it.
    def __getstate__(self) -> dict[str, object]:
        return {
            "folder": str(self.folder),
            "threshold": self.threshold,
            "max_tokens": self.max_tokens,
            "trained_on": self.trained_on,
            "digests": self.digests,
            "source": self.source,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        folder = Path(state.pop("folder"))
        self.__init__(folder, **state)  # type: ignore[misc]

    # -- reading ----------------------------------------------------------------------------

    def logits(self, texts: Sequence[str]) -> list[float]:
        """The model's raw score of each text (above ``cut``: severity 3). Each is read alone:
        the int8 model quantises its activations by the batch's range, so a search read beside
        others would not score exactly as it does alone, on the grading thread."""
        out: list[float] = []
        for text in texts:
            value = self._scores.get(text)
            if value is None:
                value = self._run(text)
                if len(self._scores) >= SCORES_KEPT:
                    self._scores.clear()  # start again: cheaper than keeping an order
                self._scores[text] = value
            out.append(value)
        return out

    def forget(self) -> None:
        """Forget the scores of the searches read (to measure the cost of new ones)."""
        self._scores = {}

    def score(self, text: str) -> float:
        """The probability that this search is a severity-3 risk."""
        return sigmoid(self.logits([text])[0])

    def severe(self, text: str) -> bool:
        """Whether the reader reads this search as severity 3 (above its threshold)."""
        return self.logits([text])[0] > self.cut

    def _run(self, text: str) -> float:
        import numpy as np

        session, pieces = self._open()
        ids = np.array([pieces.encode(text, self.max_tokens)], dtype=np.int64)
        (scores,) = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return float(np.asarray(scores).reshape(-1)[0])

    def _open(self) -> tuple[Any, WordPiece]:
        if self._session is not None and self._pieces is not None:
            return self._session, self._pieces
        with self._lock:
            if self._session is None:
                import onnxruntime

                pieces = WordPiece.from_file(self.folder / VOCABULARY_NAME)
                options = onnxruntime.SessionOptions()
                # One core: the grading thread is one thread, and the gateway's event loop
                # and its workers need the others.
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                session = onnxruntime.InferenceSession(
                    str(self.folder / MODEL_NAME), options, providers=["CPUExecutionProvider"]
                )
                self._pieces = pieces
                self._session = session
        assert self._pieces is not None
        return self._session, self._pieces

    # -- grading ----------------------------------------------------------------------------

    def review(
        self,
        text: str,
        words: tuple[str, ...],
        found: Assessment,
        namer: SecondOpinion | None,
        *,
        alone: bool = True,
    ) -> Assessment:
        """``found`` (the library's grading of the search ``text``, of these normalised
        ``words``, with the second opinion's) with a severity-3 match of the reader's when it
        reads the search as severity 3: where the library graded it 1 or 2, or, for ``alone``,
        found nothing in it; never where an allow-phrase or context phrase judged it ordinary,
        nor where it is at 3 already. ``namer`` (the library's second opinion) picks the
        match's theme among those the library found, or among all for a search it found
        nothing in; without one, such a search is not raised (nothing would name its theme).
        A reader that cannot run leaves ``found`` as it is, and the failure is logged."""
        grade = library_grade(found) if found.matches else 0
        if grade is None or (grade == 0 and (not alone or namer is None)):
            return found
        try:
            value = self.logits([text])[0]
        except Exception:  # noqa: BLE001 - the library's grade stands; the failure is logged
            _log_failure()
            return found
        if value <= self.cut:
            return found
        score = f"the reader's score {sigmoid(value):.3f} (threshold {self.threshold:.3f})"
        among = {m.theme for m in found.active} if grade else set(namer.themes if namer else ())
        theme = namer.theme(words, among) if namer is not None else min(among)
        return raised(found, grade, theme, TERM, score, self.source)


def load_reader(path: Path) -> Reader:
    """The reader described by ``path`` (a ``reader.json``), its two files checked against
    their digests; raises :class:`ReaderError` naming what is wrong."""
    data = read_model_file(path, ReaderError)
    if not isinstance(data, dict):
        raise ReaderError("the file holds no JSON object")
    if data.get("format") != FORMAT:
        raise ReaderError(f"{data.get('format')!r}, expected {FORMAT}", "format")
    threshold = data.get("threshold")
    if not finite(threshold) or not 0 < threshold < 1:  # type: ignore[operator]
        raise ReaderError(f"{threshold!r} is not a number between 0 and 1", "threshold")
    tokens = data.get("max_tokens", MAX_TOKENS)
    if type(tokens) is not int or not 8 <= tokens <= 512:
        raise ReaderError(f"{tokens!r} is not a whole number from 8 to 512", "max_tokens")
    trained = data.get("trained_on", {})
    if not isinstance(trained, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in trained.values()
    ):
        raise ReaderError("an object of counts", "trained_on")
    digests = data.get("sha256")
    if not isinstance(digests, dict):
        raise ReaderError(f"an object of file -> digest for {MODEL_NAME} and {VOCABULARY_NAME}")
    for name in (MODEL_NAME, VOCABULARY_NAME):
        expected = digests.get(name)
        if not isinstance(expected, str):
            raise ReaderError(f"the SHA-256 of {name}", f"sha256.{name}")
        try:
            actual = file_digest(path.parent / name)
        except OSError as exc:
            raise ReaderError(f"{name} cannot be read: {exc}", f"sha256.{name}") from None
        if actual != expected.lower():
            raise ReaderError(
                f"{name} is not the file this reader was written with (SHA-256 {actual}, "
                f"expected {expected}): a damaged or partial copy",
                f"sha256.{name}",
            )
    return Reader(
        path.parent,
        threshold=float(threshold),  # type: ignore[arg-type]
        max_tokens=tokens,
        trained_on={str(k): int(v) for k, v in trained.items()},
        digests={n: str(digests[n]).lower() for n in (MODEL_NAME, VOCABULARY_NAME)},
        source=str(path),
    )


_failed_at = [-60.0]  # when a failure of the reader was last logged (monotonic)


def _log_failure() -> None:
    """Called in an ``except``: the failure with its traceback, at most once a minute."""
    now = time.monotonic()
    if now - _failed_at[0] >= 60:
        _failed_at[0] = now
        log.exception("schoolgate: the reader could not read a search; the library's grade stands")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
