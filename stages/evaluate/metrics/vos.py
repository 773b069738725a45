"""Video object segmentation scores: region similarity J, boundary F and their mean J&F (pure numpy).

J is the IoU of a predicted and a true mask. F is a simplified DAVIS boundary F-measure
(Perazzi et al. 2016, davis2017-evaluation `f_boundary`): the one-pixel boundary of each mask,
each boundary pixel counted as matched when the other mask's boundary lies within `tolerance`
pixels (a square neighbourhood instead of DAVIS's disk; DAVIS's tolerance is 0.008 of the image
diagonal, 2 px at 128x192, which `default_tolerance` reproduces), precision and recall of the
matched pixels, F = 2PR / (P + R). A frame where both masks are empty scores 1 on both (nothing
to find, nothing found); one empty and the other not scores 0.

Shapes: masks are bool [H, W] for one frame, [F, H, W] for a clip; clip scores are the mean over
frames (DAVIS additionally drops the first and last frame; here the caller chooses the frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAVIS_BOUND_TH = 0.008  # davis2017-evaluation: tolerance as a fraction of the image diagonal


def default_tolerance(h: int, w: int) -> int:
    """DAVIS's boundary tolerance in pixels for an H x W frame: ceil(0.008 * diagonal), at least 1."""
    return max(1, int(np.ceil(DAVIS_BOUND_TH * np.hypot(h, w))))


def region_similarity(pred: np.ndarray, true: np.ndarray) -> float:
    """J: IoU of two bool [H, W] masks; 1.0 when both are empty."""
    pred, true = _pair(pred, true)
    union = np.logical_or(pred, true).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, true).sum() / union)


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's one-pixel inner boundary: pixels of the mask with a 4-neighbour outside it
    (the frame edge counts as outside, as in DAVIS's seg2bmap)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[1:-1, 1:-1]
    interior = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner & ~interior


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a bool [H, W] mask by a (2r+1) x (2r+1) square (separable max filter)."""
    if radius <= 0:
        return mask.copy()
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(2)], constant_values=False)
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k in range(2 * radius + 1):
            acc |= np.take(padded, np.arange(k, k + n), axis=axis)
        out = acc
    return out


def boundary_f(pred: np.ndarray, true: np.ndarray, tolerance: int | None = None) -> float:
    """F: the boundary F-measure of two bool [H, W] masks with a `tolerance`-pixel match radius."""
    pred, true = _pair(pred, true)
    tol = default_tolerance(*true.shape) if tolerance is None else tolerance
    bp, bt = boundary(pred), boundary(true)
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    precision = float((bp & dilate(bt, tol)).sum() / n_p)
    recall = float((bt & dilate(bp, tol)).sum() / n_t)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class VosScore:
    """Mean J, mean F and J&F = (J + F) / 2 over the frames scored."""

    j: float
    f: float
    frames: int

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    def to_record(self) -> dict[str, float | int]:
        return {"J": self.j, "F": self.f, "J&F": self.jf, "frames": self.frames}


def clip_scores(pred: np.ndarray, true: np.ndarray, tolerance: int | None = None) -> VosScore:
    """J, F and J&F of one clip: bool [F, H, W] predicted vs true masks, averaged over frames."""
    pred, true = _pair(pred, true, ndim=3)
    js = [region_similarity(p, t) for p, t in zip(pred, true)]
    fs = [boundary_f(p, t, tolerance) for p, t in zip(pred, true)]
    return VosScore(float(np.mean(js)), float(np.mean(fs)), len(js))


def mean_scores(scores: list[VosScore]) -> VosScore:
    """The mean over clips of per-clip means (each clip weighs the same, as DAVIS averages objects)."""
    if not scores:
        raise ValueError("mean_scores needs at least one clip score")
    return VosScore(
        float(np.mean([s.j for s in scores])), float(np.mean([s.f for s in scores])), sum(s.frames for s in scores)
    )


def _pair(pred: np.ndarray, true: np.ndarray, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim != ndim:
        raise ValueError(f"masks must be two {ndim}-D arrays of one shape, got {pred.shape} and {true.shape}")
    return pred.astype(bool, copy=False), true.astype(bool, copy=False)


__all__ = [
    "VosScore",
    "boundary",
    "boundary_f",
    "clip_scores",
    "default_tolerance",
    "dilate",
    "mean_scores",
    "region_similarity",
]
