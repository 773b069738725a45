"""stages/evaluate/metrics/video.py on synthetic videos with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stages.evaluate.metrics.video import DIRECTIONS, DYNAMIC_THRESHOLD, dynamic_degree, flicker, video_metrics, warping_error


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture uint8 [h, w, 3]: trackable by Farneback (no flat regions)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (7, 7), 1.5)


def _panning(frames: int = 6, step: int = 2, h: int = 48, w: int = 64) -> np.ndarray:
    big = _texture(h, w + step * frames)
    return np.stack([big[:, step * t : step * t + w] for t in range(frames)])  # content moves left by `step` px/frame


def test_static_video_scores_zero():
    video = np.repeat(_texture(48, 64)[None], 5, axis=0)
    scores = video_metrics(video)
    assert scores["flicker"] == 0.0 and scores["dynamic_degree"] == 0.0
    assert scores["warping_error"] == pytest.approx(0.0, abs=1e-4)  # zero flow, up to bilinear round-off
    assert set(DIRECTIONS) == set(video_metrics(video))


def test_flicker_is_the_mean_absolute_frame_difference():
    video = np.zeros((3, 4, 4, 3), np.uint8)
    video[1] = 51  # 0 -> 0.2 -> 0: both pairs differ by 0.2
    assert flicker(video) == pytest.approx(0.2)
    assert dynamic_degree(video) == 1.0


def test_dynamic_degree_is_the_share_of_moving_pairs():
    still = _texture(32, 32)
    moved = np.roll(still, 5, axis=1)
    video = np.stack([still, still, still, moved, moved])  # pairs: same, same, moved, same
    assert dynamic_degree(video) == 0.25
    assert dynamic_degree(video, threshold=1.0) == 0.0  # nothing moves more than everything
    assert 0 < DYNAMIC_THRESHOLD < 0.1


@pytest.mark.parametrize("h, w", [(48, 64), (120, 400)])  # the second is above FLOW_MAX_SIDE: flow at reduced size
def test_warping_error_is_small_for_a_known_shift_and_large_for_noise(h, w):
    video = _panning(h=h, w=w)
    raw = flicker(video)  # what the error would be without any motion compensation
    warped = warping_error(video)
    assert warped < 0.25 * raw, (warped, raw)
    rng = np.random.default_rng(1)
    noise = (rng.random((6, h, w, 3)) * 255).astype(np.uint8)  # no motion explains independent noise
    assert warping_error(noise) > 5 * warped


def test_single_frame_and_bad_input():
    one = _texture(16, 16)[None]
    assert video_metrics(one) == {"flicker": 0.0, "dynamic_degree": 0.0, "warping_error": 0.0}
    with pytest.raises(ValueError, match=r"video must be uint8 \[F, H, W, 3\]"):
        flicker(np.zeros((2, 8, 8, 3), np.float32))
