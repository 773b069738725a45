"""Wan's stock pipelines for sampling: WanPipeline (t2v: the caption alone, at the clip's size) and
WanImageToVideoPipeline, for Wan 2.1 I2V (first frame + caption, CLIP image tokens) and for Wan 2.2 TI2V with
`expand_timesteps` (what TI2V trains: latent frame 0 is the clean VAE latent of the first frame, timestep 0 on its
tokens; no image encoder, the transformer has no image_dim). All read the LoRA through WanLoraLoaderMixin.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
from PIL import Image

from stages.families.sampling import _sample
from stages.families.wan.encoders import WanEncoders, encode_prompt_wan, load_wan_encoders

PIPELINES = {"t2v": WanPipeline, "i2v": WanImageToVideoPipeline, "ti2v": WanImageToVideoPipeline}


def inference_scheduler(student_model: str, task: str, tiny: str, tiny_configs: dict) -> UniPCMultistepScheduler:
    """UniPC on flow sigmas as the Wan folders' scheduler/ (the tiny presets': Wan 2.1's, Wan 2.2's for ti2v)."""
    if student_model == tiny:
        return UniPCMultistepScheduler(**tiny_configs[task])
    return UniPCMultistepScheduler.from_pretrained(student_model, subfolder="scheduler")


def pipeline_around(transformer: torch.nn.Module, scheduler: UniPCMultistepScheduler, encoders_model: str, task: str,
                    device: str | torch.device, dtype: torch.dtype):
    """The stock pipeline of `task` around `transformer`, with the encoders of `encoders_model` ("tiny-wan-i2v" or an
    I2V folder for i2v: the CLIP image encoder; "tiny-wan22" or the TI2V-5B folder for ti2v: the Wan 2.2 VAE)."""
    enc = load_wan_encoders(encoders_model, dtype, device)
    parts = dict(tokenizer=enc.tokenizer, text_encoder=enc.text_encoder, vae=enc.vae, transformer=transformer, scheduler=scheduler)
    if task == "i2v":
        if enc.image_encoder is None:
            raise ValueError(f"encoders {encoders_model!r} have no image_encoder/: an I2V pipeline needs the CLIP image encoder")
        return WanImageToVideoPipeline(**parts, image_encoder=enc.image_encoder, image_processor=enc.image_processor)
    if task == "ti2v":  # Wan 2.2 TI2V-5B image-to-video: per-token timesteps, frame 0 the first frame's clean latent
        return WanImageToVideoPipeline(**parts, expand_timesteps=True)
    return WanPipeline(**parts)


def sample(pipe, task: str, first_frame: np.ndarray | None, prompt: str, num_frames: int, height: int, width: int,
           steps: int, guidance: float, seed: int, max_text_len: int = 512, dynamic_cfg: bool = False) -> np.ndarray:
    """uint8 [F, H, W, 3]: i2v / ti2v from `first_frame` (uint8 [H, W, 3]; its size is the sample's) and `prompt`,
    t2v from `prompt` at height x width. dynamic_cfg: CogVideoX's option, not Wan's (refused)."""
    if dynamic_cfg:
        raise ValueError("--dynamic-cfg is CogVideoX's ramped guidance; the Wan pipelines have no use_dynamic_cfg")
    if task == "t2v":
        return _sample(pipe, num_frames, height, width, steps, guidance, seed, prompt=prompt, negative_prompt="",
                       max_sequence_length=max_text_len)
    if first_frame is None:
        raise ValueError(f"a Wan {task} sample needs the clip's first frame")
    text, empty = _prompt_embeds(pipe, prompt, max_text_len)
    h, w = first_frame.shape[:2]
    return _sample(pipe, num_frames, h, w, steps, guidance, seed, image=Image.fromarray(first_frame),
                   prompt_embeds=text, negative_prompt_embeds=empty)


def _prompt_embeds(pipe, prompt: str, max_text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, empty prompt) embeddings [1, L, D] from stage one's UMT5 encoding (the pipeline's own, without ftfy:
    this diffusers' WanImageToVideoPipeline calls ftfy unconditionally on a text prompt, and ftfy is no dependency)."""
    device = pipe.text_encoder.device
    enc = WanEncoders(pipe.vae, pipe.text_encoder, pipe.tokenizer, device, pipe.text_encoder.dtype)
    text, empty = (torch.from_numpy(encode_prompt_wan(enc, p, max_text_len)[0]).to(device, pipe.transformer.dtype)[None]
                   for p in (prompt, ""))
    return text, empty
