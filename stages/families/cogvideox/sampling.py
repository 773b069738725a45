"""CogVideoX's stock pipelines for sampling: CogVideoXImageToVideoPipeline (i2v: first frame + caption) and
CogVideoXPipeline (t2v: the caption alone, at the clip's size), around a given transformer or a loaded student.

Both take the inference scheduler CogVideoXDPMScheduler on the training schedule's config (what the hub folders'
scheduler/ holds), and both read the exported LoRA through CogVideoXLoraLoaderMixin.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline, CogVideoXPipeline
from PIL import Image

from stages.families.cogvideox.encoders import load_encoders
from stages.families.cogvideox.transformer import COGVIDEOX_5B_SCHEDULER, TINY
from stages.families.sampling import _sample

PIPELINES = {"i2v": CogVideoXImageToVideoPipeline, "t2v": CogVideoXPipeline}


def inference_scheduler(student_model: str) -> CogVideoXDPMScheduler:
    """The DPM scheduler the CogVideoX pipelines sample with, on the student folder's schedule (the 5B's for "tiny")."""
    if student_model == TINY:
        return CogVideoXDPMScheduler(**COGVIDEOX_5B_SCHEDULER)
    return CogVideoXDPMScheduler.from_pretrained(student_model, subfolder="scheduler")


def pipeline_around(transformer: torch.nn.Module, student_model: str, encoders_model: str, task: str,
                    device: str | torch.device, dtype: torch.dtype, low_memory: bool = False):
    """The stock pipeline of `task` around `transformer` with the encoders of `encoders_model` (a folder, hub id or
    "tiny"). low_memory: VAE slicing, and tiling on CUDA (in-training samples beside the trainer's memory)."""
    dev = torch.device(device)
    enc = load_encoders(encoders_model, dtype, dev, vae_slicing=low_memory, vae_tiling=low_memory and dev.type == "cuda")
    return PIPELINES[task](tokenizer=enc.tokenizer, text_encoder=enc.text_encoder, vae=enc.vae, transformer=transformer,
                           scheduler=inference_scheduler(student_model))


def sample(pipe, task: str, first_frame: np.ndarray | None, prompt: str, num_frames: int, height: int, width: int,
           steps: int, guidance: float, seed: int, max_text_len: int = 226, dynamic_cfg: bool = False) -> np.ndarray:
    """uint8 [F, H, W, 3]: i2v from `first_frame` (uint8 [H, W, 3]; its size is the sample's) and `prompt`; t2v from
    `prompt` at height x width. dynamic_cfg: the stock pipelines' cosine-ramped guidance (use_dynamic_cfg)."""
    common = dict(prompt=prompt, max_sequence_length=max_text_len, use_dynamic_cfg=dynamic_cfg)
    if task == "i2v":
        if first_frame is None:
            raise ValueError("a CogVideoX image-to-video sample needs the clip's first frame")
        h, w = first_frame.shape[:2]
        return _sample(pipe, num_frames, h, w, steps, guidance, seed, image=Image.fromarray(first_frame), **common)
    return _sample(pipe, num_frames, height, width, steps, guidance, seed, **common)
