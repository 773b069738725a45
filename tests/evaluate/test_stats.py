"""stages/evaluate/stats.py: intervals cover the truth, paired differences see a real shift and call noise noise."""

from __future__ import annotations

import numpy as np

from stages.evaluate.stats import bootstrap, paired_difference, verdict


def _draw(rng, clips: int, seeds: int, shift: float = 0.0, clip_effects=None) -> dict:
    effects = clip_effects if clip_effects is not None else rng.normal(0, 1.0, clips)
    return {(f"c{i}", s): float(effects[i] + shift + rng.normal(0, 0.1)) for i in range(clips) for s in range(seeds)}


def test_the_interval_covers_the_mean_and_narrows_with_more_clips():
    rng = np.random.default_rng(0)
    small, large = bootstrap(_draw(rng, 8, 2)), bootstrap(_draw(rng, 64, 2))
    assert small.low <= small.mean <= small.high and small.n == 16
    assert (large.high - large.low) < (small.high - small.low)


def test_pairing_finds_a_shift_the_clip_spread_would_hide():
    """Clip effects (sd 1) dwarf a 0.2 shift: unpaired intervals overlap, the paired difference excludes 0."""
    rng = np.random.default_rng(1)
    effects = rng.normal(0, 1.0, 12)
    ref, model = _draw(rng, 12, 3, 0.0, effects), _draw(rng, 12, 3, 0.2, effects)
    a, b = bootstrap(ref), bootstrap(model)
    assert a.high > b.low  # the means alone cannot tell them apart
    diff = paired_difference(model, ref)
    assert diff.excludes_zero() and 0.1 < diff.mean < 0.3
    assert verdict(diff, "higher") == "better" and verdict(diff, "lower") == "worse" and verdict(diff, None) == "differs"


def test_the_same_distribution_twice_is_within_noise():
    rng = np.random.default_rng(2)
    effects = rng.normal(0, 1.0, 10)
    diff = paired_difference(_draw(rng, 10, 2, 0.0, effects), _draw(rng, 10, 2, 0.0, effects))
    assert not diff.excludes_zero() and verdict(diff, "higher") == "within noise"


def test_missing_and_non_finite_values_are_left_out():
    values = {("a", 0): 1.0, ("a", 1): float("nan"), ("b", 0): 3.0}
    iv = bootstrap(values)
    assert iv.n == 2 and iv.mean == 2.0
    assert bootstrap({}) is None and verdict(None, "higher") == "n/a"
    assert paired_difference({("a", 0): 1.0}, {("b", 0): 1.0}) is None  # no shared (clip, seed) pair
