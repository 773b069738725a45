"""Sample a video with the stock diffusers image-to-video pipeline and a trained LoRA.

Inference needs no SAM2 and no projector (method.md): the fine-tuned CogVideoX runs alone. This is
the end of the demo and the proof that the exported LoRA is what a user's diffusers code loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline
from PIL import Image

from stages.core.devices import resolve_device, resolve_dtype
from stages.families.cogvideox.transformer import load_student
from stages.families.cogvideox.encoders import load_encoders

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


def build_pipeline(student_model: str, encoders_model: str, lora_dir: str | Path | None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> CogVideoXImageToVideoPipeline:
    """The stock CogVideoXImageToVideoPipeline from a student (folder, hub id or "tiny") and encoders."""
    transformer, scheduler = load_student(student_model, "i2v", dtype, device)
    enc = load_encoders(encoders_model, dtype, device, vae_slicing=False, vae_tiling=False)
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=enc.tokenizer,
        text_encoder=enc.text_encoder,
        vae=enc.vae,
        transformer=transformer,
        scheduler=CogVideoXDPMScheduler.from_config(scheduler.config),
    )
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    return pipe.to(device)


def sample_video(
    pipe: CogVideoXImageToVideoPipeline,
    image: np.ndarray,  # uint8 [H, W, 3]: the first frame
    prompt: str,
    num_frames: int,
    steps: int = 8,
    guidance_scale: float = 6.0,
    seed: int = 0,
    max_text_len: int = 226,
    use_dynamic_cfg: bool = False,
) -> np.ndarray:
    """uint8 [F, H, W, 3] frames generated from `image` and `prompt`.

    use_dynamic_cfg: the stock pipeline's cosine-ramped guidance scale (CogVideoX's recommended
    setting with the DPM scheduler); off, a constant `guidance_scale`.
    """
    h, w = image.shape[:2]
    return _sample(pipe, num_frames, h, w, steps, guidance_scale, seed, image=Image.fromarray(image), prompt=prompt,
                   max_sequence_length=max_text_len, use_dynamic_cfg=use_dynamic_cfg)


def sample_image_video_wan(
    pipe,
    first: np.ndarray,
    prompt: str,
    num_frames: int,
    steps: int = 8,
    guidance_scale: float = 5.0,
    seed: int = 0,
    max_text_len: int = 512,
) -> np.ndarray:
    """uint8 [F, H, W, 3] frames from the first frame [H, W, 3] and `prompt` through the stock WanImageToVideoPipeline.

    The prompt goes in as embeddings from stage one's encoder (the pipeline's own UMT5 encoding, without ftfy:
    this diffusers' I2V pipeline calls ftfy unconditionally on a text prompt, and ftfy is no dependency here).
    """
    from PIL import Image

    from stages.families.wan.encoders import WanEncoders, encode_prompt_wan

    device = pipe.text_encoder.device
    enc = WanEncoders(pipe.vae, pipe.text_encoder, pipe.tokenizer, device, pipe.text_encoder.dtype)
    text, empty = (torch.from_numpy(encode_prompt_wan(enc, p, max_text_len)[0]).to(device, pipe.transformer.dtype)[None]
                   for p in (prompt, ""))
    height, width = first.shape[:2]
    return _sample(pipe, num_frames, height, width, steps, guidance_scale, seed, image=Image.fromarray(first),
                   prompt_embeds=text, negative_prompt_embeds=empty)


def sample_text_video(
    pipe,
    prompt: str,
    num_frames: int,
    height: int,
    width: int,
    steps: int = 8,
    guidance_scale: float = 5.0,
    seed: int = 0,
    max_text_len: int = 512,
) -> np.ndarray:
    """uint8 [F, H, W, 3] frames from `prompt` through a stock text-to-video pipeline (WanPipeline)."""
    return _sample(pipe, num_frames, height, width, steps, guidance_scale, seed, prompt=prompt, negative_prompt="",
                   max_sequence_length=max_text_len)


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
