"""Seconds per clip: our BidirectionalTracker at several clip_batch sizes vs the stock SAM2VideoPredictor.

Same random-weight model object, same clips, one process, runs interleaved (so background load
hits every variant alike). Stock, per clip: frames written as a JPEG folder (<t>.jpg, as SAM2's
README extracts them with ffmpeg), `init_state`, `add_new_points_or_box` (a box) on frame 0,
`propagate_in_video`; a fresh state, `add_new_mask` on the last frame with the forward mask,
`propagate_in_video(reverse=True)`; then its maskmem features are read from the state.
Ours: `BidirectionalTracker.track_batch` on B clips of decoded uint8 frames (B = each
--clip-batch size; B = 1 is `track`).

The clips are taken in rounds of max(--clip-batch) clips (indices wrap round the --clips
distinct clips so every batch is full); in each round every B tracks those clips in batches of
B, then stock tracks each new distinct clip once (--no-stock skips it).

    python tests/benchmarks/bench_tracker.py --model sam2.1_hiera_t --image-size 256 --frames 49 --clips 4 --clip-batch 1,4 --no-stock --threads 1
    python tests/benchmarks/bench_tracker.py --device cuda --model sam2.1_hiera_l --image-size 1024 --frames 49 --clips 8 --clip-batch 1,4,8 --json out.json

On CUDA both sides run under --dtype autocast (stock inside `torch.autocast`, as SAM2's examples
do), every timed call is bracketed by torch.cuda.synchronize, and peak GPU memory is read per
call after torch.cuda.reset_peak_memory_stats. --json writes {"model", "image_size", "frames",
"clips", "device", "dtype", "ours": {"<B>": {"s_per_clip", "clips_per_hour", "peak_gb"}},
"stock": {...} or null, "ratio_vs_stock": {"<B>": stock s/clip / ours s/clip} or null, plus
height, width, image_batch, feature, threads}; peak_gb is null off CUDA, dtype is the compute
dtype (float32 on CPU whatever --dtype says). Nothing here imports ray (the GPU machines lack it).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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

from stages.core.devices import resolve_dtype  # noqa: E402
from stages.teacher.prompts import Prompt  # noqa: E402
from stages.teacher.sam2_model import build_sam2, describe  # noqa: E402
from stages.teacher.tracker import BidirectionalTracker  # noqa: E402


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


def run_ours(tracker: BidirectionalTracker, clips: list[tuple[torch.Tensor, list[float]]]) -> dict:
    """One `track_batch` call on B clips (B = len(clips)); seconds and peak memory of the call."""
    device = tracker.model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FrameCounter(tracker.model) as counter:
        sync(device)
        t0 = time.perf_counter()
        results = tracker.track_batch([f for f, _ in clips], [Prompt("manifest", box=b) for _, b in clips], ["manifest"] * len(clips))
        sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"s": seconds, "clips": len(clips), "encoded": counter.frames, "gib": peak,
            "masks": [r.masks_fwd for r in results], "fwd": [r.fwd for r in results], "stats": [r.stats for r in results]}  # fmt: skip


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
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
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


def clip_batches(text: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--clip-batch must be a comma-separated list of integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--clip-batch sizes must be >= 1, got {text!r}")
    return sizes


def variant_name(clip_batch: int, image_batch: int, weights: str, first_image_batch: int) -> str:
    """"8" (clip_batch 8, the first --image-batch, autocast), "8/ib16" (another image batch), "8+cast" (cast_weights)."""
    return f"{clip_batch}{'' if image_batch == first_image_batch else f'/ib{image_batch}'}{'+cast' if weights == 'cast' else ''}"


def agree(ref: dict, other: dict) -> dict:
    """Largest relative L2 difference of the forward features and smallest forward-mask IoU over one run's clips."""
    diff = max(float((o - r).norm() / r.norm().clamp(min=1e-12)) for r, o in zip(ref["fwd"], other["fwd"]))
    return {"feature_rel_diff": diff, "mask_iou": min(iou(r, o) for r, o in zip(ref["masks"], other["masks"]))}


def peak_text(gib: float | None) -> str:
    return "" if gib is None else f", peak {gib:.2f} GiB"


