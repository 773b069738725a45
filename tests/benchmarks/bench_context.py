"""Context parallelism (parallel.context) on `--nproc` ranks against one rank: tests/context_parallel_run.py under
torchrun (the tiny Wan transformer's forward + backward, Ulysses attention through diffusers, the feature tap's
gather, the gradient sum over the group), as one part of tests/benchmarks/gpu_suite.sh.

    python tests/benchmarks/bench_context.py --device cuda --json context.json   # NCCL, one rank per GPU
    python tests/benchmarks/bench_context.py --device cpu --json context.json    # gloo (the dry run, the CPU test)

Exit 1 when the split run departs from the whole one (the figures say by how much). On a box with fewer GPUs
than ranks the part is skipped and says so: NCCL takes one rank per GPU, and diffusers refuses a context degree
of 1 (ContextParallelConfig: "Either ring_degree or ulysses_degree must be greater than 1"), so one GPU cannot
run it at all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {"out": 1e-4, "feats": 1e-4, "grad_sum": 1e-4}  # fp32; CPU measures ~1e-7 (tests/distill/test_context_parallel.py)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    import torch

    head = {"device": args.device, "nproc": args.nproc, "torch": torch.__version__}
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus < args.nproc:
        reason = f"{args.nproc} context ranks need {args.nproc} GPUs (NCCL: one rank per GPU; a degree of 1 is refused by diffusers), this box has {gpus}"
        print(f"context: {reason}; skipped")
        args.json.write_text(json.dumps({**head, "skipped": reason}))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
        out = Path(tmp) / "cp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               str(ROOT / "tests/context_parallel_run.py"), str(out), args.device]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            print(proc.stderr[-4000:], file=sys.stderr)
            args.json.write_text(json.dumps({**head, "error": f"torchrun exit {proc.returncode}"}))
            return 1
        result = json.loads(out.read_text())
    worst = {k: result[k] for k in TOLERANCE}
    ok = all(worst[k] < tol for k, tol in TOLERANCE.items()) and result["grad_names"] and result["grad_local"] > 1e-2
    record = {**head, "seconds": round(seconds, 2), "equal_to_one_rank": int(ok), "block_tokens": result["block_tokens"],
              "tokens": result["tokens"], **worst, "grad_local": result["grad_local"],
              "loss_diff": abs(result["loss"][1] - result["loss"][0])}
    print(f"context parallel over {args.nproc} {args.device} ranks: output {worst['out']:.2e}, tapped tokens {worst['feats']:.2e}, "
          f"group gradient {worst['grad_sum']:.2e} (relative) from one rank; blocks saw {result['block_tokens']} of "
          f"{result['tokens']} tokens; {'equal' if ok else 'NOT equal'} within {TOLERANCE}")
    args.json.write_text(json.dumps(record))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
