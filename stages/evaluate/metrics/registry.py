"""Every per-video metric the evaluation computes, registered with its contract.

A metric's contract is what it measures, which way is better, its range, and whether it passed the
invariance battery (tests/evaluate/test_metric_contracts.py): on the sample generator's clips and their
structure-broken twins, a frozen copy, a copy with each frame shown twice and a temporally subsampled
copy of a moving intact clip must never beat the intact clip, and every twin break must rank below
intact on the headline structure score. A metric that fails the battery (`motion_confounded`) is
still reported, but only beside the motion it saw (`MOTION`, the mean flow magnitude) and never
marked best on its own: a still video would win it. The flag is a measured claim: the battery test
checks that every metric flagged False passes and every metric flagged True fails.

Two kinds of per-video metric, both registered in `METRICS` by name:
- "video": fn(frames uint8 [F, H, W, 3], fps) -> float, weight-free (no model);
- "structure": fn(masks bool [F, H, W], frames uint8 [F, H, W, 3]) -> float, on the judge's (or the
  generator's true) subject masks.
direction None is a descriptive measure (motion): shown, never ranked. A metric may be NaN where it is
undefined (the deformation terms of a subject that never moves): the report shows it as not measured.
Corpus-level metrics (FVD, VBench, validation) are not per video; their directions are in
`CORPUS_DIRECTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from stages.evaluate.metrics import structure, video


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "video" (fn(frames, fps, cache)) or "structure" (fn(masks, frames, cache)); cache: video.FlowCache
    fn: Callable[..., float]
    direction: str | None  # "higher" / "lower" is better; None: descriptive only (no best)
    measures: str  # one line for the report's glossary
    motion_confounded: bool = False  # fails the invariance battery: shown beside MOTION, never best alone
    range: str = ""  # the values it takes, for the glossary ("[0, 1]", ">= 0", "{0, 1}"; NaN where undefined)

    def __call__(self, frames: np.ndarray, masks: np.ndarray | None = None, fps: float = video.VBENCH_FPS,
                 cache: video.FlowCache | None = None) -> float:
        return float(self.fn(frames, fps, cache) if self.kind == "video" else self.fn(masks, frames, cache))


MOTION = "flow_magnitude"  # the motion every confounded metric is read beside
# The headline structure score: the one score that ranks every twin break (detach, jump, stretch,
# vanish) below intact on every subject kind on true masks, and passes the battery (tested).
HEADLINE = "structure_score"


def _video(name, fn, direction, measures, range_, confounded=False) -> Metric:
    return Metric(name, "video", fn, direction, measures, confounded, range_)


def _structure(name, fn, direction, measures, range_, confounded=False) -> Metric:
    return Metric(name, "structure", fn, direction, measures, confounded, range_)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _video(MOTION, lambda f, fps, c: video.flow_magnitude(f, cache=c), None,
               "mean Farneback flow magnitude, px per frame pair at a long side of 360 px", ">= 0"),
        _video("dynamic_degree_flow", lambda f, fps, c: video.dynamic_degree_flow(f, fps, cache=c), None,
               "VBench's dynamic degree rule (top-5% flow over a resolution-scaled threshold) on Farneback flow", "{0, 1}"),
        _video("frame_diff_motion", lambda f, fps, c: video.frame_diff_motion(f), None,
               "share of frame pairs whose mean |difference| exceeds 0.01", "[0, 1]"),
        _video("flicker", lambda f, fps, c: video.flicker(f), "lower", "mean |frame t+1 - frame t| in [0, 1] units", "[0, 1]",
               confounded=True),
        _video("warping_error", lambda f, fps, c: video.warping_error(f, cache=c), "lower",
               "occlusion-masked error of frame t warped onto t+1 by flow, [0, 1] units", "[0, 1]", confounded=True),
        _structure(HEADLINE, lambda m, f, c: structure.structure_score(m, f, cache=c), "higher",
                   "presence / (1 + fragmentation) / (1 + deformation_per_motion)", "[0, 1], NaN if the subject never moves"),
        _structure("deformation_per_motion", lambda m, f, c: structure.deformation_per_motion(m, f, cache=c), "lower",
                   "subject shape change beyond its translation, per px of its flow", ">= 0, NaN if the subject never moves"),
        _structure("mask_consistency", lambda m, f, c: structure.mask_consistency(m, f, cache=c), "higher",
                   "flow-warped IoU of consecutive subject masks", "[0, 1]", confounded=True),
        _structure("fragmentation", lambda m, f, c: structure.fragmentation(m), "lower",
                   "extra connected pieces of the subject mask", ">= 0"),
        _structure("area_stability", lambda m, f, c: structure.area_stability(m), "higher",
                   "exp(-mean |log area ratio|) of the mask", "(0, 1]", confounded=True),
        _structure("presence", lambda m, f, c: structure.presence(m), "higher", "share of frames where the subject is found", "[0, 1]"),
    )
}

CORPUS_DIRECTIONS: dict[str, str] = {"fvd": "lower"}


def video_metric_names() -> list[str]:
    return [n for n, m in METRICS.items() if m.kind == "video"]


def structure_metric_names() -> list[str]:
    return [n for n, m in METRICS.items() if m.kind == "structure"]


def directions() -> dict[str, str]:
    """name -> "higher" / "lower" of every registered metric with a direction (the report's bold marks)."""
    return {n: m.direction for n, m in METRICS.items() if m.direction is not None}


def measure(frames: np.ndarray, masks: np.ndarray | None = None, fps: float = video.VBENCH_FPS) -> dict[str, float]:
    """Every registered metric of one video (structure metrics only when masks are given); `fps` is the
    video's frame rate (VBench's dynamic degree samples and thresholds by it). The metrics share one FlowCache."""
    cache = video.FlowCache()
    return {n: m(frames, masks, fps, cache) for n, m in METRICS.items() if m.kind == "video" or masks is not None}
