"""The LTX-Video transformer and its training scheduler: the published and tiny configs, loading (no objective here).

Below the family (family.py) and the sampling (sampling.py), which both read it: LTX's one transformer does both tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

from stages.families.ltx.encoders import LTX_VIDEO, TINY_LTX

TINY_SEED = 0
FRAME_RATE = 25  # LTXPipeline's default frame_rate, and finetrainers' fixed one: RoPE's temporal scale 8 / 25

# transformer/config.json of Lightricks/LTX-Video (0.9.x, the 2B model; diffusers' constructor defaults are its values)
LTX_VIDEO_TRANSFORMER: dict[str, Any] = {
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64, "attention_out_bias": True,
    "caption_channels": 4096, "cross_attention_dim": 2048, "in_channels": 128, "norm_elementwise_affine": False,
    "norm_eps": 1e-06, "num_attention_heads": 32, "num_layers": 28, "out_channels": 128, "patch_size": 1,
    "patch_size_t": 1, "qk_norm": "rms_norm_across_heads",
}
# scheduler/scheduler_config.json of Lightricks/LTX-Video: flow matching with resolution-dependent (dynamic) shift
LTX_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05,
    "base_image_seq_len": 1024, "max_image_seq_len": 4096, "shift_terminal": 0.1,
}
KNOWN_TRANSFORMERS: dict[str, dict[str, Any]] = {LTX_VIDEO: LTX_VIDEO_TRANSFORMER}
# The sample size a memory plan assumes, latent (T, H, W): 121 frames of 512x768 (configs/*/ltx_video*.yaml)
KNOWN_LATENT_SHAPES: dict[str, tuple[int, int, int]] = {LTX_VIDEO: (16, 16, 24)}
DEFAULT_LATENT_SHAPE = (16, 16, 24)


def tiny_transformer_config() -> dict[str, Any]:
    """A 3-block LTX transformer (2 heads x 12: RoPE splits the width in 6), on the tiny VAE's 16 channels, text
    width 32 (the tiny T5's); cross_attention_dim = the inner width, as in the real model (caption_projection maps to it)."""
    return {
        "in_channels": 16, "out_channels": 16, "patch_size": 1, "patch_size_t": 1, "num_attention_heads": 2,
        "attention_head_dim": 12, "cross_attention_dim": 24, "num_layers": 3, "caption_channels": 32,
        "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": False, "norm_eps": 1e-6,
    }


def build_tiny_transformer() -> LTXVideoTransformer3DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return LTXVideoTransformer3DModel(**tiny_transformer_config())


def training_scheduler(scheduler_config: Mapping[str, Any]) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(**{k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")})


def scheduler_config_of(model: str) -> dict[str, Any]:
    if model == TINY_LTX or model in KNOWN_TRANSFORMERS and not Path(model).exists():
        return dict(LTX_SCHEDULER)
    return dict(FlowMatchEulerDiscreteScheduler.load_config(model, subfolder="scheduler"))


def load_transformer(model: str, dtype: torch.dtype, device: str | torch.device) -> tuple[LTXVideoTransformer3DModel, FlowMatchEulerDiscreteScheduler]:
    """(transformer in `dtype` on `device`, training scheduler) of a diffusers folder / hub id or the tiny preset."""
    if model == TINY_LTX:
        transformer = build_tiny_transformer()
    else:
        transformer = LTXVideoTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
    if transformer.dtype != dtype:
        transformer.to(dtype=dtype)
    transformer.to(device=device)
    return transformer, training_scheduler(scheduler_config_of(model))