def summary(runs: list[dict]) -> dict:
    """s/clip, clips/h and peak GB (None off CUDA) of one variant's runs."""
    clips, seconds = sum(r["clips"] for r in runs), sum(r["s"] for r in runs)
    peaks = [r["gib"] for r in runs if r["gib"] is not None]
    s_per_clip = seconds / clips
    return {"s_per_clip": s_per_clip, "clips_per_hour": 3600 / s_per_clip, "peak_gb": max(peaks) if peaks else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sam2.1_hiera_t")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--clips", type=int, default=2, help="distinct clips; every variant tracks the same ones")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--image-batch", type=clip_batches, default=[8], help="comma-separated teacher.image_batch sizes, e.g. 8,16")
    ap.add_argument("--cast-weights", action="store_true",
                    help="also run teacher.cast_weights (a copy of the model in --dtype) beside autocast on float32 weights; "
                         "on CPU, which computes in float32, the copy stays float32 as in the producer")
    ap.add_argument("--compile-loop", action="store_true", help="with --compile: teacher.compile_loop (memory encoder, prompt encoder, mask decoder too)")
    ap.add_argument("--clip-batch", type=clip_batches, default=[1], help="comma-separated clip_batch sizes of ours, e.g. 1,4,8")
    ap.add_argument("--no-stock", action="store_true", help="skip the stock predictor (quick runs)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as one JSON object here")
    ap.add_argument("--feature", default="maskmem", choices=["maskmem", "memory_attention", "backbone"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: torch's)")
    ap.add_argument("--compile", action="store_true",
                    help="CUDA: teacher.compile for ours (image encoder + memory attention); warm-up runs full-length clips")
    ap.add_argument("--compile-backend", default=None, choices=["inductor", "aot_eager", "eager"],
                    help="--compile with this torch.compile backend on any device, CPU too (default: teacher.compile's "
                         "inductor, CUDA only; aot_eager: the compile path without code generation, for quick CPU dry runs)")
    args = ap.parse_args()
    if args.compile and args.cast_weights:
        # two models compiled in one process share dynamo's per-function cache and guards, so one variant's
        # recompiles land in the other's timings: compare compiled variants in separate runs
        ap.error("--cast-weights with --compile: run the compiled variants as separate commands")
    if args.compile_loop and not args.compile:
        ap.error("--compile-loop needs --compile")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)  # the producer's rule: float32 on CPU whatever --dtype says
    model = build_sam2(args.model, image_size=args.image_size, device=device, seed=0)
    models = {"autocast": model}
    if args.cast_weights:  # what TeacherProducer does for teacher.cast_weights=true: the same weights, in dtype
        models["cast"] = copy.deepcopy(model).to(dtype)
    compiled: list[str] = []
    if args.compile:  # what TeacherProducer does for teacher.compile=true (ignored off CUDA)
        from stages.core.compiling import compile_modules, sam2_compile_targets

        for m in models.values():
            targets = sam2_compile_targets(m, loop=args.compile_loop)
            if args.compile_backend:
                targets = {k: (mod, {**kw, "backend": args.compile_backend}) for k, (mod, kw) in targets.items()}
            compiled = compile_modules("teacher", targets, device, cpu=args.compile_backend is not None)
    sizes, largest = args.clip_batch, max(args.clip_batch)
    # one variant per (clip_batch, image_batch, weights); "8" is clip_batch 8 at the first image batch, autocast
    variants = {variant_name(b, ib, w, args.image_batch[0]): (b, BidirectionalTracker(m, feature=args.feature, image_batch=ib, dtype=dtype))
                for b in sizes for ib in args.image_batch for w, m in models.items()}
    print(f"model {args.model} {describe(model)} | device {device} ({torch.get_num_threads()} CPU threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load avg {os.getloadavg()[0]:.1f}) | "
          f"clips {args.clips} x {args.frames} frames {args.height}x{args.width} | variants {list(variants)}"
          f"{'' if args.no_stock else ' and stock'}")  # fmt: skip

    # first-call overheads out of the figures; compiled modules also see every shape the run will
    warm = make_clip(99, args.frames if args.compile else 3, args.height, args.width)
    started = time.perf_counter()
    for b, tracker in variants.values():
        run_ours(tracker, [warm] * b)
    warmup_s = time.perf_counter() - started
    if args.compile:
        print(f"compile + warm-up: {warmup_s:.1f} s ({', '.join(compiled) or 'nothing compiled on ' + str(device)})")
    if not args.no_stock:
        run_stock(model, *warm, dtype)

    # Rounds of `largest` clips (clip indices wrap round the --clips distinct clips, so every
    # batch is full); in each round every variant tracks the same clips, one after the other.
    clips = [make_clip(c, args.frames, args.height, args.width) for c in range(args.clips)]
    rounds = -(-args.clips // largest)
    ours: dict[str, list[dict]] = {v: [] for v in variants}
    agreement: dict[str, list[dict]] = {v: [] for v in variants if "+cast" in v}
    stock: list[dict] = []
    for r in range(rounds):
        picks = [(r * largest + j) % args.clips for j in range(largest)]
        for name, (b, tracker) in variants.items():
            for start in range(0, largest, b):
                batch = [clips[c] for c in picks[start : start + b]]
                run = run_ours(tracker, batch)
                ours[name].append(run)
                print(f"round {r} {name}: clips {picks[start : start + b]} {run['s']:.2f} s "
                      f"({run['s'] / run['clips']:.2f} s/clip, {run['encoded']} frames encoded, peak state "
                      f"{run['stats'][0]['peak_maskmem_frames']} memories/clip{peak_text(run['gib'])})")  # fmt: skip
        per_round = {name: -(-largest // b) for name, (b, _) in variants.items()}  # runs each variant made this round
        for name in agreement:  # cast weights against autocast on the same clips: bf16 noise, not another teacher
            n = per_round[name]
            agreement[name] += [agree(a, c) for a, c in zip(ours[name.replace("+cast", "")][-n:], ours[name][-n:])]
        for name, runs in ours.items():  # features are kept for the comparison only
            for run in runs[-per_round[name]:]:
                run.pop("fwd", None)
        if args.no_stock:
            continue
        first = ours[str(sizes[0])][-math.ceil(largest / sizes[0]) :]  # this round's runs of the first variant
        ref_masks = [m for run in first for m in run["masks"]]
        for c in dict.fromkeys(c for c in picks if c >= r * largest):  # each distinct clip once
            s = run_stock(model, *clips[c], dtype)
            stock.append({**s, "clips": 1})
            print(f"round {r} stock: clip {c} {s['s']:.2f} s (JPEG {s['jpeg_s']:.2f} s, {s['encoded']} frames encoded) "
                  f"| forward-mask IoU ours (clip_batch {sizes[0]}) vs stock {iou(ref_masks[picks.index(c)], s['masks']):.3f}")  # fmt: skip

    figures = {name: summary(runs) for name, runs in ours.items()}
    first = str(sizes[0])
    for name in variants:
        parts = {k: statistics.mean(st[k] for run in ours[name] for st in run["stats"]) for k in ("encode_s", "forward_s", "backward_s")}
        f = figures[name]
        print(f"{name}: {f['s_per_clip']:.2f} s/clip (encode {parts['encode_s']:.2f}, forward {parts['forward_s']:.2f}, "
              f"backward {parts['backward_s']:.2f}), {f['clips_per_hour']:.0f} clips/h, "
              f"x{f['clips_per_hour'] / figures[first]['clips_per_hour']:.2f} vs {first}{peak_text(f['peak_gb'])}")  # fmt: skip
    for name, rows in agreement.items():
        figures[name]["vs_autocast"] = {
            "speedup": figures[name]["clips_per_hour"] / figures[name.replace("+cast", "")]["clips_per_hour"],
            "feature_rel_diff": max(r["feature_rel_diff"] for r in rows), "mask_iou": min(r["mask_iou"] for r in rows)}
        print(f"{name} vs autocast: x{figures[name]['vs_autocast']['speedup']:.2f} clips/h, features within "
              f"{figures[name]['vs_autocast']['feature_rel_diff']:.4f} (relative L2), forward-mask IoU >= {figures[name]['vs_autocast']['mask_iou']:.3f}")
    out = {
        "model": args.model,
        "image_size": int(model.image_size),
        "frames": args.frames,
        "clips": args.clips,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": str(dtype).removeprefix("torch."),  # the compute dtype: CPU runs fp32 whatever --dtype says
        "height": args.height,
        "width": args.width,
        "image_batch": args.image_batch[0] if len(args.image_batch) == 1 else args.image_batch,
        "cast_weights": args.cast_weights,
        "compile_loop": args.compile_loop and bool(compiled),
        "feature": args.feature,
        "threads": torch.get_num_threads(),
        # teacher.compile: the backend (null: eager), the modules compiled, and the warm-up (with compile: compile) time
        "compile": (args.compile_backend or "inductor") if compiled else None,
        "compiled_modules": len(compiled),
        "warmup_s": warmup_s,
        "ours": figures,
        "stock": None,
        "ratio_vs_stock": None,
    }
    if stock:
        st = summary(stock)
        s_nojpeg = statistics.mean(r["s"] - r["jpeg_s"] for r in stock)
        out["stock"] = {**st, "s_per_clip_without_jpeg": s_nojpeg}
        out["ratio_vs_stock"] = {name: st["s_per_clip"] / f["s_per_clip"] for name, f in figures.items()}
        print(f"stock: {st['s_per_clip']:.2f} s/clip (without JPEG writing {s_nojpeg:.2f}), "
              f"{st['clips_per_hour']:.0f} clips/h{peak_text(st['peak_gb'])}")  # fmt: skip
        print("speed-up vs stock (clips/h ratio): " + ", ".join(f"{name} {r:.2f}x" for name, r in out["ratio_vs_stock"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
