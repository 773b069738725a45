"""Ray's overhead for extraction on CPU: the same shards in-process vs through `run_extract` on Ray.

    python tests/benchmarks/bench_ray.py                        # 8 clips x 17 frames, 2 clips per shard, 2 repeats
    python tests/benchmarks/bench_ray.py --clips 16 --repeats 3 --threads 1

Each repeat extracts the same corpus with the same config (tiny random-weight SAM2, VAE and T5;
teacher + encodings columns) into fresh stores, four ways, and times the wall clock of each:
  inproc      `prepare_store` + `stages.extract.shard_worker.ShardWorker` + `run_shard` for every shard, sequentially,
              in this process (no Ray running), at this process's torch threads;
  inproc@N    the same at the thread count the Ray actors get (only when it differs: Ray sets
              OMP_NUM_THREADS = max(floor(num_cpus), 1) in a worker whose environment lacks it,
              so a 0.5-CPU actor runs 1 thread), so Ray's own overhead is not confused with threading;
  ray x1      `pipeline.runner.run_extract` with ray.num_workers=1 (actors as the CLI starts them);
  ray x2      the same with 2 workers.
`ray.init` (same arguments as the runner's) is timed on its own before the Ray runs of each repeat,
and `ray.shutdown` after them, so the Ray figures are per-run costs inside a live session: actor
start (process spawn, imports, model build) plus per-shard scheduling. `overhead` = wall minus the
seconds the workers spent inside run_shard (their ShardReport.seconds). Finally the stores' arrays
are compared bit for bit across all runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from stages.config.loader import load_config  # noqa: E402
from stages.config.extract import ExtractConfig  # noqa: E402
from pipeline.runner import prepare_store, run_extract  # noqa: E402
from stages.store import FeatureStore  # noqa: E402
from stages.extract.shard_worker import ShardWorker  # noqa: E402

REGISTRY = "stages.extract.columns.registry"


def ensure_sample_corpus() -> Path:
    clips = REPO / "datasets" / "sample" / "clips"
    if not (clips / "manifest.jsonl").exists():  # as `make sample` does
        subprocess.run([sys.executable, str(REPO / "datasets" / "sample" / "generate.py"), "--out", str(clips)], check=True)
    return clips


def extract_config(args: argparse.Namespace, workers: int = 1, clips: int | None = None) -> ExtractConfig:
    overrides = [
        f"corpus.url={ensure_sample_corpus()}", f"corpus.limit={clips or args.clips}", f"corpus.clips_per_shard={args.clips_per_shard}",
        f"video.num_frames={args.frames}", "teacher.device=cpu", "encoders.device=cpu", "columns=[teacher,encodings]",
        f"ray.num_workers={workers}", "teacher.allow_random_weights=true",  # timing runs: random weights by design
    ]  # fmt: skip
    return load_config(ExtractConfig, REPO / "configs" / "extract" / "sample.yaml", overrides)


def run_inprocess(cfg: ExtractConfig, url: str, threads: int) -> dict:
    """Every shard by one ShardWorker in this process, in order: what a box without Ray would run."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        _, snapshot, _ = prepare_store(cfg, url, REGISTRY)
        worker = ShardWorker(cfg, url)
        done = []
        for shard in range(snapshot.num_shards):
            seconds = worker.run_shard(shard).seconds
            done.append((time.perf_counter() - start, seconds))
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return timeline(wall, done, len(snapshot.clips))


def run_on_ray(cfg: ExtractConfig, url: str) -> dict:
    """`run_extract` in the live Ray session (it neither starts nor stops Ray when one is running)."""
    done: list[tuple[float, float]] = []
    start = time.perf_counter()
    summary = run_extract(cfg, url, on_shard=lambda r: done.append((time.perf_counter() - start, r.seconds)), registry=REGISTRY)
    wall = time.perf_counter() - start
    if summary.failed_keys or len(summary.shards_run) != summary.shards:
        raise RuntimeError(f"ray run incomplete: {summary}")
    return timeline(wall, done, summary.clips_processed)


def timeline(wall: float, done: list[tuple[float, float]], clips: int) -> dict:
    """Split a run's wall time using (seconds since start when shard i was reported, its run_shard seconds).

    startup: until the first shard began work (prepare_store, worker construction; on Ray also the
    actor's process start and imports). gap: per shard, the time between shards not spent in run_shard
    (scheduling, result transfer; meaningful for one sequential worker only). tail: after the last shard.
    """
    inside = [s for _, s in done]
    first_start = done[0][0] - done[0][1]
    gap = (done[-1][0] - done[0][0] - sum(inside[1:])) / max(len(done) - 1, 1)
    return {"wall": wall, "inside": sum(inside), "clips": clips, "shards": len(done), "startup": first_start,
            "gap": gap, "tail": wall - done[-1][0]}  # fmt: skip


