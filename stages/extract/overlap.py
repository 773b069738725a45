"""The two background threads of an extraction worker: clip decoding ahead of the models, and Zarr writes behind them.

Why threads: PyAV decoding and Zarr compression/IO spend their time in C code that releases the
GIL, so on the worker's own process they overlap the model work without another copy of the clip
crossing a process boundary. Both keep order: clips come out in shard order and rows are written
in submission order, so a store is byte-identical to one written by a sequential worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from stages.media.corpus import ClipEntry
from stages.media.decode import ClipError

log = logging.getLogger(__name__)

_END = object()  # end of the shard's clips


@dataclass
class Decoded:
    """One clip of the shard, in shard order: its decoded frames, or why it cannot be used."""

    index: int  # position in the corpus snapshot
    entry: ClipEntry
    clip: Any = None  # DecodedClip when decoding worked
    error: ClipError | None = None  # the clip's own fault (missing, corrupt, too short): goes to the ledger


@dataclass
class _Failure:
    exc: BaseException  # not the clip's fault (a bug, an unreachable bucket): the consumer re-raises it


class ClipPrefetcher:
    """Decodes clips in a background thread, at most `ahead` clips ahead of the consumer.

    Iterate it (in the consumer's thread) to get `Decoded` items in order. `decode_s` is the
    time spent decoding (overlapped), `wait_s` the time the consumer blocked waiting for a clip.
    Use as a context manager: leaving it stops the thread, also when the consumer failed.
    """

    def __init__(self, items: list[tuple[int, ClipEntry]], decode: Callable[[ClipEntry], Any], ahead: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self.decode_s = 0.0
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._run, args=(items, decode), name="clip-prefetch", daemon=True)

    def __enter__(self) -> "ClipPrefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self) -> Iterator[Decoded]:
        while True:
            t = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - t
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():  # bounded queue: give up when the consumer has left
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: list[tuple[int, ClipEntry]], decode: Callable[[ClipEntry], Any]) -> None:
        for index, entry in items:
            if self._stop.is_set():
                return
            t = time.perf_counter()
            try:
                item = Decoded(index, entry, clip=decode(entry))
            except ClipError as exc:
                item = Decoded(index, entry, error=exc)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                self._put(_Failure(exc))
                return
            self.decode_s += time.perf_counter() - t
            if not self._put(item):
                return
        self._put(_END)


class BackgroundWriter:
    """Runs write jobs one at a time, in submission order, in one background thread.

    `flush()` waits until every submitted job has run and raises the first job's error, if any;
    the caller commits only after it returns. `busy_s` is the time spent writing (overlapped).
    At most `depth` jobs wait, so a slow store throttles the producers instead of piling up rows.
    """

    def __init__(self, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._abandon = False
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._abandon = exc_type is not None  # the shard failed: its attempt will never be committed
        self._queue.put(None)
        self._thread.join()

    def submit(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(job)

    def flush(self) -> None:
        self._queue.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None and not self._abandon:
                    t = time.perf_counter()
                    job()
                    self.busy_s += time.perf_counter() - t
            except BaseException as exc:  # noqa: BLE001 - raised again in the worker's thread by flush/submit
                self._error = exc
            finally:
                self._queue.task_done()
