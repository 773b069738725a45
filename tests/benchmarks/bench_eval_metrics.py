"""Evaluation metrics: Farneback flow at full resolution vs at reduced size (FLOW_MAX_SIDE), side by side.

Times video_metrics + structure_metrics (the per-sample work of `sam2videox evaluate` besides sampling,
tracking and FVD) on one synthetic video: a smooth texture panning under a moving square subject,
interleaved, and prints seconds per video, the ratio, and how far the metric values move.

    python tests/benchmarks/bench_eval_metrics.py [--frames 49 --height 480 --width 720] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from stages.evaluate.metrics.structure import structure_metrics  # noqa: E402
from stages.evaluate.metrics.video import FLOW_MAX_SIDE, video_metrics  # noqa: E402


def synthetic(frames: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((h, w + 2 * frames, 3)) * 255).astype(np.uint8), (9, 9), 2.0)
    sub = cv2.GaussianBlur((rng.random((h // 3, w // 4, 3)) * 255).astype(np.uint8), (9, 9), 2.0)
    video, masks = [], []
    for t in range(frames):
        f = base[:, 2 * t : 2 * t + w].copy()  # background pans 2 px/frame
        m = np.zeros((h, w), bool)
        y0, x0 = h // 3, w // 8 + 4 * t  # subject moves 4 px/frame the other way
        f[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = sub
        m[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]] = True
        video.append(f)
        masks.append(m)
    return np.stack(video), np.stack(masks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="cv2.setNumThreads (0: OpenCV's default)")
    args = ap.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    print(f"cv2 threads {cv2.getNumThreads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load {os.getloadavg()[0]:.1f}")
    video, masks = synthetic(args.frames, args.height, args.width)
    sides = {"full": max(args.height, args.width), f"reduced ({FLOW_MAX_SIDE})": FLOW_MAX_SIDE}
    times: dict[str, list[float]] = {k: [] for k in sides}
    values: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, side in sides.items():  # interleaved: load changes hit both alike
            t = time.perf_counter()
            values[name] = video_metrics(video, side) | structure_metrics(masks, video, side)
            times[name].append(time.perf_counter() - t)
    for name in sides:
        print(f"{name:>14}: {min(times[name]):6.2f} s/video (best of {args.repeats})  {json.dumps({k: round(v, 4) for k, v in values[name].items()})}")
    full, red = sides
    print(f"ratio full / reduced: {min(times[full]) / min(times[red]):.2f}x")


if __name__ == "__main__":
    main()
