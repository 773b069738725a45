"""Uncertainty for the report: bootstrap intervals of a model's mean and of paired differences.

Every sample is one (clip, seed) of one model. Clips are the unit that varies between evaluations
(the held-out set is a draw of clips); seeds vary within a clip. Intervals therefore come from a
two-level bootstrap: resample clips with replacement, then within each drawn clip resample its
seeds, and take the mean of the drawn values. With one seed per clip this is the plain bootstrap
over clips.

A paired difference compares two models on the same (clip, seed) pairs (every model samples the same
first frames, captions and seeds), so the clip-to-clip spread cancels: the interval is of the mean of
per-sample differences model - reference, drawn the same way. A difference whose 95% interval
excludes 0 is a finding; otherwise it is "within noise".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DRAWS = 2000  # bootstrap draws: the 2.5% / 97.5% percentiles move by < 1% of the interval at this count
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int  # samples (clip, seed pairs) behind it

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def _grouped(values: dict[tuple[str, int], float]) -> list[np.ndarray]:
    """{(clip, seed): value} -> one array of finite values per clip (clips sorted; empty clips dropped)."""
    by_clip: dict[str, list[float]] = {}
    for (clip, _seed), v in sorted(values.items()):
        if v is not None and math.isfinite(v):
            by_clip.setdefault(clip, []).append(float(v))
    return [np.asarray(v) for v in by_clip.values()]


def bootstrap(values: dict[tuple[str, int], float], draws: int = DRAWS, level: float = LEVEL, seed: int = 0) -> Interval | None:
    """Mean of the values with a two-level (clips, then seeds) percentile bootstrap interval; None when empty.

    One clip: the interval comes from its seeds alone (or is the single value when it has one seed).
    """
    groups = _grouped(values)
    if not groups:
        return None
    n = sum(len(g) for g in groups)
    mean = float(np.mean(np.concatenate(groups)))
    rng = np.random.default_rng(seed)
    stats = np.empty(draws)
    for d in range(draws):
        picked = rng.integers(0, len(groups), len(groups))
        drawn = [groups[i][rng.integers(0, len(groups[i]), len(groups[i]))] for i in picked]
        stats[d] = np.mean(np.concatenate(drawn))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(mean, float(min(low, mean)), float(max(high, mean)), n)


def paired_difference(model: dict[tuple[str, int], float], reference: dict[tuple[str, int], float],
                      draws: int = DRAWS, level: float = LEVEL, seed: int = 0) -> Interval | None:
    """model - reference over the (clip, seed) pairs both have a finite value for, with its bootstrap interval."""
    shared = {k: model[k] - reference[k] for k in model.keys() & reference.keys()
              if _finite(model[k]) and _finite(reference[k])}
    return bootstrap(shared, draws, level, seed)


def verdict(diff: Interval | None, direction: str | None) -> str:
    """How the report reads a paired difference: "better" / "worse" (interval excludes 0, by the metric's
    direction), "differs" (excludes 0, no direction), "within noise", or "n/a"."""
    if diff is None:
        return "n/a"
    if not diff.excludes_zero():
        return "within noise"
    if direction is None:
        return "differs"
    up = diff.mean > 0
    return "better" if up == (direction == "higher") else "worse"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
