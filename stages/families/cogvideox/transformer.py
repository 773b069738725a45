"""The student: CogVideoX's transformer and its noise scheduler, made trainable (LoRA or full).

Loads a diffusers-format model (folder or hub id with `transformer/` and `scheduler/`) or a tiny
random-weight one, and holds the geometry helpers the trainer needs: the token grid of a latent
and the 3D RoPE the inference pipelines compute. No VAE and no text encoder: stage two reads
their outputs from the feature store. LoRA and full fine-tuning are family-independent
(stages/families/lora.py); this module adds CogVideoX's attention backends to them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb, get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid

# the family-independent LoRA helpers, importable from here as before the move
from stages.families.lora import apply_lora, cast_trainable_to_fp32, enable_full_finetune, trainable_parameters  # noqa: F401

logger = logging.getLogger(__name__)

TINY = "tiny"
TINY_SEED = 0  # tiny weights are a pure function of this seed: two loads give the same model

# Scheduler of THUDM/CogVideoX-5b and -5b-I2V (scheduler_config.json): v-prediction, zero terminal SNR.
COGVIDEOX_5B_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "snr_shift_scale": 1.0,  # 3.0 for the 2B model
    "timestep_spacing": "trailing",
}


# transformer/config.json of THUDM/CogVideoX-5b-I2V (diffusers keys; unlisted keys take diffusers' defaults)
COGVIDEOX_5B_I2V_TRANSFORMER: dict[str, Any] = {
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64, "dropout": 0.0,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 32, "max_text_seq_length": 226,
    "norm_elementwise_affine": True, "norm_eps": 1e-05, "num_attention_heads": 48, "num_layers": 42,
    "out_channels": 16, "patch_size": 2, "sample_frames": 49, "sample_height": 60, "sample_width": 90,
    "spatial_interpolation_scale": 1.875, "temporal_compression_ratio": 4, "temporal_interpolation_scale": 1.0,
    "text_embed_dim": 4096, "time_embed_dim": 512, "timestep_activation_fn": "silu",
    "use_learned_positional_embeddings": True, "use_rotary_positional_embeddings": True,
}
# hub ids whose transformer config is known without a download (memory plans, benchmarks)
KNOWN_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "THUDM/CogVideoX-5b-I2V": COGVIDEOX_5B_I2V_TRANSFORMER,
    "THUDM/CogVideoX-5b": {**COGVIDEOX_5B_I2V_TRANSFORMER, "in_channels": 16, "use_learned_positional_embeddings": False},
}


def tiny_transformer_config(task: str = "i2v") -> dict[str, Any]:
    """A 3-block CogVideoX (2 heads x 16, text width 32) with the 5B-I2V's switches.

    Latent grid 16x24 (128x192 pixels; token grid 8x12), 13 latent frames (sample_frames 49), 16 text
    tokens: the sizes of the bundled sample corpus. RoPE on; learned positional embeddings for i2v
    as the real I2V model (they fix the spatial size and require exactly `max_text_seq_length` tokens).
    """
    _check_task_name(task)
    return {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 32 if task == "i2v" else 16,
        "out_channels": 16,
        "time_embed_dim": 32,
        "text_embed_dim": 32,
        "num_layers": 3,
        "sample_width": 24,
        "sample_height": 16,
        "sample_frames": 49,
        "patch_size": 2,
        "temporal_compression_ratio": 4,
        "max_text_seq_length": 16,
        "use_rotary_positional_embeddings": True,
        "use_learned_positional_embeddings": task == "i2v",
    }


def build_tiny_student(task: str = "i2v") -> tuple[CogVideoXTransformer3DModel, CogVideoXDPMScheduler]:
    """Tiny random-weight transformer (deterministic, global RNG untouched) + the real 5B scheduler."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        transformer = CogVideoXTransformer3DModel(**tiny_transformer_config(task))
        # Diffusers initialises learned positional embeddings to sincos values in float64; store them
        # as the float32 a saved-and-reloaded model has, randomised like every other tiny weight.
        if transformer.config.use_learned_positional_embeddings:
            pos = transformer.patch_embed.pos_embedding
            pos.data = torch.randn(pos.shape, dtype=torch.float32) * 0.02
    return transformer, CogVideoXDPMScheduler(**COGVIDEOX_5B_SCHEDULER)


def save_tiny_student(directory: str | Path, task: str = "i2v") -> Path:
    """Write the tiny student in diffusers format (`transformer/`, `scheduler/`), loadable by `load_student`.

    The scheduler is saved as CogVideoXDDIMScheduler, the class the hub's 5B folders name.
    """
    directory = Path(directory)
    transformer, scheduler = build_tiny_student(task)
    transformer.save_pretrained(directory / "transformer")
    CogVideoXDDIMScheduler.from_config(scheduler.config).save_pretrained(directory / "scheduler")
    return directory


