"""Weight-free metrics of one video (uint8 numpy [F, H, W, 3], RGB): flicker, dynamic degree, warping error.

They need no model, so every run can be scored on any machine. Directions (also in `DIRECTIONS`):
- flicker: mean absolute difference of consecutive frames, in [0, 1] units. Lower means steadier
  frames; 0 for a static video. On its own it also rewards a frozen video, so read it next to
  dynamic_degree.
- dynamic_degree: the share of consecutive frame pairs whose mean absolute difference (in [0, 1]
  units) exceeds `DYNAMIC_THRESHOLD`. A frame-difference stand-in for VBench's RAFT-based dynamic
  degree: higher means more motion (0 for a static video). Reported as-is; "better" depends on the
  prompt, so its direction is "higher" only in the sense VBench uses (a video should move).
- warping_error: OpenCV Farneback flow from frame t+1 back to frame t, frame t warped onto t+1,
  mean absolute error in [0, 1] units over pixels that pass a forward-backward consistency check
  (occluded and disoccluded pixels are left out). Lower is better: motion that flow explains
  (smooth, coherent) scores low, popping, flicker and structure that appears from nowhere score high.
"""

from __future__ import annotations

import cv2
import numpy as np

DYNAMIC_THRESHOLD = 0.01  # mean |frame diff| in [0, 1] units above which a frame pair counts as moving
FB_TOLERANCE = 1.0  # pixels (at flow resolution): forward-backward round trip error above which a pixel is occluded
# Flow is computed with the long side at most this many pixels (INTER_AREA downscale): Farneback at
# 480 x 720 costs ~0.3 s a pair on one core, at 240 x 360 a quarter of that, and the metrics are
# about structure coarser than a pixel. Videos at or below this size are used as they are.
FLOW_MAX_SIDE = 360
DIRECTIONS = {"flicker": "lower", "dynamic_degree": "higher", "warping_error": "lower"}


def _check(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 [F, H, W, 3], got {video.dtype} {list(video.shape)}")
    return video


def _pair_diffs(video: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each consecutive frame pair, float64 [F-1], in [0, 1] units."""
    v = _check(video).astype(np.float32) / 255.0
    if len(v) < 2:
        return np.zeros(0)
    return np.abs(v[1:] - v[:-1]).mean(axis=(1, 2, 3)).astype(np.float64)


def flicker(video: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames in [0, 1] units (0 for a static video)."""
    d = _pair_diffs(video)
    return float(d.mean()) if d.size else 0.0


def dynamic_degree(video: np.ndarray, threshold: float = DYNAMIC_THRESHOLD) -> float:
    """Share of consecutive frame pairs whose mean absolute difference exceeds `threshold`, in [0, 1]."""
    d = _pair_diffs(video)
    return float((d > threshold).mean()) if d.size else 0.0


def farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow from grey frame a to grey frame b (uint8 [H, W]) -> float32 [H, W, 2] (dx, dy):
    a(y, x) ~ b(y + dy, x + dx)."""
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def flow_size(h: int, w: int, max_side: int = FLOW_MAX_SIDE) -> tuple[int, int]:
    """(h, w) at which flow is computed: scaled down so the long side is at most max_side."""
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def downscale(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [F, H, W, C] -> [F, size[0], size[1], C] (INTER_AREA); the input itself when the size is unchanged."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def warp_backward(src: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Sample src at (x + flow_x, y + flow_y): with `flow` from frame t+1 to frame t this carries frame
    t onto frame t+1's pixel grid. src [H, W] or [H, W, C], flow float32 [H, W, 2]."""
    xs, ys = _grid(*flow.shape[:2])
    return cv2.remap(src, xs + flow[..., 0], ys + flow[..., 1], interpolation, borderMode=cv2.BORDER_REPLICATE)


def valid_flow_mask(flow_back: np.ndarray, flow_fwd: np.ndarray, tol: float = FB_TOLERANCE) -> np.ndarray:
    """Pixels of frame t+1 whose flow to t and back again returns within `tol` px and stays inside the
    frame -> bool [H, W]. flow_back: t+1 -> t, flow_fwd: t -> t+1, both float32 [H, W, 2]."""
    h, w = flow_back.shape[:2]
    xs, ys = _grid(h, w)
    fwd_at_target = warp_backward(flow_fwd, flow_back)  # forward flow read where each t+1 pixel lands in t
    round_trip = flow_back + fwd_at_target
    err = np.sqrt((round_trip**2).sum(-1))
    tx, ty = xs + flow_back[..., 0], ys + flow_back[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (err <= tol) & inside


def warping_error(video: np.ndarray, flow_max_side: int = FLOW_MAX_SIDE) -> float:
    """Occlusion-masked mean absolute error of frame t warped onto t+1 by Farneback flow, [0, 1] units,
    at flow resolution (long side <= FLOW_MAX_SIDE)."""
    v = _check(video)
    if len(v) < 2:
        return 0.0
    v = downscale(v, flow_size(*v.shape[1:3], flow_max_side))
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v]
    total, count = 0.0, 0
    for t in range(len(v) - 1):
        back = farneback(grey[t + 1], grey[t])  # t+1 -> t
        fwd = farneback(grey[t], grey[t + 1])  # t -> t+1
        valid = valid_flow_mask(back, fwd)
        warped = warp_backward(v[t], back).astype(np.float32)
        err = np.abs(warped - v[t + 1].astype(np.float32)).mean(-1) / 255.0  # [H, W]
        total += float(err[valid].sum())
        count += int(valid.sum())
    return total / count if count else 0.0


def video_metrics(video: np.ndarray, flow_max_side: int = FLOW_MAX_SIDE) -> dict[str, float]:
    """All weight-free metrics of one video: {flicker, dynamic_degree, warping_error}."""
    return {"flicker": flicker(video), "dynamic_degree": dynamic_degree(video), "warping_error": warping_error(video, flow_max_side)}
