"""CogVideoX's training objective (L_diff), as diffusers' CogVideoX LoRA scripts define it.

train_cogvideox_[image_to_video_]lora.py: x0 = posterior sample * scaling factor, t ~ U{0..999},
x_t = add_noise(x0, eps, t), the model predicts v, the scheduler turns (v, x_t) into a predicted x0
(`get_velocity(v, x_t, t)` = sqrt(abar) x_t - sqrt(1 - abar) v), and the loss is
mean_sample(w_t * (x0_pred - x0)^2) with w_t = 1 / (1 - abar_t), averaged over the batch; fp32.
`prepare_diffusion_inputs` builds one forward's inputs, `diffusion_loss_from_output` scores its
output, `diffusion_loss` chains them for callers that do not tap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor

from stages.families.cogvideox.transformer import rotary_embedding
from stages.families.noise import caption_dropout as drop_captions, rand_device

# ----------------------------------------------------------------------------------------- L_diff


@dataclass
class DiffusionInputs:
    """What one training forward needs and what its loss compares against."""

    model_kwargs: dict[str, Any]  # transformer(**model_kwargs)[0] is the v prediction [B, T, C, h, w]
    clean: torch.Tensor  # x0: scaled latents [B, T, C, h, w], fp32 (the target)
    noisy: torch.Tensor  # x_t [B, T, C, h, w], fp32
    timesteps: torch.Tensor  # [B] int64


def prepare_diffusion_inputs(
    transformer_config: Any,
    scheduler: Any,
    latent_params: torch.Tensor,
    prompt_embeds: torch.Tensor,
    scaling_factor: float,
    generator: torch.Generator | None,
    *,
    task: str = "i2v",
    image_latents: torch.Tensor | None = None,
    image_scale: float | None = None,
    timesteps: int | None = None,
    image_dropout: float = 0.0,
    empty_prompt_embeds: torch.Tensor | None = None,
    caption_dropout: float = 0.0,
    rotary: tuple[torch.Tensor, torch.Tensor] | None | str = "auto",
    dtype: torch.dtype | None = None,
    fixed_timesteps: torch.Tensor | None = None,
) -> DiffusionInputs:
    """Sample x0, t, eps and build the transformer's inputs for one step.

    latent_params: [B, 2C, T, h, w] VAE posterior (mean, logvar on channels), unscaled, any dtype.
    CogVideoX 1.5 (patch_size_t set): T is padded to a multiple of patch_size_t (`pad_frames`), and
    the image latent sits in front of T' - 1 zero frames, as the 1.5 pipeline builds them.
    prompt_embeds: [B, L, D_text]. image_latents (i2v): [B, C, 1, h, w] unscaled sample of the
    (already noised) first frame. image_scale: factor for the image latents, default scaling_factor
    (CogVideoX 1.5, whose VAE sets invert_scale_latents, needs 1 / scaling_factor).
    timesteps: t ~ U{0..timesteps-1}; default the scheduler's num_train_timesteps.
    image_dropout / caption_dropout: per-sample probability of zeroing the image latent / using
    `empty_prompt_embeds` [L, D_text]. rotary: "auto" computes the RoPE of this grid (None if the model
    has none); pass a precomputed pair to reuse it across steps. dtype: of the model inputs
    (default: prompt_embeds' dtype if floating, else fp32). fixed_timesteps: [B] int64 used instead of
    drawing t (validation at fixed t; the t draw is then skipped, the other draws are unchanged).

    Random draws, in this order, all from `generator` (so a step is reproducible from its seed on
    any device): posterior eps, t, noise, image-dropout uniforms (i2v), caption-dropout uniforms.
    """
    device = latent_params.device
    batch = latent_params.shape[0]
    num_train = int(scheduler.config.num_train_timesteps)
    timesteps = num_train if timesteps is None else timesteps
    if not 1 <= timesteps <= num_train:
        raise ValueError(f"timesteps must be in 1..{num_train} (the scheduler's num_train_timesteps), got {timesteps}")

    posterior = DiagonalGaussianDistribution(latent_params.float())
    clean = pad_frames(transformer_config, (posterior.sample(generator) * scaling_factor).permute(0, 2, 1, 3, 4))  # [B, T', C, h, w]
    frames, height, width = clean.shape[1], clean.shape[3], clean.shape[4]
    _check_geometry(transformer_config, task, clean.shape[2], frames, height, width, prompt_embeds.shape[1])

    if fixed_timesteps is not None:
        t = fixed_timesteps.to(device=device, dtype=torch.long).expand(batch)
    else:
        t = torch.randint(0, timesteps, (batch,), generator=generator, device=rand_device(generator)).to(device)
    noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    noisy = scheduler.add_noise(clean, noise, t)
    model_input = noisy
    if task == "i2v":
        if image_latents is None:
            raise ValueError("task i2v needs image_latents [B, C, 1, h, w]")
        scale = scaling_factor if image_scale is None else image_scale
        image = _padded_image_latents(image_latents.float() * scale, frames)
        keep = torch.rand(batch, generator=generator, device=rand_device(generator)).to(device) >= image_dropout
        model_input = torch.cat([noisy, image * keep.view(-1, 1, 1, 1, 1)], dim=2)

    dtype = dtype or (prompt_embeds.dtype if prompt_embeds.is_floating_point() else torch.float32)
    text = drop_captions(prompt_embeds, empty_prompt_embeds, caption_dropout, generator)
    if rotary == "auto":
        rotary = rotary_embedding(transformer_config, frames, height, width, device)
    ofs = clean.new_full((1,), 2.0) if getattr(transformer_config, "ofs_embed_dim", None) else None  # CogVideoX 1.5 I2V
    model_kwargs = {
        "hidden_states": model_input.to(dtype),
        "encoder_hidden_states": text.to(dtype),
        "timestep": t,
        "ofs": ofs,
        "image_rotary_emb": rotary,
        "return_dict": False,
    }
    return DiffusionInputs(model_kwargs, clean, noisy, t)


def diffusion_loss_from_output(
    scheduler: Any, model_output: torch.Tensor, inputs: DiffusionInputs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L_diff, aux) from the transformer's v prediction [B, T, C, h, w].

    aux: "per_sample" [B] (detached), "timesteps" [B], "weights" [B] = 1 / (1 - abar_t).
    """
    t = inputs.timesteps
    pred_x0 = scheduler.get_velocity(model_output.float(), inputs.noisy, t)
    abar = scheduler.alphas_cumprod.to(device=t.device)[t].float()
    weights = 1.0 / (1.0 - abar)
    per_sample = weights * (pred_x0 - inputs.clean).square().flatten(1).mean(1)
    return per_sample.mean(), {"per_sample": per_sample.detach(), "timesteps": t, "weights": weights}


def diffusion_loss(
    transformer: torch.nn.Module,
    scheduler: Any,
    latent_params: torch.Tensor,
    prompt_embeds: torch.Tensor,
    scaling_factor: float,
    generator: torch.Generator | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """prepare_diffusion_inputs -> one transformer forward -> diffusion_loss_from_output.

    kwargs go to prepare_diffusion_inputs (task, image_latents, ...); dtype defaults to the transformer's.
    """
    kwargs.setdefault("dtype", transformer.dtype)
    inputs = prepare_diffusion_inputs(
        transformer.config, scheduler, latent_params, prompt_embeds, scaling_factor, generator, **kwargs
    )
    output = transformer(**inputs.model_kwargs)[0]
    return diffusion_loss_from_output(scheduler, output, inputs)


def pad_frames(transformer_config: Any, latents: torch.Tensor) -> torch.Tensor:
    """[B, T, C, h, w] -> [B, T', C, h, w], T' the next multiple of patch_size_t (CogVideoX 1.5; else T).

    The first frame is repeated in front, as CogVideo's 1.5 fine-tuning does: the 1.5 pipeline
    generates T' frames, conditions position 0 on the image and drops the padded leading frames
    (CogVideoXImageToVideoPipeline.__call__, `additional_frames`), so position 0 is a stand-in.
    """
    p_t = getattr(transformer_config, "patch_size_t", None)
    if not p_t or latents.shape[1] % p_t == 0:
        return latents
    extra = p_t - latents.shape[1] % p_t
    return torch.cat([latents[:, :1].expand(-1, extra, -1, -1, -1), latents], dim=1)


def _padded_image_latents(image: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, C, 1, h, w] -> [B, T, C, h, w]: the first frame, then zeros (as the I2V pipeline pads it)."""
    image = image.permute(0, 2, 1, 3, 4)
    pad = image.new_zeros(image.shape[0], frames - 1, *image.shape[2:])
    return torch.cat([image, pad], dim=1)


def _check_geometry(config: Any, task: str, channels: int, frames: int, height: int, width: int, text_len: int) -> None:
    """Fail early, with the numbers, where diffusers would fail late or silently resample."""
    if channels != config.out_channels:
        raise ValueError(f"latents have {channels} channels; the transformer predicts {config.out_channels}")
    expected_in = 2 * channels if task == "i2v" else channels
    if config.in_channels != expected_in:
        raise ValueError(f"task {task} feeds {expected_in} channels but the transformer takes {config.in_channels}")
    uses_pos = config.use_learned_positional_embeddings or not config.use_rotary_positional_embeddings
    if uses_pos and text_len != config.max_text_seq_length:
        raise ValueError(
            f"prompt_embeds have {text_len} tokens; this model's positional embeddings need exactly "
            f"max_text_seq_length={config.max_text_seq_length}"
        )
    if config.use_learned_positional_embeddings and (height, width) != (config.sample_height, config.sample_width):
        raise ValueError(
            f"latent grid {height}x{width} differs from the learned positional embeddings' "
            f"{config.sample_height}x{config.sample_width}: encode clips at the model's resolution"
        )
