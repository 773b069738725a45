"""Sample an LTX-Video student through the stock diffusers pipelines with its exported LoRA.

Text-to-video: LTXPipeline from the caption at the clip's size. Image-to-video: LTXImageToVideoPipeline from the
clip's first frame and caption. Both at FRAME_RATE (the frame rate training fed to RoPE) with max_sequence_length =
the store's max_text_len, as training encoded the prompts (the same T5 call: unmasked, padded; the mask to the transformer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.families.ltx.encoders import load_ltx_encoders
from stages.families.ltx.transformer import FRAME_RATE, load_transformer, scheduler_config_of


def inference_scheduler(student_model: str):
    """The flow-matching Euler scheduler the stock LTX pipelines sample with, from the student's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**{k: v for k, v in scheduler_config_of(student_model).items() if not k.startswith("_")})


def pipeline_around(transformer, scheduler, encoders_model: str, task: str, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32):
    """The stock LTXPipeline (t2v) or LTXImageToVideoPipeline (i2v) around `transformer` with the encoders of
    `encoders_model` ("tiny-ltx" or a model folder)."""
    from diffusers import LTXImageToVideoPipeline, LTXPipeline

    if task not in ("t2v", "i2v"):
        raise ValueError(f"task={task!r}; an LTX-Video pipeline is t2v or i2v")
    enc = load_ltx_encoders(encoders_model, dtype, device)
    cls = LTXImageToVideoPipeline if task == "i2v" else LTXPipeline
    return cls(scheduler=scheduler, vae=enc.vae, text_encoder=enc.text_encoder, tokenizer=enc.tokenizer, transformer=transformer).to(device)


def build_ltx_pipeline(student_model: str, encoders_model: str, lora_dir: str | Path | None, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, task: str = "t2v"):
    """pipeline_around a loaded student (folder, hub id or "tiny-ltx"), with the LoRA of `lora_dir` loaded by the
    pipeline's own loader."""
    transformer, _ = load_transformer(student_model, dtype, device)
    pipe = pipeline_around(transformer, inference_scheduler(student_model), encoders_model, task, device, dtype)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    return pipe.to(device)


def sample_ltx(pipe, task: str, first: np.ndarray | None, prompt: str, num_frames: int, height: int, width: int, steps: int = 8,
               guidance_scale: float = 3.0, seed: int = 0, max_text_len: int = 128, output_type: str = "np"):
    """uint8 [F, H, W, 3] frames (output_type "np") or the packed latents ("latent") of one stock-pipeline call:
    i2v from `first` (uint8 [H, W, 3], the clip's first frame, at height x width) and `prompt`, t2v from `prompt`."""
    from PIL import Image

    inputs = {"image": Image.fromarray(first)} if task == "i2v" else {}
    out = pipe(prompt=prompt, negative_prompt="", height=height, width=width, num_frames=num_frames, frame_rate=FRAME_RATE,
               num_inference_steps=steps, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed),
               max_sequence_length=max_text_len, output_type=output_type, **inputs).frames
    if output_type == "latent":
        return out
    return (np.clip(out[0], 0, 1) * 255).round().astype(np.uint8)
