"""`evaluate`'s sampling time at real size: one stock CogVideoX-5B-I2V sample, 49x480x720, classifier-free guidance.

    python tests/benchmarks/bench_sampling.py --device cuda --json sampling.json   # real size, random weights
    python tests/benchmarks/bench_sampling.py                                      # CPU: the tiny student and encoders

`evaluate` samples every held-out clip with the family's stock pipeline (stages/evaluate/sampling.py: the
pipeline of the task around the student, Student.sample from the clip's first frame and caption, 50 steps
and guidance 6 on a GPU). Here that pipeline is assembled around random-weight models of the real configs
built on the GPU (no weights can be downloaded): the CogVideoX-5B-I2V transformer (tests/benchmarks/
bench_step.py's builder), its VAE and T5-v1.1-XXL (bench_encodings.py's configs, the tiny tokenizer), the
5B's DPM scheduler; VAE slicing and tiling off, as `evaluate` loads the encoders. The speed is real, the
frames are noise.

Each sample is timed at two step counts, --steps (default 2 and 4), so the fixed cost (prompt encoding,
image encoding, VAE decode) and the cost per denoising step separate:
    per_step = (t(b) - t(a)) / (b - a);   fixed = t(a) - a * per_step;   estimate(N) = fixed + N * per_step
and the JSON gives the estimate for --estimate-steps (50: evaluate's GPU default) per sample, plus peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' builders

from bench_encodings import COGVIDEOX_5B_I2V_VAE, T5_V1_1_XXL  # noqa: E402
from bench_step import build_transformer  # noqa: E402

from stages.families.cogvideox.encoders import build_encoders, tiny_tokenizer  # noqa: E402
from stages.families.cogvideox.sampling import PIPELINES  # noqa: E402
from stages.families.cogvideox.transformer import COGVIDEOX_5B_I2V_TRANSFORMER, COGVIDEOX_5B_SCHEDULER, tiny_transformer_config  # noqa: E402
from stages.families.registry import get_student  # noqa: E402

PROMPT = "a person walks a dog along the beach, the camera follows"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pipeline(device: torch.device, real: bool):
    """The stock I2V pipeline around random-weight models: real configs in bf16 on CUDA, the tiny ones in fp32 on CPU."""
    from diffusers import CogVideoXDPMScheduler

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if real:
        transformer = build_transformer(COGVIDEOX_5B_I2V_TRANSFORMER, device, dtype)
        enc = build_encoders(COGVIDEOX_5B_I2V_VAE, T5_V1_1_XXL, tiny_tokenizer(), dtype, device, False, False)
    else:
        from stages.families.cogvideox.encoders import load_encoders

        transformer = build_transformer(tiny_transformer_config("i2v"), device, dtype)
        enc = load_encoders("tiny", dtype, device, vae_slicing=False, vae_tiling=False)
    transformer.eval().requires_grad_(False)
    return PIPELINES["i2v"](tokenizer=enc.tokenizer, text_encoder=enc.text_encoder, vae=enc.vae, transformer=transformer,
                            scheduler=CogVideoXDPMScheduler(**COGVIDEOX_5B_SCHEDULER))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cuda: the real-size models; cpu: the tiny ones")
    ap.add_argument("--frames", type=int, default=None, help="default 49 (CUDA) / 9 (CPU)")
    ap.add_argument("--height", type=int, default=None, help="default 480 (CUDA) / 128 (CPU: the tiny learned positional embedding's size)")
    ap.add_argument("--width", type=int, default=None, help="default 720 (CUDA) / 192 (CPU)")
    ap.add_argument("--steps", default="2,4", help="two denoising step counts a,b (a < b)")
    ap.add_argument("--estimate-steps", type=int, default=50, help="the step count the estimate is for (evaluate's GPU default)")
    ap.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance (evaluate's default 6: two forwards a step)")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="one untimed 1-step sample first (cuDNN / cuBLAS choices, first-call overheads)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    frames, height, width = args.frames or (49 if cuda else 9), args.height or (480 if cuda else 128), args.width or (720 if cuda else 192)
    a, b = sorted(int(x) for x in args.steps.split(","))
    if a >= b or a < 1:
        ap.error("--steps takes two different step counts >= 1, e.g. 2,4")

    t0 = time.perf_counter()
    pipe = build_pipeline(device, real=cuda)
    built = time.perf_counter() - t0
    print(f"built the {'real-size' if cuda else 'tiny'} I2V pipeline (random weights) on {device} in {built:.1f} s")
    first = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    family = get_student("cogvideox")

    shapes: list[int] = []  # frames each sample returned

    def sample(steps: int) -> tuple[float, float]:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        out = family.sample(pipe, "i2v", first, PROMPT, frames, height, width, steps, args.guidance, 0, 226 if cuda else 16)
        sync(device)
        took = time.perf_counter() - start
        if out.shape[1:3] != (height, width):
            raise RuntimeError(f"the pipeline returned frames of {out.shape[1:3]}, not {height}x{width}")
        shapes.append(int(out.shape[0]))
        return took, (torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0)

    if args.warmup:
        sample(1)  # cuDNN / cuBLAS choices and first-call overheads out of the figures
    (ta, peak_a), (tb, peak_b) = sample(a), sample(b)
    per_step = (tb - ta) / (b - a)
    fixed = ta - a * per_step
    estimate = fixed + args.estimate_steps * per_step
    print(f"{frames}x{height}x{width}, guidance {args.guidance}: {a} steps {ta:.2f} s, {b} steps {tb:.2f} s -> "
          f"{per_step:.3f} s/step + {fixed:.2f} s fixed (prompt, image encode, VAE decode); "
          f"estimate at {args.estimate_steps} steps {estimate:.1f} s/sample" + (f"; peak {max(peak_a, peak_b):.1f} GiB" if cuda else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "script": "bench_sampling", "device": str(device), "real_size": cuda, "frames": frames, "height": height,
            "width": width, "frames_out": shapes[-1], "guidance": args.guidance, "build_s": built, "seconds": {str(a): ta, str(b): tb},
            "s_per_step": per_step, "fixed_s": fixed, "estimate_steps": args.estimate_steps, "estimate_s_per_sample": estimate,
            "peak_gib": max(peak_a, peak_b) if cuda else None,
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