def ray_init(cfg: ExtractConfig) -> float:
    """Seconds for ray.init with the runner's own arguments (pipeline.runner._init_ray, local Ray)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start = time.perf_counter()
    ray.init(include_dashboard=False, object_store_memory=cfg.ray.object_store_memory, log_to_driver=True)
    return time.perf_counter() - start


def expected_actor_threads(cfg: ExtractConfig) -> int:
    """Ray's rule (ray._private.utils.set_omp_num_threads_if_unset): OMP_NUM_THREADS if the worker
    inherits one, else max(floor(num_cpus), 1); torch takes its thread count from it."""
    inherited = os.environ.get("OMP_NUM_THREADS")
    return int(inherited) if inherited else max(int(cfg.ray.cpus_per_worker), 1)


def _thread_probe() -> tuple[int, str]:
    import torch as t

    return t.get_num_threads(), os.environ.get("OMP_NUM_THREADS", "<unset>")


def actor_threads(cfg: ExtractConfig) -> tuple[int, str]:
    """(torch threads, OMP_NUM_THREADS) inside a Ray worker with the actors' CPU request."""
    import ray

    return ray.get(ray.remote(num_cpus=cfg.ray.cpus_per_worker)(_thread_probe).remote())


def compare_stores(ref: str, other: str) -> tuple[bool, float, int]:
    """(bit-identical, max |difference|, arrays compared) over every committed shard of every column."""
    a, b = FeatureStore(ref), FeatureStore(other)
    identical, worst, count = True, 0.0, 0
    cols_a = {c.dirname: c for c in a.columns()}
    cols_b = {c.dirname: c for c in b.columns()}
    if set(cols_a) != set(cols_b):
        return False, float("inf"), 0
    for name, ca in cols_a.items():
        cb = cols_b[name]
        if ca.committed_shards() != cb.committed_shards():
            return False, float("inf"), count
        pairs = [(ca.column_arrays(), cb.column_arrays())]
        for shard in sorted(ca.committed_shards()):
            sa, sb = ca.read_shard(shard), cb.read_shard(shard)
            if [r["key"] for r in sa.records] != [r["key"] for r in sb.records]:
                return False, float("inf"), count
            pairs.append(({k: v[...] for k, v in sa.arrays.items()}, {k: v[...] for k, v in sb.arrays.items()}))
        for xa, xb in pairs:
            for key in xa:
                x, y = np.asarray(xa[key]), np.asarray(xb[key])
                count += 1
                if not np.array_equal(x, y):
                    identical = False
                    worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()))
    return identical, worst, count


def thread_line() -> str:
    return (f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')}, "
            f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}")  # fmt: skip


