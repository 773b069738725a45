"""Extraction wall time vs pure model time, in-process (ray.num_workers=0), on the sample corpus.

    python tests/benchmarks/bench_extract.py                              # CPU, 16 sample clips, 2 repeats
    python tests/benchmarks/bench_extract.py --device cuda --compile both # GPU: eager vs torch.compile, interleaved
    python tests/benchmarks/bench_extract.py --device cuda --real-size --clips 8 --repeats 1 --json x.json  # 49x480x720, 1024

--render HxW renders its own --clips sample clips of --frames frames at that size into the temporary folder
(datasets/sample/generate.py) and extracts them at that size; --real-size = --render 480x720 with the teacher
at image size 1024: the real run's decode, resize, frame and feature-map sizes, through the tiny-width models
(no weights exist on the GPU box), so wall/model says what the overlap leaves at real frame sizes.

Each repeat extracts the corpus (teacher + encodings, configs/extract/sample.yaml) into a fresh store
with `run_extract` and prints the per-run figures the `extract` CLI prints: model seconds per column
(CUDA-synchronised), decode (in the prefetch thread, overlapped), write (writer thread, overlapped;
"flush" is the part the shard waited for), wait (producers waiting for a decoded clip), model load,
and wall/model = the worker's shard time / model time (1.00 = no overhead). The stores of every
run are compared to the first one of the same variant (bit-identical expected) and, with
--compile both, compiled to eager (max |difference|).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from stages.config.loader import load_config  # noqa: E402
from stages.config.extract import ExtractConfig  # noqa: E402
from pipeline.runner import run_extract  # noqa: E402
from stages.store import FeatureStore  # noqa: E402


def ensure_sample_corpus() -> Path:
    clips = REPO / "datasets" / "sample" / "clips"
    if not (clips / "manifest.jsonl").exists():  # as `make sample` does
        subprocess.run([sys.executable, str(REPO / "datasets" / "sample" / "generate.py"), "--out", str(clips)], check=True)
    return clips


def render_corpus(folder: Path, clips: int, frames: int, height: int, width: int) -> Path:
    """`clips` sample clips of frames x height x width rendered into `folder` (datasets/sample/generate.py)."""
    subprocess.run([sys.executable, str(REPO / "datasets" / "sample" / "generate.py"), "--out", str(folder), "--clips", str(clips),
                    "--frames", str(frames), "--height", str(height), "--width", str(width)], check=True)  # fmt: skip
    return folder


def extract_config(args: argparse.Namespace, compiled: bool) -> ExtractConfig:
    gpu = args.device.startswith("cuda")
    size = [f"video.height={args.render[0]}", f"video.width={args.render[1]}", f"video.num_frames={args.frames}"] if args.render else []
    overrides = [
        f"corpus.url={args.corpus or ensure_sample_corpus()}", *size, *(["teacher.image_size=1024"] if args.real_size else []), f"corpus.limit={args.clips}", "ray.num_workers=0",
        "teacher.allow_random_weights=true",  # --set teacher.model=sam2.1_hiera_* times a released architecture, random weights
        f"teacher.device={args.device}", f"encoders.device={args.device}", f"ray.gpus_per_worker={1 if gpu else 0}",
        f"ray.cpus_per_worker={args.threads}", f"teacher.compile={str(compiled).lower()}", f"encoders.compile={str(compiled).lower()}",
        *([f"teacher.dtype={args.dtype}", f"encoders.dtype={args.dtype}"] if args.dtype else []), *args.set,
    ]  # fmt: skip
    return load_config(ExtractConfig, REPO / "configs" / "extract" / "sample.yaml", overrides)


def compare(ref: str, other: str) -> tuple[bool, float]:
    """(bit-identical, max |difference|) over every committed shard of every column."""
    a, b = FeatureStore(ref), FeatureStore(other)
    same, worst = True, 0.0
    for col in a.columns():
        twin = b.column(col.name, col.hash)
        for shard in sorted(col.committed_shards()):
            x, y = col.read_shard(shard), twin.read_shard(shard)
            for key in x.arrays:
                u, v = np.asarray(x.arrays[key][...]), np.asarray(y.arrays[key][...])
                same &= u.shape == v.shape and bool(np.array_equal(u, v))
                if u.shape == v.shape and u.size:
                    worst = max(worst, float(np.abs(u.astype(np.float64) - v.astype(np.float64)).max()))
    return same, worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (ray.cpus_per_worker)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--dtype", default=None, help="teacher/encoders dtype (GPU autocast); default: the config's")
    p.add_argument("--set", nargs="*", default=[], help="more dotted overrides")
    p.add_argument("--render", type=lambda v: tuple(int(x) for x in v.lower().split("x")), default=None, metavar="HxW",
                   help="render --clips clips of --frames frames at HxW into the temporary folder and extract at that size")
    p.add_argument("--frames", type=int, default=49, help="--render: frames per clip (video.num_frames)")
    p.add_argument("--real-size", action="store_true", help="--render 480x720 and teacher.image_size=1024 (tiny-width models)")
    p.add_argument("--json", default=None, help="write the figures as JSON here: {runs: [...], wall_over_model: {variant: median}}")
    args = p.parse_args()
    if args.real_size:
        args.render = args.render or (480, 720)
    args.corpus = None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')}, load {load:.2f}")
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    runs, first = [], {}
    try:
        if args.render:
            args.corpus = render_corpus(tmp / "clips", args.clips, args.frames, *args.render)
        for rep in range(args.repeats):
            for compiled in variants:
                name = "compiled" if compiled else "eager"
                url = str(tmp / f"{name}-{rep}")
                summary = run_extract(extract_config(args, compiled), url)
                t = summary.timing()
                row = {"variant": name, "repeat": rep, **t}
                first.setdefault(name, url)
                row["identical_to_first"], _ = compare(first[name], url)
                if name == "compiled" and "eager" in first:
                    row["max_diff_vs_eager"] = compare(first["eager"], url)[1]
                runs.append(row)
                cols = ", ".join(f"{k} {summary.model_s[k]:.1f}" for k in summary.model_s)
                print(
                    f"{name:8s} #{rep}: {t['clips']} clips, run {t['seconds']:.1f} s, worker {t['worker_s']:.1f} s; model {t['model_s']:.1f} ({cols}), "
                    f"decode {t['decode_s']:.1f}, write {t['write_s']:.2f} (flush {t['flush_s']:.2f}), wait {t['wait_s']:.2f}, load {t['load_s']:.1f}; "
                    f"wall/model {t['wall_over_model']:.3f}; identical to first: {row['identical_to_first']}"
                    + (f"; max |compiled - eager| {row['max_diff_vs_eager']:.3g}" if "max_diff_vs_eager" in row else "")
                )
                if torch.cuda.is_available() and args.device.startswith("cuda"):
                    print(f"          peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        ratios = {v: float(np.median([r["wall_over_model"] for r in runs if r["variant"] == v])) for v in dict.fromkeys(r["variant"] for r in runs)}
        size = list(args.render) if args.render else None
        Path(args.json).write_text(json.dumps({"script": "bench_extract", "device": args.device, "clips": args.clips,
                                               "size": size, "real_size": args.real_size, "wall_over_model": ratios,
                                               "runs": runs}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
