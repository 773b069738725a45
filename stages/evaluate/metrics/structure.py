"""Metrics of a subject's mask track (bool [F, H, W]): is the subject one coherent thing over time?

The masks come from the project's SAM2 teacher tracking the subject through a generated sample (the
evaluate command), or from the sample-corpus generator's true masks (the tests, and the structure-
broken twins that give these metrics their ground truth). Directions (also in `DIRECTIONS`):
- mask_consistency (higher is better, in [0, 1]): mean IoU between mask t+1 and mask t carried onto
  frame t+1 by Farneback flow computed on the frames (without frames: plain IoU of consecutive masks);
  flow at reduced size (long side <= video_metrics.FLOW_MAX_SIDE), upscaled to the masks' size.
  A body part that jumps, a shape that stretches or a subject that blinks out lowers it.
  Pairs where both masks are empty are skipped (absence is `presence`'s business); if exactly one is
  empty the pair scores 0.
- fragmentation (lower is better, >= 0): over frames where the subject is present, the mean number
  of connected components (8-connectivity) of the mask minus 1; components smaller than
  `MIN_COMPONENT_FRACTION` of the frame's mask area (and below `MIN_COMPONENT_PIXELS`) are ignored as
  tracker speckle. 0 for a subject in one piece; a detached limb adds 1 while it is detached.
- area_stability (higher is better, in (0, 1]): exp(-mean |log(area_{t+1} / area_t)|) over consecutive
  pairs where both masks are present. 1 for a constant area; a stretching or shrinking shape lowers it.
- presence (higher is better, in [0, 1]): share of frames whose mask has at least `MIN_PRESENT_PIXELS`.
"""

from __future__ import annotations

import cv2
import numpy as np

from stages.evaluate.metrics.video import FLOW_MAX_SIDE, downscale, farneback, flow_size, warp_backward

MIN_PRESENT_PIXELS = 4  # a mask with fewer pixels counts as "subject absent"
MIN_COMPONENT_PIXELS = 4  # components at most this small are speckle regardless of the mask's area
MIN_COMPONENT_FRACTION = 0.01  # ... and so are components below 1% of the frame's mask area
DIRECTIONS = {"mask_consistency": "higher", "fragmentation": "lower", "area_stability": "higher", "presence": "higher"}


def _check(masks: np.ndarray, frames: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be bool [F, H, W], got {masks.dtype} {list(masks.shape)}")
    masks = masks.astype(bool)
    if frames is not None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[:3] != masks.shape or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [F, H, W, 3] matching masks {list(masks.shape)}, got {frames.dtype} {list(frames.shape)}")
    return masks, frames


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_consistency(masks: np.ndarray, frames: np.ndarray | None = None, flow_max_side: int = FLOW_MAX_SIDE) -> float:
    """Mean flow-warped IoU of consecutive masks (plain IoU without frames); see the module docstring."""
    masks, frames = _check(masks, frames)
    h, w = masks.shape[1:]
    small = flow_size(h, w, flow_max_side)  # flow at reduced size, then scaled back up to the masks' size
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in downscale(frames, small)] if frames is not None else None
    scale = np.array([w / small[1], h / small[0]], np.float32)
    scores = []
    for t in range(len(masks) - 1):
        a, b = masks[t], masks[t + 1]
        if not a.any() and not b.any():
            continue
        if grey is not None:
            back = farneback(grey[t + 1], grey[t])  # flow t+1 -> t: where each pixel of t+1 came from
            if back.shape[:2] != (h, w):
                back = cv2.resize(back, (w, h), interpolation=cv2.INTER_LINEAR) * scale
            a = warp_backward(a.astype(np.float32), back) >= 0.5  # mask t on frame t+1's grid
        scores.append(_iou(a, b))
    return float(np.mean(scores)) if scores else 1.0


def components(mask: np.ndarray) -> int:
    """Connected components (8-connectivity) of one mask [H, W], speckle ignored (module docstring)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    area = int(m.sum())
    if area == 0:
        return 0
    n, labels = cv2.connectedComponents(m, connectivity=8)
    sizes = np.bincount(labels.ravel(), minlength=n)[1:]  # label 0 is the background
    keep = sizes > max(MIN_COMPONENT_PIXELS, MIN_COMPONENT_FRACTION * area)
    return max(int(keep.sum()), 1)


def fragmentation(masks: np.ndarray) -> float:
    """Mean (components - 1) over frames where the subject is present; 0 when it never is."""
    masks, _ = _check(masks, None)
    present = masks.reshape(len(masks), -1).sum(1) >= MIN_PRESENT_PIXELS
    counts = [components(m) - 1 for m, p in zip(masks, present) if p]
    return float(np.mean(counts)) if counts else 0.0


def area_stability(masks: np.ndarray) -> float:
    """exp(-mean |log area ratio|) over consecutive frames where both masks are present."""
    masks, _ = _check(masks, None)
    area = masks.reshape(len(masks), -1).sum(1).astype(np.float64)
    both = (area[:-1] >= MIN_PRESENT_PIXELS) & (area[1:] >= MIN_PRESENT_PIXELS)
    if not both.any():
        return 1.0
    ratios = np.abs(np.log(area[1:][both] / area[:-1][both]))
    return float(np.exp(-ratios.mean()))


def presence(masks: np.ndarray) -> float:
    """Share of frames where the subject's mask has at least MIN_PRESENT_PIXELS pixels."""
    masks, _ = _check(masks, None)
    if len(masks) == 0:
        return 0.0
    return float((masks.reshape(len(masks), -1).sum(1) >= MIN_PRESENT_PIXELS).mean())


def structure_metrics(masks: np.ndarray, frames: np.ndarray | None = None, flow_max_side: int = FLOW_MAX_SIDE) -> dict[str, float]:
    """All structure metrics of one mask track: {mask_consistency, fragmentation, area_stability, presence}."""
    masks, frames = _check(masks, frames)
    return {
        "mask_consistency": mask_consistency(masks, frames, flow_max_side),
        "fragmentation": fragmentation(masks),
        "area_stability": area_stability(masks),
        "presence": presence(masks),
    }
