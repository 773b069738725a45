"""Metrics of a subject's mask track (bool [F, H, W]): is the subject one coherent thing over time?

The masks come from the project's SAM2 teacher tracking the subject through a generated sample (the
evaluate command), or from the sample-corpus generator's true masks (the tests, and the structure-
broken twins that give these metrics their ground truth). Lengths are in reference px (px at a long
side of 360, `video.REFERENCE_LONG_SIDE`); flow is Farneback at `video.flow_size`.

Motion-aware (pass the invariance battery of tests/evaluate/test_metric_contracts.py: a frozen copy,
a copy with each frame shown twice and a copy with every 2nd frame never beat the moving clip):
- structure_score (the HEADLINE; higher is better, in [0, 1], NaN when the subject never moves):
  presence * 1 / (1 + fragmentation) * 1 / (1 + deformation_per_motion). Each factor sees breaks the
  others miss: presence a subject that vanishes, fragmentation one that comes apart (a detached or
  popped limb), deformation_per_motion one that stretches or whose part jumps while staying attached
  (the blob's jump: no other unconfounded term sees it). It is the only score here that ranks every
  twin break (detach, jump, stretch, vanish) below intact on every subject kind (mask_consistency
  scores the walker's stretch above intact, area_stability and deformation_per_motion its vanish),
  and it is 0 when the subject is never found.
- deformation_per_motion (lower is better, >= 0, NaN when the subject never moves): per consecutive
  pair where the subject is present in both frames and moves (mean flow magnitude over mask t at least
  `MIN_MOTION`), the shape change D = symmetric mean boundary distance between mask t+1 and mask t
  shifted by the centroid displacement (the translation is motion, not deformation), divided by
  (m + `MOTION_FLOOR`), m the mean flow magnitude over mask t; the mean over those pairs. A walker's
  swinging limbs or a wobbling blob deform in proportion to their motion; a part that pops, a body
  that stretches, a piece that drifts off deform far more than the flow moves. Why it passes the
  battery: a frozen copy has no moving pair (NaN: undefined, never best); a doubled copy adds only
  still pairs (identical frames have exactly zero flow), which are skipped, so it scores exactly the
  intact value; a subsampled copy moves more per pair, its shape change grows at least as fast as its
  measured motion (Farneback falls short on fast limbs; measured on every clip), and with the floor
  the ratio then grows, so it scores worse. Why masks rather than the flow's own residual:
  Farneback's 15-px window smears thin limbs with the background, and the residual of an affine (or
  similarity) fit of its flow on the mask was 0.5-1.0 of the motion on intact clips and did not
  separate any break (measured on the twins).
- fragmentation (lower is better, >= 0): over frames where the subject is present, the mean number
  of connected components (8-connectivity) of the mask minus 1; components smaller than
  `MIN_COMPONENT_FRACTION` of the frame's mask area (and below `MIN_COMPONENT_PIXELS`) are ignored as
  tracker speckle. 0 for a subject in one piece; a detached limb adds 1 while it is detached.
  Per frame, so freezing or resampling time cannot improve on a subject that is whole.
- presence (higher is better, in [0, 1]): share of frames whose mask has at least `MIN_PRESENT_PIXELS`.

Motion-confounded (fail the battery: a frozen copy scores a perfect 1; read beside flow_magnitude):
- mask_consistency (higher is better, in [0, 1]): mean IoU between mask t+1 and mask t carried onto
  frame t+1 by Farneback flow computed on the frames (without frames: plain IoU of consecutive masks);
  flow at reduced size, upscaled to the masks' size. A body part that jumps, a shape that stretches
  or a subject that blinks out lowers it, but so does fast motion (thin limbs overlap less).
  Pairs where both masks are empty are skipped (absence is `presence`'s business); if exactly one is
  empty the pair scores 0.
- area_stability (higher is better, in (0, 1]): exp(-mean |log(area_{t+1} / area_t)|) over consecutive
  pairs where both masks are present. 1 for a constant area; a stretching or shrinking shape lowers it.
"""

from __future__ import annotations

import cv2
import numpy as np

from stages.evaluate.metrics.video import FLOW_MAX_SIDE, FlowCache, flow_size, grey_frames, pair_flows, reference_scale, warp_backward

MIN_PRESENT_PIXELS = 4  # a mask with fewer pixels counts as "subject absent"
MIN_COMPONENT_PIXELS = 4  # components at most this small are speckle regardless of the mask's area
MIN_COMPONENT_FRACTION = 0.01  # ... and so are components below 1% of the frame's mask area
MIN_MOTION = 0.1  # reference px: a pair whose subject moves less carries no deformation-per-motion information
# reference px added to the motion: of the order of Farneback's error; keeps slow pairs finite, and makes a
# coarser time step (D and m both doubled) score worse rather than the same
MOTION_FLOOR = 1.0
DIRECTIONS = {
    "structure_score": "higher",
    "deformation_per_motion": "lower",
    "mask_consistency": "higher",
    "fragmentation": "lower",
    "area_stability": "higher",
    "presence": "higher",
}


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


