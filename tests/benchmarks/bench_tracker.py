"""Seconds per clip: our BidirectionalTracker vs the stock SAM2VideoPredictor used the documented way.

Same random-weight model object, same clips, one process, runs interleaved clip by clip (so
background load hits both alike). Stock, per clip: frames written as a JPEG folder (<t>.jpg,
as SAM2's README extracts them with ffmpeg), `init_state`, `add_new_points_or_box` (a box) on
frame 0, `propagate_in_video`; a fresh state, `add_new_mask` on the last frame with the forward
mask, `propagate_in_video(reverse=True)`; then its maskmem features are read from the state.
Ours: `BidirectionalTracker.track(frames, box)` on the decoded uint8 frames.

    python tests/benchmarks/bench_tracker.py --model sam2.1_hiera_t --image-size 256 --frames 49 --clips 2
    python tests/benchmarks/bench_tracker.py --device cuda --model sam2.1_hiera_l --image-size 1024 --clips 20

On CUDA both sides run under bf16 autocast (stock inside `torch.autocast`, as SAM2's examples
do) and peak GPU memory is reported. Nothing here imports ray (the GPU machines lack it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from stages.extract.prompts import Prompt  # noqa: E402
from stages.extract.sam2_model import build_sam2, describe  # noqa: E402
from stages.extract.tracker import BidirectionalTracker  # noqa: E402


def make_clip(seed: int, frames: int, h: int, w: int) -> tuple[torch.Tensor, list[float]]:
    """A textured background with a disc crossing it; returns uint8 [F, H, W, 3] and a box on frame 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, 60 + 40 * np.sin(xx / 23 + yy / 31)], -1)
    r = min(h, w) * 0.15
    cx, cy = w * rng.uniform(0.25, 0.4), h * rng.uniform(0.35, 0.65)
    vx, vy = w * 0.3 / frames, h * rng.uniform(-0.1, 0.1) / frames
    colour = rng.uniform(150, 255, size=3)
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        img = base.copy()
        img[(xx - cx - vx * t) ** 2 + (yy - cy - vy * t) ** 2 < r * r] = colour
        out[t] = img.clip(0, 255).astype(np.uint8)
    return torch.from_numpy(out), [cx - r, cy - r, cx + r, cy + r]


class FrameCounter:
    """Counts frames through `forward_image` (a pass-through wrapper on the instance)."""

    def __init__(self, model):
        self.model, self.frames, self._orig = model, 0, model.forward_image

    def __enter__(self):
        def counted(images):
            self.frames += images.shape[0]
            return self._orig(images)

        self.model.forward_image = counted
        return self

    def __exit__(self, *exc):
        del self.model.forward_image


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(tracker: BidirectionalTracker, frames: torch.Tensor, box: list[float]) -> dict:
    device = tracker.model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FrameCounter(tracker.model) as counter:
        sync(device)
        t0 = time.perf_counter()
        result = tracker.track(frames, Prompt("manifest", box=box))
        sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"s": seconds, "encoded": counter.frames, "gib": peak, "masks": result.masks_fwd, "stats": result.stats}


def run_stock(model, frames: torch.Tensor, box: list[float], dtype: torch.dtype) -> dict:
    device = model.device
    n = frames.shape[0]
    autocast = torch.autocast("cuda", dtype=dtype) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as folder, FrameCounter(model) as counter, autocast:
        sync(device)
        t0 = time.perf_counter()
        for t in range(n):
            Image.fromarray(frames[t].numpy()).save(os.path.join(folder, f"{t}.jpg"), quality=95)
        t_jpeg = time.perf_counter() - t0
        state = model.init_state(video_path=folder)
        model.add_new_points_or_box(state, 0, 1, box=box)
        masks = {t: (m[0, 0] > 0).cpu() for t, _, m in model.propagate_in_video(state)}
        fwd = _stock_features(state, n)
        back = model.init_state(video_path=folder)
        model.add_new_mask(back, n - 1, 1, masks[n - 1])
        for _ in model.propagate_in_video(back, start_frame_idx=n - 1, reverse=True):
            pass
        bwd = _stock_features(back, n)
        sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    assert fwd.shape[0] == bwd.shape[0] == n
    return {"s": seconds, "jpeg_s": t_jpeg, "encoded": counter.frames, "gib": peak,
            "masks": torch.stack([masks[t] for t in range(n)])}  # fmt: skip


def _stock_features(state: dict, n: int) -> torch.Tensor:
    """maskmem_features of every frame from the stock state, as float32 CPU [F, C, h, w]."""
    outs = state["output_dict_per_obj"][0]
    merged = {**outs["non_cond_frame_outputs"], **outs["cond_frame_outputs"]}
    return torch.stack([merged[t]["maskmem_features"][0].float().cpu() for t in range(n)])


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sam2.1_hiera_t")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--image-batch", type=int, default=8)
    ap.add_argument("--feature", default="maskmem", choices=["maskmem", "memory_attention", "backbone"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = build_sam2(args.model, image_size=args.image_size, device=device, seed=0)
    tracker = BidirectionalTracker(model, feature=args.feature, image_batch=args.image_batch, dtype=dtype)
    print(f"model {args.model} {describe(model)} | device {device} ({torch.get_num_threads()} CPU threads, "
          f"load avg {os.getloadavg()[0]:.1f}) | clips {args.clips} x {args.frames} frames {args.height}x{args.width}")  # fmt: skip

    warm, warm_box = make_clip(99, 3, args.height, args.width)  # first-call overheads out of the figures
    run_ours(tracker, warm, warm_box)
    run_stock(model, warm, warm_box, dtype)

    ours, stock = [], []
    for c in range(args.clips):
        frames, box = make_clip(c, args.frames, args.height, args.width)
        ours.append(run_ours(tracker, frames, box))
        stock.append(run_stock(model, frames, box, dtype))
        o, s = ours[-1], stock[-1]
        print(f"clip {c}: ours {o['s']:.2f} s ({o['encoded']} frames encoded, peak state "
              f"{o['stats']['peak_maskmem_frames']} memories) | stock {s['s']:.2f} s (JPEG {s['jpeg_s']:.2f} s, "
              f"{s['encoded']} frames encoded) | forward-mask IoU ours vs stock {iou(o['masks'], s['masks']):.3f}")  # fmt: skip

    o_s, s_s = statistics.mean(r["s"] for r in ours), statistics.mean(r["s"] for r in stock)
    s_nojpeg = statistics.mean(r["s"] - r["jpeg_s"] for r in stock)
    parts = {k: statistics.mean(r["stats"][k] for r in ours) for k in ("encode_s", "forward_s", "backward_s")}
    print(f"seconds/clip: ours {o_s:.2f} (encode {parts['encode_s']:.2f}, forward {parts['forward_s']:.2f}, "
          f"backward {parts['backward_s']:.2f}) | stock {s_s:.2f} (without JPEG writing {s_nojpeg:.2f})")  # fmt: skip
    print(f"speed-up stock/ours: {s_s / o_s:.2f}x (without JPEG writing {s_nojpeg / o_s:.2f}x)")
    print(f"clips/hour: ours {3600 / o_s:.0f} | stock {3600 / s_s:.0f}; frames/s ours {args.frames / o_s:.1f}")
    if device.type == "cuda":
        print(f"peak GPU memory GiB: ours {max(r['gib'] for r in ours):.2f} | stock {max(r['gib'] for r in stock):.2f}")


if __name__ == "__main__":
    main()
