"""Many clips per long video: the windows cut from one source, its duration, its shot cuts.

Listing reads what windows need and nothing more: a source's duration comes from its container's
header (one open, no decoding), so a manifest range past a video's end is refused at listing time
and windows are laid out over the whole source. Shot detection (`corpus.windows.shots`) is the
exception: PySceneDetect's ContentDetector decodes the source once (downscaled) to find its cuts,
and windows are then placed inside shots, so no window straddles a cut.

Window starts are rounded up to whole milliseconds (they appear in keys: `<source>@<start>`, see
window_key), so a window never starts before its shot.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import av

from stages.config.extract import WindowsConfig
from stages.core.fs import filesystem, is_local

log = logging.getLogger(__name__)

KEY_DIGITS = 9  # "00012.500": start seconds in keys, zero-padded so a source's windows sort in time order (to 27 h)


def window_key(source_key: str, start: float) -> str:
    """The key of the clip of `source_key` starting at `start` seconds, e.g. 'talks/a@00012.500'."""
    return f"{source_key}@{start:0{KEY_DIGITS}.3f}"


def _ms_up(t: float) -> float:
    return math.ceil(round(t * 1000, 6)) / 1000


@dataclass(frozen=True)
class Probe:
    """What the container's header says about a source (no frame decoded)."""

    duration: float | None  # seconds (None when the container does not say)
    fps: float  # the stream's average rate (0.0 when unknown)


def probe(url: str, storage_options: dict | None = None) -> Probe:
    """Duration and rate of the first video stream at url. Raises OSError / av.FFmpegError for an unreadable file."""
    fs, path = filesystem(url, storage_options)
    with contextlib.ExitStack() as stack:
        source = path if is_local(fs) else stack.enter_context(fs.open(path, "rb"))
        container = stack.enter_context(av.open(source, "r"))
        if not container.streams.video:
            raise OSError("no video stream")
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = None
        return Probe(duration, float(stream.average_rate or stream.guessed_rate or 0.0))


def shot_ranges(url: str, threshold: float, storage_options: dict | None = None) -> list[tuple[float, float]]:
    """[(start, end)] seconds of each shot of the source, in order (one shot when no cut is found).

    PySceneDetect's ContentDetector over PyAV (the decoder the pipeline uses): weight-free, it
    compares consecutive frames' HSV content; `threshold` is its cut threshold.
    """
    from scenedetect import ContentDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv

    fs, path = filesystem(url, storage_options)
    with contextlib.ExitStack() as stack:
        source = path if is_local(fs) else stack.enter_context(fs.open(path, "rb"))
        stream = VideoStreamAv(source, suppress_output=True)
        manager = SceneManager()
        manager.auto_downscale = True
        manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=1))
        manager.detect_scenes(stream)
        scenes = manager.get_scene_list(start_in_scene=True)
        end = stream.duration.seconds if stream.duration is not None else None
    ranges = [(s.seconds, e.seconds) for s, e in scenes]
    if not ranges and end:
        ranges = [(0.0, end)]
    return ranges


def window_ranges(spans: list[tuple[float, float]], length: float, cfg: WindowsConfig) -> list[tuple[float, float]]:
    """(start, end) of each window inside `spans` (the source's shots, or [(0, duration)]), in time order.

    every=N: a window at each span's start and every N seconds after it, while the window fits in
    the span. count=K: K of the non-overlapping windows that fit (back to back from each span's
    start), spread evenly over them; fewer when fewer fit.
    """
    eps = 1e-6
    if cfg.every is not None:
        step = cfg.every
    else:
        step = length  # back to back: the candidates `count` picks from
    out: list[tuple[float, float]] = []
    for lo, hi in spans:
        k = 0
        while True:
            start = _ms_up(lo + k * step)
            if start + length > hi + eps:
                break
            out.append((start, round(start + length, 6)))
            k += 1
    if cfg.count is not None and len(out) > cfg.count:
        n = len(out)
        out = [out[int((i + 0.5) * n / cfg.count)] for i in range(cfg.count)]
    return out
