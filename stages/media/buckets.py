"""Which bucket (frames, height, width) of `video.buckets` a clip goes to, from its duration and upright aspect.

Among the buckets whose frame count the clip's duration allows at `video.fps` (from `video.start_sec`, as
decoding samples it), the one whose aspect (width / height) is nearest the clip's in log-ratio, so 2:1 and 1:2
are equally far from 1:1; a tie (the same aspect at two lengths, or two sizes) goes to the larger bucket
(frames x height x width), which keeps more of the clip. A clip no bucket fits (too short for every one) gets
None: the caller skips it into the ledger with the reason `no_bucket_reason` gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Bucket = tuple[int, int, int]  # (frames, height, width)
NO_BUCKET = "too short for every bucket"  # how the ledger reason of a clip no bucket fits begins


def needs_seconds(frames: int, fps: float, start_sec: float = 0.0) -> float:
    """Seconds of source a clip of `frames` frames needs (decode.min_duration applies it to one VideoConfig)."""
    return start_sec + frames / fps


def assign_bucket(buckets: Sequence[Sequence[int]], duration: float | None, height: int, width: int, fps: float,
                  start_sec: float = 0.0) -> Bucket | None:
    """The bucket of a clip `duration` seconds long (None: unknown, every bucket allowed) whose upright frames
    are height x width; None when it is too short for every bucket."""
    aspect = math.log(width / height)
    best: tuple[float, int] | None = None
    chosen: Bucket | None = None
    for b in buckets:
        f, h, w = (int(v) for v in b)
        if duration is not None and duration < needs_seconds(f, fps, start_sec) - 1e-6:
            continue
        # nearest aspect first; among equals the larger bucket (negated size sorts it first)
        rank = (round(abs(aspect - math.log(w / h)), 9), -(f * h * w))
        if best is None or rank < best:
            best, chosen = rank, (f, h, w)
    return chosen


def no_bucket_reason(buckets: Sequence[Sequence[int]], duration: float | None, fps: float, start_sec: float = 0.0) -> str:
    """The ledger reason of a clip no bucket fits (only a too-short clip has none)."""
    shortest = min(int(b[0]) for b in buckets)
    got = "unknown" if duration is None else f"{duration:.2f} s"
    return (f"{NO_BUCKET}: {got}, the shortest bucket ({shortest} frames at {fps:g} fps) needs "
            f"{needs_seconds(shortest, fps, start_sec):.2f} s")
