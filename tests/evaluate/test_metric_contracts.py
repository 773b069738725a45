"""The invariance battery: each registered metric's contract (stages/evaluate/metrics/registry.py), measured.

On one clip of each subject kind of the sample generator (true masks), at 17 frames:
- a moving intact clip must never be beaten by a copy that moves less or differently without being
  better made: frozen (frame 0 repeated), doubled (each frame shown twice: 2F frames, the same content
  at half speed; not truncated, since truncating keeps only the first half of the clip and would mix a
  change of content into a test of motion) and subsampled (every 2nd frame: the same content at
  double speed), masks transformed the same way;
- every structure-broken twin (detach, jump, stretch, vanish) must rank below intact on HEADLINE;
- the `motion_confounded` flag is what the battery measures: every metric flagged False passes it, and
  every metric flagged True fails it (some copy beats the intact clip on some subject kind).
"Beats" means strictly better by more than a 1e-9 relative margin, on finite values: NaN is
"undefined" (a subject that never moves has no deformation per motion), never a best.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.evaluate.metrics import registry, structure, video

FRAMES = 17  # the twins' break starts at frame 6: 11 broken frames, enough for every break's cycle
CLIPS = (0, 1, 2)  # stick figure, quadruped, blob: one of each subject kind
COPIES = ("frozen", "doubled", "subsampled")
MARGIN = 1e-9  # relative: a tie (the doubled copy's identical pairs) is not a win


def copies(frames: np.ndarray, masks: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The battery's copies of one clip (frames uint8 [F, H, W, 3], masks bool [F, H, W]), masks alike."""
    def each(fn):
        return fn(frames), fn(masks)

    return {
        "frozen": each(lambda x: np.repeat(x[:1], len(x), axis=0)),
        "doubled": each(lambda x: np.repeat(x, 2, axis=0)),
        "subsampled": each(lambda x: x[::2]),
    }


def beats(value: float, reference: float, direction: str | None) -> bool:
    """Is `value` strictly better than `reference` (finite both; no direction: nothing is better)?"""
    if direction is None or not (math.isfinite(value) and math.isfinite(reference)):
        return False
    margin = MARGIN * max(1.0, abs(reference))
    return value > reference + margin if direction == "higher" else value < reference - margin


@pytest.fixture(scope="module")
def scores(sample_generator):
    """{(clip, "intact" | copy | break): registry.measure(frames, true masks)}."""
    out = {}
    for index in CLIPS:
        intact = sample_generator.render_twin(index, "intact", frames=FRAMES)
        videos = {"intact": (intact.frames, intact.masks), **copies(intact.frames, intact.masks)}
        for broken in sample_generator.BREAKS:
            twin = sample_generator.render_twin(index, broken, frames=FRAMES)
            videos[broken] = (twin.frames, twin.masks)
        for name, (frames, masks) in videos.items():
            out[index, name] = registry.measure(frames, masks)
    return out


def _battery_wins(scores, name: str) -> list[str]:
    """Every (clip, copy) whose copy beats the intact clip on metric `name`."""
    d = registry.METRICS[name].direction
    return [f"clip {i} {c}: {scores[i, c][name]:.4g} vs intact {scores[i, 'intact'][name]:.4g}"
            for i in CLIPS for c in COPIES if beats(scores[i, c][name], scores[i, "intact"][name], d)]


def test_the_copies_move_as_the_battery_says(scores):
    """The battery tests what it claims: intact clips move; frozen not at all, doubled half as much (its
    still pairs move 0), subsampled more (Farneback falls short of the true 2x on the walker's fast limbs)."""
    for i in CLIPS:
        motion = {k: scores[i, k][registry.MOTION] for k in ("intact",) + COPIES}
        assert motion["intact"] > 0.5, motion  # reference px per pair
        assert motion["frozen"] == 0.0, motion  # identical frames: exactly zero flow
        assert motion["doubled"] == pytest.approx(motion["intact"] * (FRAMES - 1) / (2 * FRAMES - 1), rel=0.05), motion
        assert motion["subsampled"] > 1.15 * motion["intact"], motion


@pytest.mark.parametrize("name", list(registry.METRICS))
def test_motion_confounded_flag_is_what_the_battery_measures(scores, name):
    metric = registry.METRICS[name]
    for i in CLIPS:
        intact = scores[i, "intact"][name]
        assert math.isfinite(intact), f"clip {i}: {name} is undefined on the moving intact clip"
    wins = _battery_wins(scores, name)
    if metric.motion_confounded:
        assert wins, f"{name} is flagged motion_confounded but no copy beats the intact clip: unflag it"
    else:
        assert not wins, f"{name} is not flagged motion_confounded but: " + "; ".join(wins)


@pytest.mark.parametrize("broken", ["detach", "jump", "stretch", "vanish"])
def test_headline_ranks_every_break_below_intact(scores, sample_generator, broken):
    assert broken in sample_generator.BREAKS
    headline = registry.METRICS[registry.HEADLINE]
    for i in CLIPS:
        intact, value = scores[i, "intact"][registry.HEADLINE], scores[i, broken][registry.HEADLINE]
        assert beats(intact, value, headline.direction), f"clip {i}: {registry.HEADLINE} intact {intact:.4f} vs {broken} {value:.4f}"


def test_headline_and_motion_are_what_the_report_needs():
    headline, motion = registry.METRICS[registry.HEADLINE], registry.METRICS[registry.MOTION]
    assert headline.kind == "structure" and headline.direction is not None and not headline.motion_confounded
    assert motion.kind == "video" and motion.direction is None


def test_registry_contract_is_consistent_with_the_modules():
    """Every metric has a kind, a direction (or None), a glossary line and a range; the modules'
    DIRECTIONS and *_metrics() functions name exactly the registry's metrics of their kind."""
    for name, m in registry.METRICS.items():
        assert m.name == name and m.kind in ("video", "structure") and m.direction in ("higher", "lower", None)
        assert m.measures and m.range
        if m.direction is None:
            assert not m.motion_confounded  # a descriptive measure is never ranked, so never confounded
    assert registry.directions() == {**video.DIRECTIONS, **structure.DIRECTIONS}
    rng = np.random.default_rng(0)
    frames = (rng.random((3, 16, 16, 3)) * 255).astype(np.uint8)
    masks = np.zeros((3, 16, 16), bool)
    masks[:, 4:10, 4:10] = True
    assert list(video.video_metrics(frames)) == registry.video_metric_names()
    assert list(structure.structure_metrics(masks, frames)) == registry.structure_metric_names()
    assert set(registry.measure(frames)) == set(registry.video_metric_names())
    assert list(registry.measure(frames, masks)) == list(registry.METRICS)
    assert set(registry.CORPUS_DIRECTIONS).isdisjoint(registry.METRICS)
