"""Progress for the CLI: a tqdm bar on a terminal, one plain line every N seconds anywhere else.

A run whose stderr is a file or a CI log still says how far it is, how fast it goes, when it should
end and how many items failed so far (the run's total, not the last shard's).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TextIO

class Progress:
    def __init__(self, desc: str, unit: str, total: int | None = None, stream: TextIO | None = None,
                 every_s: float | None = None, clock: Callable[[], float] = time.monotonic, initial: int = 0,
                 failures: bool = True):
        self.desc, self.unit, self.total = desc, unit, total
        self.failures = failures  # whether items can fail (clips can; training steps cannot)
        self.stream = stream or sys.stderr
        # seconds between plain lines (no terminal); SAM2VIDEOX_PROGRESS_EVERY overrides the default 30
        self.every_s = float(os.environ.get("SAM2VIDEOX_PROGRESS_EVERY", "30")) if every_s is None else every_s
        self.clock = clock
        self.done, self.failed, self.initial = initial, 0, initial
        self.printed: tuple[int, int] | None = None  # (done, failed) of the last plain line
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = clock()
        self.bar = None
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=self.stream)

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.reset(total=total)

    def update(self, n: int, failed: int = 0, **postfix: Any) -> None:
        self.done += n
        self.failed += failed
        self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(**({"failed": self.failed} if self.failures else {}), **postfix)
        elif self.clock() - self.last_line >= self.every_s or self.done == self.total:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.printed != (self.done, self.failed):  # the final state, unless the last line showed it
            self._line()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = (self.done - self.initial) / elapsed
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            where = f"{self.done}/{self.total} {self.unit}s ({self.done / self.total:.0%}), ETA {_duration(left)}"
        else:
            where = f"{self.done} {self.unit}s"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        failed = f", {self.failed} failed" if self.failures else ""
        return f"{self.desc}: {where}, {rate:.2f} {self.unit}s/s{failed}, {_duration(elapsed)} elapsed{extra}"

    def _line(self) -> None:
        self.last_line, self.printed = self.clock(), (self.done, self.failed)
        print(self.line(), file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and not os.environ.get("TQDM_DISABLE")
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
