"""stages/evaluate/metrics/video.py on synthetic videos with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stages.evaluate.metrics import video
from stages.evaluate.metrics.video import (
    DIRECTIONS, FRAME_DIFF_THRESHOLD, dynamic_degree_flow, flicker, flow_magnitude, frame_diff_motion, pair_flows,
    video_metrics, warping_error,
)


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture uint8 [h, w, 3]: trackable by Farneback (no flat regions)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (7, 7), 1.5)


def _panning(frames: int = 6, step: int = 2, h: int = 48, w: int = 64, steps: list[int] | None = None) -> np.ndarray:
    """Content moving left by `step` px/frame (or by steps[t] between frame t and t+1)."""
    steps = steps if steps is not None else [step] * (frames - 1)
    big = _texture(h, w + sum(steps) + 1)
    offsets = np.concatenate([[0], np.cumsum(steps)]).astype(int)
    return np.stack([big[:, o : o + w] for o in offsets])


def test_static_video_scores_zero():
    video_ = np.repeat(_texture(48, 64)[None], 5, axis=0)
    scores = video_metrics(video_)
    assert scores["flicker"] == 0.0 and scores["frame_diff_motion"] == 0.0 and scores["dynamic_degree_flow"] == 0.0
    assert scores["flow_magnitude"] == 0.0  # identical frames: exactly zero flow
    assert scores["warping_error"] == pytest.approx(0.0, abs=1e-4)
    assert set(DIRECTIONS) <= set(scores) and set(DIRECTIONS) == {"flicker", "warping_error"}  # motion has no direction


def test_flicker_is_the_mean_absolute_frame_difference():
    video_ = np.zeros((3, 4, 4, 3), np.uint8)
    video_[1] = 51  # 0 -> 0.2 -> 0: both pairs differ by 0.2
    assert flicker(video_) == pytest.approx(0.2)
    assert frame_diff_motion(video_) == 1.0


def test_frame_diff_motion_is_the_share_of_pairs_that_differ():
    still = _texture(32, 32)
    moved = np.roll(still, 5, axis=1)
    video_ = np.stack([still, still, still, moved, moved])  # pairs: same, same, moved, same
    assert frame_diff_motion(video_) == 0.25
    assert frame_diff_motion(video_, threshold=1.0) == 0.0  # nothing moves more than everything
    assert 0 < FRAME_DIFF_THRESHOLD < 0.1


def test_flow_magnitude_is_the_shift_in_reference_pixels_at_any_resolution():
    """2 px/frame at a long side of 64 and 4 px/frame at 128 are the same motion: 2 * 360 / 64 reference px."""
    small, big = flow_magnitude(_panning(step=2, h=48, w=64)), flow_magnitude(_panning(step=4, h=96, w=128))
    assert small == pytest.approx(2 * 360 / 64, rel=0.15)
    assert big == pytest.approx(small, rel=0.1)
    wide = flow_magnitude(_panning(step=4, h=120, w=720))  # above FLOW_MAX_SIDE: flow at 60 x 360, 2 px there
    assert wide == pytest.approx(2.0, rel=0.15)
    assert flow_magnitude(_panning(step=1)) < small  # more motion, larger


def test_dynamic_degree_flow_follows_vbench_rule():
    """At 64 x 64 the threshold is 6 * 64 / 256 = 1.5 px; 16 frames need round(4 * 16 / 16) = 4 moving pairs."""
    kw = dict(h=64, w=64)
    assert dynamic_degree_flow(_panning(frames=16, step=3, **kw)) == 1.0
    assert dynamic_degree_flow(_panning(frames=16, step=1, **kw)) == 0.0  # every pair moves, but below threshold
    four, three = [3] * 4 + [0] * 11, [3] * 3 + [0] * 12
    assert dynamic_degree_flow(_panning(steps=four, **kw)) == 1.0
    assert dynamic_degree_flow(_panning(steps=three, **kw)) == 0.0  # one pair short of count_num
    # the same frames at 24 fps are sampled every 3rd frame (VBench's ~8 fps): 1 px/frame becomes 3 px/pair
    assert dynamic_degree_flow(_panning(frames=48, step=1, **kw), fps=24) == 1.0
    # at 4 fps the threshold doubles (max(1, 8 / fps)): 2 px/frame is dynamic at 8 fps, not at 4
    two = _panning(frames=16, step=2, **kw)
    assert dynamic_degree_flow(two, fps=8) == 1.0 and dynamic_degree_flow(two, fps=4) == 0.0
    assert dynamic_degree_flow(two[:1]) == 0.0


@pytest.mark.parametrize("h, w", [(48, 64), (120, 400)])  # the second is above FLOW_MAX_SIDE: flow at reduced size
def test_warping_error_is_small_for_a_known_shift_and_large_for_noise(h, w):
    video_ = _panning(h=h, w=w)
    raw = flicker(video_)  # what the error would be without any motion compensation
    warped = warping_error(video_)
    assert warped < 0.25 * raw, (warped, raw)
    rng = np.random.default_rng(1)
    noise = (rng.random((6, h, w, 3)) * 255).astype(np.uint8)  # no motion explains independent noise
    assert warping_error(noise) > 5 * warped


def test_pair_flows_are_cached_by_content_and_equal_to_farneback():
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in _panning()])
    first = pair_flows(grey)
    again = pair_flows(grey.copy())  # another array, same pixels: served from the cache, same values
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[2], video.farneback(grey[2], grey[3]))
    back = pair_flows(grey, backward=True)
    np.testing.assert_array_equal(back[2], video.farneback(grey[3], grey[2]))
    assert pair_flows(grey[:1]).shape == (0, *grey.shape[1:], 2)


def test_single_frame_and_bad_input():
    one = _texture(16, 16)[None]
    assert video_metrics(one) == {"flow_magnitude": 0.0, "dynamic_degree_flow": 0.0, "frame_diff_motion": 0.0, "flicker": 0.0,
                                  "warping_error": 0.0}
    with pytest.raises(ValueError, match=r"video must be uint8 \[F, H, W, 3\]"):
        flicker(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"video must be uint8 \[F, H, W, 3\]"):
        flow_magnitude(np.zeros((2, 8, 8), np.uint8))
