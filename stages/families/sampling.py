"""The family-independent part of sampling: where and how to sample (device, dtype, steps), and the one
stock-pipeline call every family's sampler shares.

Inference needs no SAM2 and no projector (method.md): the fine-tuned student runs alone, through its task's
stock diffusers pipeline (each family's folder builds it: Student.build_pipeline / Student.sample). This is the
end of the demo and the proof that the exported LoRA is what a user's diffusers code loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.core.devices import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


CPU_STEPS = 8  # a quick look on a CPU; the stock pipelines' 50 where a GPU exists
GPU_STEPS = 50
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class Sampling:
    """Where and how to sample: resolved from the command line's choices (None: the default)."""

    device: torch.device
    dtype: torch.dtype
    steps: int


def resolve_sampling(device: str | None = None, dtype: str | None = None, steps: int | None = None) -> Sampling:
    """Defaults: cuda / bfloat16 / 50 steps where a GPU exists, else cpu / float32 / 8 steps.

    Raises ValueError with one line for an unknown dtype, a bad device or steps < 1. A half dtype
    asked for on the CPU falls back to float32 (stages/core/devices.py's rule), with a warning.
    """
    try:
        dev = resolve_device(device or "auto")
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA device is available here")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    wanted = DTYPES[dtype] if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    resolved = resolve_dtype(wanted, dev)
    if resolved != wanted:
        log.warning("--dtype %s on %s: using float32 (half-precision 3D convolutions are slow or missing on CPU)", dtype, dev)
    steps = steps if steps is not None else (GPU_STEPS if dev.type == "cuda" else CPU_STEPS)
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    return Sampling(dev, resolved, steps)


def _sample(pipe, num_frames: int, height: int, width: int, steps: int, guidance_scale: float, seed: int, **inputs) -> np.ndarray:
    """One stock-pipeline call with the settings every sampler shares -> uint8 [F, H, W, 3]; `inputs` are the
    pipeline's own conditioning arguments (image, prompt or prompt embeddings, ...)."""
    out = pipe(
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **inputs,
    ).frames[0]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
