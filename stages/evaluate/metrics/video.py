"""Weight-free metrics of one video (uint8 numpy [F, H, W, 3], RGB): how much it moves, and how steadily.

They need no model, so every run can be scored on any machine. Flow is OpenCV Farneback between
consecutive frames, computed with the long side at most `FLOW_MAX_SIDE` px (see `flow_size`); every
length below is in *reference pixels*: px at a long side of `REFERENCE_LONG_SIDE` (= 360) px, so a
value means the same at any resolution (px at the video's own size = value * long side / 360).

Motion (direction None: descriptive, never "best"; how much a video should move depends on its prompt):
- flow_magnitude: mean |flow| over all pixels and consecutive frame pairs, reference px per frame
  pair, >= 0. 0 for a still video; each frame shown twice halves it, every 2nd frame doubles it.
  This is `registry.MOTION`, the column every motion-confounded metric is read beside.
- dynamic_degree_flow: VBench's dynamic degree rule on Farneback flow, 1.0 (the video is dynamic) or
  0.0 (static); the mean over videos is VBench's dimension score. See `dynamic_degree_flow` for what
  matches VBench and what differs.
- frame_diff_motion: the share of consecutive frame pairs whose mean absolute difference (in [0, 1]
  units) exceeds `FRAME_DIFF_THRESHOLD`, in [0, 1]. Not VBench's dynamic degree: it saturates at 1 on
  almost any video (a panning background suffices) and a structure break (a part that pops) raises it.

Steadiness (both "lower is better", and both *motion-confounded*: a frozen video scores 0 and showing
each frame twice roughly halves them, so they are read beside flow_magnitude, never ranked alone):
- flicker: mean absolute difference of consecutive frames, in [0, 1] units.
- warping_error: frame t warped onto t+1 by Farneback flow (t+1 -> t), mean absolute error in [0, 1]
  units over pixels that pass a forward-backward consistency check (occluded and disoccluded pixels
  left out). Motion that flow explains scores low; popping, flicker and structure from nowhere high.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

FRAME_DIFF_THRESHOLD = 0.01  # mean |frame diff| in [0, 1] units above which frame_diff_motion counts a pair as moving
FB_TOLERANCE = 1.0  # pixels (at flow resolution): forward-backward round trip error above which a pixel is occluded
# Flow is computed with the long side at most this many pixels (INTER_AREA downscale): Farneback at
# 480 x 720 costs ~0.3 s a pair on one core, at 240 x 360 a quarter of that, and the metrics are
# about structure coarser than a pixel. Videos at or below this size are used as they are.
FLOW_MAX_SIDE = 360
REFERENCE_LONG_SIDE = 360  # lengths are reported in px at this long side (see the module docstring)
# VBench dynamic_degree.py constants (vbench/dynamic_degree.py: set_params, get_score, get_frames)
VBENCH_FPS = 8.0  # frames are sampled down to about this rate, and thresholds assume it
VBENCH_THRESHOLD = 6.0  # px at a short side of 256 px: a pair moves when its top-5% flow mean exceeds it
VBENCH_SHORT_SIDE = 256
VBENCH_TOP_FRACTION = 0.05  # the score of a pair is the mean of its top 5% flow magnitudes
VBENCH_COUNT = 4  # ... and a video is dynamic when round(4 * frames / 16) pairs move
VBENCH_COUNT_FRAMES = 16
# Metrics with a direction; the motion measures have none (no best). registry.METRICS is the full contract.
DIRECTIONS = {"flicker": "lower", "warping_error": "lower"}


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


def frame_diff_motion(video: np.ndarray, threshold: float = FRAME_DIFF_THRESHOLD) -> float:
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


def reference_scale(size: tuple[int, int]) -> float:
    """Factor from px at `size` (h, w) to reference px (px at a long side of REFERENCE_LONG_SIDE)."""
    return REFERENCE_LONG_SIDE / max(size)


def downscale(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [F, H, W, C] -> [F, size[0], size[1], C] (INTER_AREA); the input itself when the size is unchanged."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])


def grey_frames(video: np.ndarray, flow_max_side: int = FLOW_MAX_SIDE) -> np.ndarray:
    """The frames flow is computed on: grey uint8 [F, h, w] at flow_size."""
    v = _check(video)
    small = downscale(v, flow_size(*v.shape[1:3], flow_max_side))
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in small]) if len(v) else np.zeros((0, 1, 1), np.uint8)


def _digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(frame.tobytes(), digest_size=16).digest()


class FlowCache:
    """Farneback flows of one video's frame pairs, shared by the metrics that read them.

    Several metrics of one video need the same flows (and the battery's copies of a clip share its
    pairs), while Farneback is most of the metrics' cost. Keyed by a hash of the two frames' pixels,
    never by object identity. One cache per video measured (registry.measure makes it): nothing is
    kept between calls."""

    def __init__(self) -> None:
        self._flows: dict[tuple, np.ndarray] = {}  # (digest src, digest dst, h, w) -> float32 [h, w, 2]

    def flow(self, src: np.ndarray, dst: np.ndarray, key: tuple) -> np.ndarray:
        if key not in self._flows:
            self._flows[key] = farneback(src, dst)
        return self._flows[key]


def pair_flows(grey: np.ndarray, backward: bool = False, cache: FlowCache | None = None) -> np.ndarray:
    """Farneback flow of every consecutive pair of grey frames [F, h, w] -> float32 [F-1, h, w, 2]:
    t -> t+1 (forward) or t+1 -> t (backward), at the frames' size.

    Two identical frames get exactly zero flow (Farneback returns ~0.01 px of noise on them, and they
    have no motion). `cache`: flows already computed for this video by another metric (FlowCache)."""
    h, w = grey.shape[1:]
    digests = [_digest(f) for f in grey]
    out = np.zeros((max(len(grey) - 1, 0), h, w, 2), np.float32)
    for t in range(len(grey) - 1):
        src, dst = (t + 1, t) if backward else (t, t + 1)
        if digests[src] == digests[dst] and np.array_equal(grey[src], grey[dst]):
            continue  # no motion: zero flow
        key = (digests[src], digests[dst], h, w)
        out[t] = cache.flow(grey[src], grey[dst], key) if cache is not None else farneback(grey[src], grey[dst])
    return out


def flow_magnitude(video: np.ndarray, flow_max_side: int = FLOW_MAX_SIDE, cache: FlowCache | None = None) -> float:
    """Mean Farneback flow magnitude (t -> t+1) over all pixels and pairs, reference px per pair (0 for one frame)."""
    grey = grey_frames(video, flow_max_side)
    if len(grey) < 2:
        return 0.0
    flows = pair_flows(grey, cache=cache)
    return float(np.sqrt((flows.astype(np.float64) ** 2).sum(-1)).mean() * reference_scale(grey.shape[1:]))


def vbench_sample(video: np.ndarray, fps: float) -> np.ndarray:
    """VBench's frame sampling for dynamic degree: every max(1, round(fps / 8))-th frame (about 8 fps)."""
    return video[:: max(1, round(fps / VBENCH_FPS))]


