"""Sample a video with the stock diffusers image-to-video pipeline and a trained LoRA.

Inference needs no SAM2 and no projector (method.md): the fine-tuned CogVideoX runs alone. This is
the end of the demo and the proof that the exported LoRA is what a user's diffusers code loads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline
from PIL import Image

from stages.distill.student import load_student
from stages.extract.encoders import load_encoders

log = logging.getLogger(__name__)


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
) -> np.ndarray:
    """uint8 [F, H, W, 3] frames generated from `image` and `prompt`."""
    h, w = image.shape[:2]
    out = pipe(
        image=Image.fromarray(image),
        prompt=prompt,
        height=h,
        width=w,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=max_text_len,
        output_type="np",
    ).frames[0]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