def load_student(
    model: str,
    task: str = "i2v",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[CogVideoXTransformer3DModel, CogVideoXDPMScheduler]:
    """(transformer, scheduler) from a diffusers folder / hub id, or `"tiny"`.

    The scheduler is read as CogVideoXDPMScheduler whatever class the folder names, as diffusers'
    CogVideoX LoRA scripts do: training only uses its noise schedule (add_noise, get_velocity,
    alphas_cumprod), which both CogVideoX schedulers share.
    """
    _check_task_name(task)
    if model == TINY:
        transformer, scheduler = build_tiny_student(task)
    else:
        transformer = CogVideoXTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
        scheduler = CogVideoXDPMScheduler.from_pretrained(model, subfolder="scheduler")
    _check_task_fits(transformer.config, task, model)
    if scheduler.config.prediction_type != "v_prediction":
        raise ValueError(
            f"{model}: scheduler prediction_type is {scheduler.config.prediction_type!r}; CogVideoX training needs v_prediction"
        )
    if transformer.dtype != dtype:  # tiny builds in fp32; from_pretrained already cast
        transformer.to(dtype=dtype)
    transformer.to(device=device)
    return transformer, scheduler


def set_attention(transformer: CogVideoXTransformer3DModel, backend: str) -> str:
    """Select the attention kernel; returns the backend actually used.

    "sdpa" is diffusers' default CogVideoX processor (torch SDPA: flash / memory-efficient on GPU).
    "xformers" is used only when xformers imports and the model is on CUDA; otherwise SDPA, with a warning.
    """
    if backend == "sdpa":
        return "sdpa"
    if backend != "xformers":
        raise ValueError(f"unknown attention backend {backend!r}; valid: sdpa, xformers")
    if transformer.device.type != "cuda":
        logger.warning("attention=xformers needs CUDA (model is on %s): using SDPA", transformer.device)
        return "sdpa"
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        logger.warning("attention=xformers but xformers is not installed: using SDPA")
        return "sdpa"
    transformer.set_attn_processor(XFormersCogVideoXAttnProcessor())
    return "xformers"


def token_grid(transformer_config: Any, latent_shape: Sequence[int]) -> tuple[int, int, int]:
    """(T, h, w) token grid of a latent of shape (T, H8, W8): the grid teacher maps are resized to.

    h = H8 / patch_size, w = W8 / patch_size; T = latent frames, or for CogVideoX 1.5 the frames
    padded up to a multiple of patch_size_t, / patch_size_t (as the 1.5 pipeline pads them).
    """
    frames, height, width = (int(s) for s in latent_shape[-3:])
    p, p_t = transformer_config.patch_size, transformer_config.patch_size_t
    if height % p or width % p:
        raise ValueError(f"latent {height}x{width} is not divisible by the patch size {p}")
    return (frames if p_t is None else -(-frames // p_t)), height // p, width // p


def rotary_embedding(
    transformer_config: Any, frames: int, height8: int, width8: int, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """3D RoPE (cos, sin), each [T*h*w, head_dim], for a latent grid; None when the model has no RoPE.

    The same computation as CogVideoX(ImageToVideo)Pipeline._prepare_rotary_positional_embeddings,
    so training sees exactly the positions inference will use (grid cropped against sample size).
    """
    if not transformer_config.use_rotary_positional_embeddings:
        return None
    p, p_t = transformer_config.patch_size, transformer_config.patch_size_t
    grid_h, grid_w = height8 // p, width8 // p
    base_h, base_w = transformer_config.sample_height // p, transformer_config.sample_width // p
    if p_t is None:
        return get_3d_rotary_pos_embed(
            embed_dim=transformer_config.attention_head_dim,
            crops_coords=get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h),
            grid_size=(grid_h, grid_w),
            temporal_size=frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(
        embed_dim=transformer_config.attention_head_dim,
        crops_coords=None,
        grid_size=(grid_h, grid_w),
        temporal_size=(frames + p_t - 1) // p_t,
        grid_type="slice",
        max_size=(base_h, base_w),
        device=device,
    )


class XFormersCogVideoXAttnProcessor:
    """CogVideoX joint text+video attention through xformers' memory-efficient kernel.

    Why not diffusers' `enable_xformers_memory_efficient_attention`: it installs the generic
    XFormersAttnProcessor, which drops CogVideoX's text/video concatenation and RoPE (and returns one
    tensor where the block expects two). This keeps CogVideoXAttnProcessor2_0's math and swaps the kernel.
    """

    def __init__(self, kernel: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        # kernel(q, k, v) on [B, L, heads, head_dim] -> [B, L, heads, head_dim]; default xformers (CUDA only).
        self.kernel = kernel or _xformers_kernel

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise NotImplementedError("CogVideoX attention takes no mask")
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = (proj(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:  # RoPE on video tokens only: [B, heads, L, head_dim] layout
            q = torch.cat([q[:, :, :text_len], apply_rotary_emb(q[:, :, text_len:], image_rotary_emb)], dim=2)
            if not attn.is_cross_attention:
                k = torch.cat([k[:, :, :text_len], apply_rotary_emb(k[:, :, text_len:], image_rotary_emb)], dim=2)
        # The kernel takes one dtype. Under CUDA autocast the q/k norms (LayerNorm) run and return fp32
        # while the v projection returns the autocast dtype: bring all three to the autocast dtype when
        # autocast is on (what SDPA's autocast policy does), else to v's dtype (the model's).
        dtype = _kernel_dtype(q.device.type, v.dtype)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        out = self.kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).flatten(2)
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        return video_out, encoder_out


def _kernel_dtype(device_type: str, fallback: torch.dtype) -> torch.dtype:
    """The autocast dtype of `device_type` when autocast is on there, else `fallback`."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return fallback


def _xformers_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import xformers.ops

    return xformers.ops.memory_efficient_attention(q.contiguous(), k.contiguous(), v.contiguous())


def _check_task_name(task: str) -> None:
    if task not in ("i2v", "t2v"):
        raise ValueError(f"task must be 'i2v' or 't2v', got {task!r}")


def _check_task_fits(config: Any, task: str, model: str) -> None:
    """An I2V model takes [noisy latent, image latent] on channels: in_channels = 2 * out_channels."""
    out_channels = config.out_channels or config.in_channels
    expected = 2 * out_channels if task == "i2v" else out_channels
    if config.in_channels != expected:
        kind = "an image-to-video" if config.in_channels == 2 * out_channels else "a text-to-video"
        raise ValueError(
            f"{model} is {kind} model (in_channels {config.in_channels}, out_channels {out_channels}) "
            f"but student.task is {task!r}"
        )