def dynamic_degree_flow(video: np.ndarray, fps: float = VBENCH_FPS, flow_max_side: int = FLOW_MAX_SIDE,
                        cache: FlowCache | None = None) -> float:
    """VBench's dynamic degree of one video, on Farneback flow: 1.0 (dynamic) or 0.0 (static).

    Follows vbench/dynamic_degree.py: frames sampled to ~8 fps (every round(fps/8)-th); per consecutive
    pair of sampled frames, the mean of the top 5% flow magnitudes (`int(h*w*0.05)` pixels); a pair
    moves when that exceeds thres = max(1, 8/fps) * 6.0 * min(h, w) / 256 (fps: the video's own); the
    video is dynamic when at least count_num = round(4 * frames / 16) pairs move (frames: sampled).
    Differs from VBench: Farneback instead of RAFT (weight-free; Farneback underestimates large, fast
    motion, so borderline videos read as static more often), flow at flow_size rather than full
    resolution (thres is scaled by the flow-resolution short side, so the rule is the same), and
    count_num is at least 1 (VBench's round(4 * 2 / 16) = 0 calls a still 2-frame video dynamic).
    """
    v = vbench_sample(_check(video), fps)
    grey = grey_frames(v, flow_max_side)
    if len(grey) < 2:
        return 0.0
    h, w = grey.shape[1:]
    thres = max(1.0, VBENCH_FPS / fps) * VBENCH_THRESHOLD * min(h, w) / VBENCH_SHORT_SIDE
    count_num = max(1, round(VBENCH_COUNT * len(grey) / VBENCH_COUNT_FRAMES))
    cut = max(1, int(h * w * VBENCH_TOP_FRACTION))
    rad = np.sqrt((pair_flows(grey, cache=cache).astype(np.float64) ** 2).sum(-1)).reshape(len(grey) - 1, -1)  # [F-1, h*w]
    top = -np.sort(-rad, axis=1)[:, :cut].mean(1)  # [F-1]: mean of each pair's top 5%
    return float((top > thres).sum() >= count_num)


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


def warping_error(video: np.ndarray, flow_max_side: int = FLOW_MAX_SIDE, cache: FlowCache | None = None) -> float:
    """Occlusion-masked mean absolute error of frame t warped onto t+1 by Farneback flow, [0, 1] units,
    at flow resolution (long side <= FLOW_MAX_SIDE)."""
    v = _check(video)
    if len(v) < 2:
        return 0.0
    v = downscale(v, flow_size(*v.shape[1:3], flow_max_side))
    grey = grey_frames(v, flow_max_side)
    backs, fwds = pair_flows(grey, backward=True, cache=cache), pair_flows(grey, cache=cache)  # t+1 -> t, t -> t+1
    total, count = 0.0, 0
    for t in range(len(v) - 1):
        valid = valid_flow_mask(backs[t], fwds[t])
        warped = warp_backward(v[t], backs[t]).astype(np.float32)
        err = np.abs(warped - v[t + 1].astype(np.float32)).mean(-1) / 255.0  # [H, W]
        total += float(err[valid].sum())
        count += int(valid.sum())
    return total / count if count else 0.0


def video_metrics(video: np.ndarray, flow_max_side: int = FLOW_MAX_SIDE, fps: float = VBENCH_FPS) -> dict[str, float]:
    """All weight-free metrics of one video (the registry's "video" metrics, same names), sharing one FlowCache."""
    cache = FlowCache()
    return {
        "flow_magnitude": flow_magnitude(video, flow_max_side, cache),
        "dynamic_degree_flow": dynamic_degree_flow(video, fps, flow_max_side, cache),
        "frame_diff_motion": frame_diff_motion(video),
        "flicker": flicker(video),
        "warping_error": warping_error(video, flow_max_side, cache),
    }
