"""Per-video scores and their summary: the part `evaluate` (samples of runs) and `score` (videos from a
folder) share.

    videos (model, clip, seed, frames, judge prompt)  ->  judge masks  ->  registry metrics per video
      ->  rows [{model, clip, seed, metric: value}]  ->  per model: mean and 95% interval;
          per model != reference: paired difference and its verdict (stats.py)

A video with ground-truth masks (score's `<name>.masks.npz` sidecars, the twins' true masks) is
measured on them and the judge is not asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from stages.evaluate.metrics.registry import METRICS, measure
from stages.evaluate.stats import Interval, bootstrap, paired_difference, verdict
from stages.teacher.prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class Video:
    model: str  # report row: a run, "base", or a method folder
    clip: str  # clip key / file stem, shared by every model
    seed: int  # sampling seed (0 for videos made elsewhere)
    frames: np.ndarray  # uint8 [F, H, W, 3]
    caption: str = ""
    prompt: Prompt | None = None  # where the judge finds the subject on frame 0; None: on the video's own frame 0
    masks: np.ndarray | None = None  # bool [F, H, W] ground truth: measured on these, the judge is not asked
    fps: float = 8.0  # the video's frame rate (VBench's dynamic degree samples by it)


@dataclass
class Summary:
    models: list[str]
    reference: str | None
    rows: list[dict]  # one per video: model, clip, seed, metric -> value (None: not measurable)
    means: dict[str, dict[str, Interval | None]]  # model -> metric -> mean with its interval
    paired: dict[str, dict[str, Interval | None]] = field(default_factory=dict)  # model -> metric -> model - reference
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> metric -> better/worse/within noise

    def mean_values(self) -> dict[str, dict[str, float | None]]:
        return {m: {k: (v.mean if v else None) for k, v in by.items()} for m, by in self.means.items()}


def measure_videos(videos: list[Video], judge=None) -> list[dict]:
    """Registry metrics of every video (structure metrics need masks: the video's own, else the judge's)."""
    rows = []
    for v in videos:
        masks = v.masks
        if masks is None and judge is not None:
            masks = judge.masks(v.frames, v.prompt, v.caption)
        rows.append({"model": v.model, "clip": v.clip, "seed": v.seed, **measure(v.frames, masks, v.fps)})
    return rows


def _values(rows: list[dict], model: str, metric: str) -> dict[tuple[str, int], float]:
    return {(r["clip"], r["seed"]): r[metric] for r in rows if r["model"] == model and r.get(metric) is not None}


def summarise(rows: list[dict], models: list[str], reference: str | None) -> Summary:
    """Means with intervals per model, and each other model's paired difference to `reference`."""
    metrics = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("model", "clip", "seed")]
    means = {m: {k: bootstrap(_values(rows, m, k)) for k in metrics} for m in models}
    summary = Summary(models, reference, rows, means)
    if reference is None:
        return summary
    for m in models:
        if m == reference:
            continue
        summary.paired[m] = {k: paired_difference(_values(rows, m, k), _values(rows, reference, k)) for k in metrics}
        summary.verdicts[m] = {k: verdict(d, METRICS[k].direction if k in METRICS else None) for k, d in summary.paired[m].items()}
    return summary