def fmt(name: str, r: dict, workers: int = 1) -> str:
    """One run's line. Overhead (wall minus time inside run_shard) is shown for sequential runs only:
    with 2 workers the run_shard seconds overlap, so their sum says nothing about wall time."""
    line = (f"  {name:10s} wall {r['wall']:6.2f} s  {r['clips'] / r['wall']:5.2f} clips/s  inside run_shard {r['inside']:6.2f} s"
            f"  startup {r['startup']:5.2f} s")  # fmt: skip
    if workers == 1:
        line += f"  gap {1e3 * r['gap']:6.1f} ms/shard  tail {r['tail']:.2f} s  (overhead {r['wall'] - r['inside']:5.2f} s)"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--clips-per-shard", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the in-process run (default: torch's)")
    ap.add_argument("--keep", default=None, help="keep the stores under this folder (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    import ray

    base = extract_config(args)
    threads = args.threads or torch.get_num_threads()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-ray-"))
    print(f"{args.clips} clips x {args.frames} frames, {args.clips_per_shard} clips/shard, columns {base.columns}, "
          f"cpus_per_worker {base.ray.cpus_per_worker} | {thread_line()}")  # fmt: skip
    warm = run_inprocess(extract_config(args, 1, clips=args.clips_per_shard), str(root / "warm-up"), threads)
    print(f"warm-up (untimed by the figures below): one in-process shard in a fresh process, imports included: "
          f"{warm['wall']:.2f} s (of which in run_shard {warm['inside']:.2f} s)")  # fmt: skip
    actor_n = expected_actor_threads(base)
    in_process = [("inproc", threads)] + ([(f"inproc@{actor_n}", actor_n)] if actor_n != threads else [])
    results: dict[str, list[dict]] = {}
    stores: list[tuple[str, str]] = []  # (url, torch threads of the workers that wrote it)
    init_s: list[float] = []
    shutdown_s: list[float] = []
    try:
        for rep in range(args.repeats):
            print(f"repeat {rep}:")
            for name, n in in_process:
                url = str(root / f"r{rep}-{name.replace('@', '-t')}")
                results.setdefault(name, []).append(run_inprocess(base, url, n))
                stores.append((url, str(n)))
                print(fmt(name, results[name][-1]) + f"  [{n} torch threads]")
            init_s.append(ray_init(base))
            probe = actor_threads(base)
            note = "" if probe[0] == actor_n else f"  WARNING: expected {actor_n}"
            print(f"  ray.init   {init_s[-1]:6.2f} s  (a {base.ray.cpus_per_worker}-CPU Ray worker runs {probe[0]} torch "
                  f"threads, OMP_NUM_THREADS={probe[1]}){note}")  # fmt: skip
            for workers in (1, 2):
                name, url = f"ray x{workers}", str(root / f"r{rep}-ray{workers}")
                results.setdefault(name, []).append(run_on_ray(extract_config(args, workers), url))
                stores.append((url, str(probe[0])))
                print(fmt(name, results[name][-1], workers))
            start = time.perf_counter()
            ray.shutdown()
            shutdown_s.append(time.perf_counter() - start)
            print(f"  ray.shutdown {shutdown_s[-1]:4.2f} s | {thread_line()}")
    finally:
        if ray.is_initialized():
            ray.shutdown()
    report(args, results, init_s, shutdown_s, actor_n)
    # Reference: the first in-process store written at the actors' thread count. A different intra-op
    # thread count may change float summation order, so such stores are compared but labelled.
    ref = next((u for u, t in stores if t == str(actor_n)), stores[0][0])
    print(f"\nstores vs {Path(ref).name} (bit for bit, every array of every shard and column, column arrays included):")
    for url, t in stores:
        if url == ref:
            continue
        same, worst, n = compare_stores(ref, url)
        verdict = "identical" if same else f"DIFFERENT (max |diff| {worst:.3g})"
        print(f"  {Path(url).name:14s} written at {t} torch thread(s): {verdict} ({n} arrays)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, list[dict]], init_s: list[float], shutdown_s: list[float], actor_n: int) -> None:
    print("\nmedian over repeats (wall s | clips/s):")
    med = {name: statistics.median(r["wall"] for r in rs) for name, rs in results.items()}
    for name, m in med.items():
        each = ", ".join(f"{r['wall']:.2f}" for r in results[name])
        print(f"  {name:10s} {m:6.2f} s | {args.clips / m:5.2f} clips/s   (each: {each})")
    each = ", ".join(f"{s:.2f}" for s in init_s)
    print(f"  ray.init   {statistics.median(init_s):6.2f} s   (each: {each}); ray.shutdown {statistics.median(shutdown_s):.2f} s")
    matched = f"inproc@{actor_n}" if f"inproc@{actor_n}" in med else "inproc"
    print("ratios (wall, medians; > 1 = slower than in-process):")
    for name in ("ray x1", "ray x2"):
        print(f"  {name} / inproc: {med[name] / med['inproc']:.2f}" +
              (f" | {name} / {matched}: {med[name] / med[matched]:.2f}" if matched != "inproc" else ""))  # fmt: skip
        print(f"  {name} incl. ray.init / inproc: {(med[name] + statistics.median(init_s)) / med['inproc']:.2f}")
    print(f"  ray x2 speed-up over ray x1: {med['ray x1'] / med['ray x2']:.2f}x (2 actors on {os.cpu_count()} cores)")
    print(f"  ray x1 - {matched}: {med['ray x1'] - med[matched]:+.2f} s per run")
    part = {name: {k: statistics.median(r[k] for r in rs) for k in ("startup", "gap", "tail")} for name, rs in results.items()}
    for name in (matched, "ray x1"):
        p = part[name]
        print(f"    {name:10s} startup {p['startup']:.2f} s | gap between shards {1e3 * p['gap']:.1f} ms/shard | tail {p['tail']:.2f} s")
    print(f"  => Ray's fixed cost per run (actor start) {part['ray x1']['startup'] - part[matched]['startup']:+.2f} s, "
          f"per shard {1e3 * (part['ray x1']['gap'] - part[matched]['gap']):+.1f} ms, "
          f"plus ray.init {statistics.median(init_s):.2f} s once per session")  # fmt: skip


if __name__ == "__main__":
    main()
