"""Every per-video metric the evaluation computes, registered with its contract.

A metric's contract is what it measures, which way is better, and whether it passed the invariance
battery (tests/evaluate/test_metric_contracts.py): on the sample generator's clips and their
structure-broken twins, a frozen copy, a copy with each frame shown twice and a temporally subsampled
copy of a moving intact clip must never beat the intact clip, and every twin break must rank below
intact on the headline structure score. A metric that fails the battery (`motion_confounded`) is
still reported, but only beside the motion it saw (`MOTION`, the mean flow magnitude) and never
marked best on its own: a still video would win it.

Two kinds of per-video metric, both registered in `METRICS` by name:
- "video": fn(frames uint8 [F, H, W, 3]) -> float, weight-free (no model);
- "structure": fn(masks bool [F, H, W], frames uint8 [F, H, W, 3]) -> float, on the judge's (or the
  generator's true) subject masks.
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
    kind: str  # "video" (fn(frames)) or "structure" (fn(masks, frames))
    fn: Callable[..., float]
    direction: str | None  # "higher" / "lower" is better; None: descriptive only (no best)
    measures: str  # one line for the report's glossary
    motion_confounded: bool = False  # fails the invariance battery: shown beside MOTION, never best alone

    def __call__(self, frames: np.ndarray, masks: np.ndarray | None = None) -> float:
        return float(self.fn(frames) if self.kind == "video" else self.fn(masks, frames))


MOTION = "flow_magnitude"  # the motion every confounded metric is read beside
HEADLINE = "mask_consistency"  # the headline structure score (the twin ranking is tested on it)


def _video(name, fn, direction, measures, confounded=False) -> Metric:
    return Metric(name, "video", fn, direction, measures, confounded)


def _structure(name, fn, direction, measures, confounded=False) -> Metric:
    return Metric(name, "structure", fn, direction, measures, confounded)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _video("flicker", video.flicker, "lower", "mean |frame t+1 - frame t| in [0, 1] units", confounded=True),
        _video("dynamic_degree", video.dynamic_degree, "higher", "share of frame pairs that move (frame differences)"),
        _video("warping_error", video.warping_error, "lower", "occlusion-masked error of frame t warped onto t+1 by flow",
               confounded=True),
        _structure("mask_consistency", lambda m, f: structure.mask_consistency(m, f), "higher",
                   "flow-warped IoU of consecutive subject masks"),
        _structure("fragmentation", lambda m, f: structure.fragmentation(m), "lower", "extra connected pieces of the subject mask"),
        _structure("area_stability", lambda m, f: structure.area_stability(m), "higher", "exp(-mean |log area ratio|) of the mask"),
        _structure("presence", lambda m, f: structure.presence(m), "higher", "share of frames where the subject is found"),
    )
}

CORPUS_DIRECTIONS: dict[str, str] = {"fvd": "lower"}


def video_metric_names() -> list[str]:
    return [n for n, m in METRICS.items() if m.kind == "video"]


def structure_metric_names() -> list[str]:
    return [n for n, m in METRICS.items() if m.kind == "structure"]


def measure(frames: np.ndarray, masks: np.ndarray | None = None) -> dict[str, float]:
    """Every registered metric of one video (structure metrics only when masks are given)."""
    return {n: m(frames, masks) for n, m in METRICS.items() if m.kind == "video" or masks is not None}
