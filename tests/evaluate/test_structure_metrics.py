"""stages/evaluate/metrics/structure.py: unit cases, and the ground truth of the sample corpus's
structure-broken twins: each metric separates the intact clip from the break it is built to see."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stages.evaluate.metrics.structure import (
    DIRECTIONS, area_stability, boundary_distance, components, deformation_per_motion, fragmentation, mask_consistency, presence,
    structure_metrics, structure_score,
)

FRAMES = 17  # break starts at frame 6: 11 broken frames, enough for every break's cycle
# metric -> the breaks it must separate from the intact twin on every subject kind
TARGETS = {
    "structure_score": ("detach", "jump", "stretch", "vanish"),  # the headline (also in test_metric_contracts)
    # vanish is presence's (its remaining pairs are intact), detach fragmentation's (the blob's lobe deforms only while it
    # drifts off: 4 pairs, which a 33-frame clip dilutes below intact)
    "deformation_per_motion": ("jump", "stretch"),
    "mask_consistency": ("jump", "vanish"),
    "fragmentation": ("detach",),
    "area_stability": ("stretch",),
    "presence": ("vanish",),
}


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


@pytest.fixture(scope="module")
def twin_scores(sample_generator):
    """{(clip index, break): structure_metrics(true masks, frames)} for one clip of each subject kind."""
    gen = sample_generator
    scores = {}
    for index in range(3):
        for broken in ("intact",) + gen.BREAKS:
            twin = gen.render_twin(index, broken, frames=FRAMES)
            scores[index, broken] = structure_metrics(twin.masks, twin.frames)
    return scores


@pytest.mark.parametrize("metric", sorted(TARGETS))
def test_each_metric_ranks_intact_above_its_broken_twins(twin_scores, metric):
    better = (lambda a, b: a > b) if DIRECTIONS[metric] == "higher" else (lambda a, b: a < b)
    for index in range(3):
        intact = twin_scores[index, "intact"][metric]
        for broken in TARGETS[metric]:
            value = twin_scores[index, broken][metric]
            assert better(intact, value), f"clip {index}: {metric} intact {intact:.4f} vs {broken} {value:.4f}"


def test_intact_twins_are_whole_and_always_present(twin_scores):
    for index in range(3):
        s = twin_scores[index, "intact"]
        assert s["fragmentation"] == 0.0 and s["presence"] == 1.0
        assert 0.5 < s["mask_consistency"] <= 1.0 and 0.9 < s["area_stability"] <= 1.0
        assert 0.0 < s["deformation_per_motion"] < 1.0 and s["structure_score"] == pytest.approx(1 / (1 + s["deformation_per_motion"]))


def test_a_still_disc_is_whole_and_its_deformation_per_motion_undefined():
    """A subject that never moves: whole, present, constant; how much it deforms per motion is undefined (NaN),
    so a still video is never the best on the motion-aware scores."""
    masks = np.repeat(_disc(40, 60, 30, 20, 8)[None], 5, axis=0)
    frames = np.repeat(_textured_disc_frames(masks[:1], 0), 5, axis=0)
    scores = structure_metrics(masks, frames)
    assert {k: scores[k] for k in ("mask_consistency", "fragmentation", "area_stability", "presence")} == {
        "mask_consistency": 1.0, "fragmentation": 0.0, "area_stability": 1.0, "presence": 1.0}
    assert np.isnan(scores["deformation_per_motion"]) and np.isnan(scores["structure_score"])
    assert np.isnan(structure_metrics(masks)["deformation_per_motion"])  # without frames: no motion measured
    assert set(DIRECTIONS) == set(scores)


def _textured_disc_frames(masks: np.ndarray, step: int, seed: int = 0) -> np.ndarray:
    """Frames [F, H, W, 3]: a grey background, and inside each mask a texture moving `step` px/frame with it."""
    f, h, w = masks.shape
    rng = np.random.default_rng(seed)
    tex = np.asarray(cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (5, 5), 1.0))
    frames = np.full((f, h, w, 3), 40, np.uint8)
    for t in range(f):
        frames[t][masks[t]] = np.roll(tex, step * t, axis=1)[masks[t]]
    return frames


def _ellipses(rx: list[float], step: int, h: int = 48, w: int = 96, ry: float = 10) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([((x - 24 - step * t) / r) ** 2 + ((y - h / 2) / ry) ** 2 <= 1 for t, r in enumerate(rx)])


def test_deformation_per_motion_is_low_for_a_rigid_move_and_high_for_a_stretch():
    """A textured ellipse moving 3 px/frame does not deform; the same move while it widens 2 px/frame
    does; the same widening on a subject that moves 1 px/frame is more deformation per motion. Lower is better."""
    def dpm(rx, step):
        masks = _ellipses(rx, step)
        return deformation_per_motion(masks, _textured_disc_frames(masks, step))

    widening = [10, 12, 14, 16, 18, 20]
    rigid, stretch, slow_stretch = dpm([10] * 6, 3), dpm(widening, 3), dpm(widening, 1)
    assert 0.0 <= rigid < 0.02 and stretch > 0.15 and slow_stretch > 1.5 * stretch, (rigid, stretch, slow_stretch)
    assert DIRECTIONS["deformation_per_motion"] == "lower" and DIRECTIONS["structure_score"] == "higher"
    rigid_masks, stretched = _ellipses([10] * 6, 3), _ellipses(widening, 3)
    s_rigid = structure_score(rigid_masks, _textured_disc_frames(rigid_masks, 3))
    assert s_rigid == pytest.approx(1 / (1 + rigid)) and s_rigid > structure_score(stretched, _textured_disc_frames(stretched, 3))


def test_boundary_distance_and_an_absent_subject():
    a = _disc(40, 60, 30, 20, 8)
    assert boundary_distance(a, a) == 0.0
    assert boundary_distance(a, np.roll(a, 3, axis=1)) == pytest.approx(3 * 2 / np.pi, rel=0.25)  # mean |cos| of a shift
    empty = np.zeros((4, 40, 60), bool)
    frames = np.zeros((4, 40, 60, 3), np.uint8)
    assert structure_score(empty, frames) == 0.0 and np.isnan(deformation_per_motion(empty, frames))


def test_plain_iou_of_a_moving_disc():
    a, b = _disc(40, 60, 20, 20, 8), _disc(40, 60, 24, 20, 8)
    expected = (a & b).sum() / (a | b).sum()
    assert mask_consistency(np.stack([a, b])) == pytest.approx(expected)


@pytest.mark.parametrize("k", [1, 5])  # k=5: 200 x 400, above FLOW_MAX_SIDE, flow at reduced size and upscaled
def test_flow_warping_follows_a_moving_textured_disc(k):
    """A textured disc moving 3k px/frame: flow-warped IoU is close to 1, plain IoU is not."""
    rng = np.random.default_rng(0)
    tex = (rng.random((40 * k, 80 * k, 3)) * 255).astype(np.uint8)
    tex = np.asarray(cv2.GaussianBlur(tex, (5 * k, 5 * k), 1.0 * k))
    masks, frames = [], []
    for t in range(5):
        m = _disc(40 * k, 80 * k, (20 + 3 * t) * k, 20 * k, 9 * k)
        frame = np.full((40 * k, 80 * k, 3), 40, np.uint8)
        frame[m] = np.roll(tex, 3 * t * k, axis=1)[m]  # the texture moves with the disc
        masks.append(m)
        frames.append(frame)
    masks, frames = np.stack(masks), np.stack(frames)
    plain, warped = mask_consistency(masks), mask_consistency(masks, frames)
    assert warped > 0.9 and warped > plain + 0.1


def test_fragmentation_counts_pieces_and_ignores_speckle():
    two = _disc(40, 60, 15, 20, 7) | _disc(40, 60, 45, 20, 7)
    assert components(two) == 2
    speckled = _disc(40, 60, 30, 20, 12)
    speckled[0, 0] = True  # one stray pixel: below MIN_COMPONENT_PIXELS
    assert components(speckled) == 1
    masks = np.stack([two, two, _disc(40, 60, 30, 20, 10), np.zeros((40, 60), bool)])
    assert fragmentation(masks) == pytest.approx(2 / 3)  # absent frames do not count


def test_area_stability_and_presence():
    small, big = _disc(60, 60, 30, 30, 8), _disc(60, 60, 30, 30, 16)
    ratio = big.sum() / small.sum()
    assert area_stability(np.stack([small, big])) == pytest.approx(1 / ratio)
    empty = np.zeros_like(small)
    assert area_stability(np.stack([small, empty, small])) == 1.0  # no pair with both present
    assert presence(np.stack([small, empty, big, empty])) == 0.5


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ValueError, match="masks must be bool"):
        structure_metrics(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="frames must be uint8"):
        structure_metrics(np.zeros((2, 4, 5), bool), np.zeros((2, 4, 5, 3), np.float32))