def _to_size(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [F, H, W] -> bool [F, size[0], size[1]] (area-averaged, >= 50% covered); the input when the size is unchanged."""
    if tuple(masks.shape[1:]) == tuple(size):
        return masks
    return np.stack([cv2.resize(m.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA) >= 0.5 for m in masks])


def mask_consistency(masks: np.ndarray, frames: np.ndarray | None = None, flow_max_side: int = FLOW_MAX_SIDE,
                     cache: FlowCache | None = None) -> float:
    """Mean flow-warped IoU of consecutive masks (plain IoU without frames); see the module docstring."""
    masks, frames = _check(masks, frames)
    h, w = masks.shape[1:]
    backs = None
    if frames is not None:
        grey = grey_frames(frames, flow_max_side)  # flow at reduced size, then scaled back up to the masks' size
        backs = pair_flows(grey, backward=True, cache=cache)  # [F-1, h', w', 2]: flow t+1 -> t, where each pixel of t+1 came from
        scale = np.array([w / grey.shape[2], h / grey.shape[1]], np.float32)
    scores = []
    for t in range(len(masks) - 1):
        a, b = masks[t], masks[t + 1]
        if not a.any() and not b.any():
            continue
        if backs is not None:
            back = backs[t]
            if back.shape[:2] != (h, w):
                back = cv2.resize(back, (w, h), interpolation=cv2.INTER_LINEAR) * scale
            a = warp_backward(a.astype(np.float32), back) >= 0.5  # mask t on frame t+1's grid
        scores.append(_iou(a, b))
    return float(np.mean(scores)) if scores else 1.0


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of mask [H, W] with one of their 8 neighbours outside it (the frame's edge does not count) -> bool [H, W]."""
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)


def _distance_to(points: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of `points` [H, W] -> float32 [H, W]."""
    return cv2.distanceTransform((~points).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def boundary_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean distance between the boundaries of two non-empty masks [H, W], px: 0 for the same shape."""
    ba, bb = _boundary(a), _boundary(b)
    ba, bb = (ba if ba.any() else a), (bb if bb.any() else b)  # a mask too thin to erode is all boundary
    return 0.5 * (float(_distance_to(bb)[ba].mean()) + float(_distance_to(ba)[bb].mean()))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _shifted(mask: np.ndarray, d: np.ndarray) -> np.ndarray:
    """mask [H, W] moved by d = (dx, dy) px, sub-pixel (bilinear, >= 50% covered), zero outside."""
    m = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
    return cv2.warpAffine(mask.astype(np.float32), m, (mask.shape[1], mask.shape[0]), flags=cv2.INTER_LINEAR) >= 0.5


def deformation_ratios(masks: np.ndarray, frames: np.ndarray, flow_max_side: int = FLOW_MAX_SIDE,
                       cache: FlowCache | None = None) -> np.ndarray:
    """D / (m + MOTION_FLOOR) of every pair where the subject is present and moves -> float64 [P] (module docstring).

    At flow resolution: the masks are brought to the flow's size, and D and m are both in reference px."""
    grey = grey_frames(frames, flow_max_side)
    fwd = pair_flows(grey, cache=cache)  # [F-1, h, w, 2]: flow t -> t+1
    small = _to_size(masks, grey.shape[1:])
    ref = reference_scale(grey.shape[1:])
    present = small.reshape(len(small), -1).sum(1) >= MIN_PRESENT_PIXELS
    ratios = []
    for t in range(len(small) - 1):
        a, b = small[t], small[t + 1]
        if not (present[t] and present[t + 1]):
            continue
        motion = float(np.sqrt((fwd[t][a].astype(np.float64) ** 2).sum(-1)).mean()) * ref
        if motion < MIN_MOTION:
            continue
        moved = _shifted(a, _centroid(b) - _centroid(a))  # mask t carried by the subject's own translation
        if not moved.any():
            continue
        ratios.append(boundary_distance(moved, b) * ref / (motion + MOTION_FLOOR))
    return np.asarray(ratios, np.float64)


def deformation_per_motion(masks: np.ndarray, frames: np.ndarray | None, flow_max_side: int = FLOW_MAX_SIDE,
                           cache: FlowCache | None = None) -> float:
    """Mean shape change per unit of motion over the pairs where the subject moves; NaN if it never
    does, or without frames (the motion is measured on them). See the module docstring."""
    masks, frames = _check(masks, frames)
    if frames is None or len(masks) < 2:
        return float("nan")
    ratios = deformation_ratios(masks, frames, flow_max_side, cache)
    return float(ratios.mean()) if ratios.size else float("nan")


def structure_score(masks: np.ndarray, frames: np.ndarray | None, flow_max_side: int = FLOW_MAX_SIDE,
                    deformation: float | None = None, cache: FlowCache | None = None) -> float:
    """presence / (1 + fragmentation) / (1 + deformation_per_motion), in [0, 1]: 0 when the subject is
    never found, NaN when it never moves. `deformation`: deformation_per_motion if already computed."""
    masks, frames = _check(masks, frames)
    p = presence(masks)
    if p == 0.0:
        return 0.0
    d = deformation_per_motion(masks, frames, flow_max_side, cache) if deformation is None else deformation
    return float(p / (1.0 + fragmentation(masks)) / (1.0 + d))  # NaN deformation stays NaN


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
    """All structure metrics of one mask track (the registry's "structure" metrics, same names);
    without frames the flow-based deformation terms are NaN and mask_consistency is plain IoU."""
    masks, frames = _check(masks, frames)
    cache = FlowCache()
    deformation = deformation_per_motion(masks, frames, flow_max_side, cache)
    return {
        "structure_score": structure_score(masks, frames, flow_max_side, deformation),
        "deformation_per_motion": deformation,
        "mask_consistency": mask_consistency(masks, frames, flow_max_side, cache),
        "fragmentation": fragmentation(masks),
        "area_stability": area_stability(masks),
        "presence": presence(masks),
    }
