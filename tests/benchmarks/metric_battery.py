"""The metric invariance battery as a table: every registered metric on the sample generator's intact
clips, their frozen / doubled / subsampled copies and their structure-broken twins (true masks).

Rows are metrics (registry order, with direction and the motion_confounded flag), columns the mean
over the clips of each variant; what tests/evaluate/test_metric_contracts.py asserts, shown.

    python tests/benchmarks/metric_battery.py [--clips 3] [--frames 17] [--per-clip]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "evaluate"))
from conftest import load_sample_generator  # noqa: E402
from test_metric_contracts import COPIES, copies  # noqa: E402

from stages.evaluate.metrics import registry  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--per-clip", action="store_true", help="also print one table per clip")
    args = ap.parse_args()
    gen = load_sample_generator()
    t0 = time.perf_counter()
    columns = ("intact",) + COPIES + gen.BREAKS
    scores: dict[tuple[int, str], dict[str, float]] = {}
    for index in range(args.clips):
        intact = gen.render_twin(index, "intact", frames=args.frames)
        videos = {"intact": (intact.frames, intact.masks), **copies(intact.frames, intact.masks)}
        for broken in gen.BREAKS:
            twin = gen.render_twin(index, broken, frames=args.frames)
            videos[broken] = (twin.frames, twin.masks)
        for name, (frames, masks) in videos.items():
            scores[index, name] = registry.measure(frames, masks)
    print(f"{args.clips} clips x {args.frames} frames, {time.perf_counter() - t0:.1f} s; HEADLINE = {registry.HEADLINE}, MOTION = {registry.MOTION}")
    tables = [("mean over clips", range(args.clips))] + ([(f"clip {i}", [i]) for i in range(args.clips)] if args.per_clip else [])
    for title, clips in tables:
        print(f"\n{title}\n")
        print("| metric | dir | confounded | " + " | ".join(columns) + " |")
        print("|---|---|---|" + "---|" * len(columns))
        for name, m in registry.METRICS.items():
            cells = []
            for col in columns:
                vals = [scores[i, col][name] for i in clips]
                finite = [v for v in vals if math.isfinite(v)]
                cells.append(f"{np.mean(finite):.4g}" if len(finite) == len(vals) else ("NaN" if not finite else f"{np.mean(finite):.4g}*"))
            print(f"| {name} | {m.direction or '-'} | {'yes' if m.motion_confounded else 'no'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
