"""J, F and J&F (stages/evaluate/metrics/vos.py) point the right way on masks with known answers."""

import numpy as np
import pytest

from stages.evaluate.metrics.vos import (
    boundary,
    boundary_f,
    clip_scores,
    default_tolerance,
    dilate,
    mean_scores,
    region_similarity,
)

H, W = 64, 96


def disc(cx: float, cy: float, r: float, h: int = H, w: int = W) -> np.ndarray:
    ys, xs = np.mgrid[:h, :w]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2


def test_perfect_masks_score_one():
    m = disc(40, 30, 12)
    assert region_similarity(m, m) == 1.0
    assert boundary_f(m, m) == 1.0
    s = clip_scores(np.stack([m, m, m]), np.stack([m, m, m]))
    assert (s.j, s.f, s.jf, s.frames) == (1.0, 1.0, 1.0, 3)


def test_iou_is_exact_on_rectangles():
    a = np.zeros((H, W), bool)
    b = np.zeros((H, W), bool)
    a[10:20, 10:30] = True  # 200 px
    b[10:20, 20:40] = True  # 200 px, 100 shared
    assert region_similarity(a, b) == pytest.approx(100 / 300)


def test_shift_lowers_both_and_more_shift_lowers_more():
    true = disc(40, 30, 12)
    small, big = np.roll(true, 3, axis=1), np.roll(true, 8, axis=1)
    j_small, j_big = region_similarity(small, true), region_similarity(big, true)
    f_small, f_big = boundary_f(small, true), boundary_f(big, true)
    assert 1.0 > j_small > j_big > 0.0
    assert 1.0 > f_small > f_big >= 0.0


def test_boundary_tolerance_forgives_a_one_pixel_shift_only():
    true = disc(40, 30, 12)
    shifted = np.roll(true, 1, axis=1)
    assert boundary_f(shifted, true, tolerance=1) == 1.0  # within the match radius
    assert boundary_f(shifted, true, tolerance=0) < 1.0
    assert region_similarity(shifted, true) < 1.0  # J has no tolerance


def test_eroded_mask_scores_lower():
    true = disc(40, 30, 14)
    eroded = disc(40, 30, 9)
    assert region_similarity(eroded, true) == pytest.approx(eroded.sum() / true.sum())
    assert boundary_f(eroded, true, tolerance=2) < 0.5  # every boundary pixel is 5 px off


def test_empty_versus_full_and_empty_versus_empty():
    empty, full = np.zeros((H, W), bool), np.ones((H, W), bool)
    subject = disc(40, 30, 12)
    assert region_similarity(empty, full) == 0.0
    assert boundary_f(empty, subject) == 0.0 and boundary_f(subject, empty) == 0.0
    assert clip_scores(full[None], subject[None]).jf < 0.3  # the frame marked everywhere
    assert region_similarity(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0


def test_boundary_and_dilation_shapes():
    m = np.zeros((8, 8), bool)
    m[2:6, 2:6] = True
    b = boundary(m)
    assert b.sum() == 12 and not b[3:5, 3:5].any()  # a 4x4 square's ring
    assert boundary(np.ones((4, 4), bool)).sum() == 12  # the frame edge counts as outside
    d = dilate(m, 1)
    assert d.sum() == 36 and d[1:7, 1:7].all()


def test_davis_tolerance_and_clip_means():
    assert default_tolerance(128, 192) == 2  # ceil(0.008 * 230.8)
    assert default_tolerance(8, 8) == 1
    true = np.stack([disc(40, 30, 12)] * 2)
    pred = np.stack([true[0], np.zeros((H, W), bool)])
    s = clip_scores(pred, true)
    assert s.j == pytest.approx(0.5) and s.f == pytest.approx(0.5) and s.frames == 2
    m = mean_scores([s, clip_scores(true, true)])
    assert m.jf == pytest.approx(0.75) and m.frames == 4


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one shape"):
        region_similarity(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="3-D"):
        clip_scores(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
