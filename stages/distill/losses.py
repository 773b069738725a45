"""Stage two's objectives: L_diff (CogVideoX fine-tuning), L_feat (LGF) and the REPA / mask baselines.

One transformer forward per step: `prepare_diffusion_inputs` builds the model's inputs, the trainer
runs `transformer(**inputs.model_kwargs)` with a FeatureTap attached, then `diffusion_loss_from_output`
scores the output and `feature_losses` scores the tapped features. `diffusion_loss` chains the first
three for callers that do not tap.

L_diff reproduces diffusers' CogVideoX LoRA scripts (train_cogvideox_[image_to_video_]lora.py):
x0 = posterior sample * scaling factor, t ~ U{0..999}, x_t = add_noise(x0, eps, t), the model predicts
v, the scheduler turns (v, x_t) into a predicted x0 (`get_velocity(v, x_t, t)` =
sqrt(abar) x_t - sqrt(1 - abar) v), and the loss is mean_sample(w_t * (x0_pred - x0)^2) with
w_t = 1 / (1 - abar_t), averaged over the batch. All losses are computed in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor

from stages.families.cogvideox.transformer import rotary_embedding
from stages.core.lgf import SINGLE_STACK, fuse, lgf_kl, lgf_probs

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
        t = torch.randint(0, timesteps, (batch,), generator=generator, device=_rand_device(generator)).to(device)
    noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    noisy = scheduler.add_noise(clean, noise, t)
    model_input = noisy
    if task == "i2v":
        if image_latents is None:
            raise ValueError("task i2v needs image_latents [B, C, 1, h, w]")
        scale = scaling_factor if image_scale is None else image_scale
        image = _padded_image_latents(image_latents.float() * scale, frames)
        keep = torch.rand(batch, generator=generator, device=_rand_device(generator)).to(device) >= image_dropout
        model_input = torch.cat([noisy, image * keep.view(-1, 1, 1, 1, 1)], dim=2)

    dtype = dtype or (prompt_embeds.dtype if prompt_embeds.is_floating_point() else torch.float32)
    text = _caption_dropout(prompt_embeds, empty_prompt_embeds, caption_dropout, generator)
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


def _caption_dropout(
    prompt_embeds: torch.Tensor, empty: torch.Tensor | None, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    drop = torch.rand(prompt_embeds.shape[0], generator=generator, device=_rand_device(generator)).to(prompt_embeds.device) < p
    if not drop.any():
        return prompt_embeds
    if empty is None:
        raise ValueError("caption dropout needs empty_prompt_embeds [L, D_text]")
    return torch.where(drop.view(-1, 1, 1), empty.to(prompt_embeds).expand_as(prompt_embeds), prompt_embeds)


def _rand_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


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


# ----------------------------------------------------------------------------------------- L_feat and baselines


def lgf_loss(
    projected: torch.Tensor, teacher_probs: torch.Tensor, kernel: int, tau: float, offsets: Sequence[int] = (1,)
) -> torch.Tensor:
    """L_feat: mean KL(P_teacher || P_student) of projected student features [B, T, h, w, C]
    against teacher LGF probabilities [B, T', h, w, k*k] (stages.core.lgf.lgf_kl, fp32)."""
    return lgf_kl(teacher_probs, projected, kernel, tau, offsets)


def lgf_key(cfg: Any) -> tuple[int, float, tuple[int, ...], str]:
    """(kernel, tau, offsets, fusion) of an LGF config object or its dict form (column attrs)."""
    get = cfg.get if isinstance(cfg, Mapping) else lambda k: getattr(cfg, k)
    return int(get("kernel")), float(get("tau")), tuple(int(o) for o in get("offsets")), str(get("fusion"))


def single_stack(column_lgf: Any) -> bool:
    """A column of one feature stack (the image teacher) records fusion "single" (stages.core.lgf.SINGLE_STACK)."""
    return column_lgf is not None and lgf_key(column_lgf)[3] == SINGLE_STACK


def stored_lgf_fits(column_lgf: Any, run_lgf: Any) -> bool:
    """Whether the column's stored `lgf` is this run's target: same (kernel, tau, offsets, fusion), or
    same (kernel, tau, offsets) for a single stack, where every fusion mode gives the same target."""
    if single_stack(column_lgf):
        return lgf_key(column_lgf)[:3] == lgf_key(run_lgf)[:3]
    return lgf_key(column_lgf) == lgf_key(run_lgf)


def teacher_target(batch: Mapping[str, torch.Tensor], run_lgf: Any, column_lgf: Any) -> torch.Tensor:
    """Teacher LGF probabilities [B, T', h, w, k*k] for this run's LGF settings, fp32.

    The stored `lgf` when the run's (kernel, tau, offsets, fusion) equal the column's; otherwise
    recomputed from the stored fwd/bwd features with stages.core.lgf.fuse (a sweep needs no re-extraction).
    A single-stack column (image teacher: `fwd` only) recomputes lgf_probs(fwd): on one stack every
    fusion mode is that (fuse(x, x, ...) == lgf_probs(x)), so the run's fusion is moot there.
    """
    kernel, tau, offsets, fusion = lgf_key(run_lgf)
    if column_lgf is not None and stored_lgf_fits(column_lgf, run_lgf) and batch.get("lgf") is not None:
        return batch["lgf"].float()
    if single_stack(column_lgf):
        return lgf_probs(batch["fwd"], kernel, tau, offsets)
    return fuse(batch["fwd"], batch["bwd"], kernel, tau, offsets, fusion)


def repa_teacher(batch: Mapping[str, torch.Tensor], mode: str = "fwd") -> torch.Tensor:
    """Teacher features [B, T, h, w, C] for REPA: the forward pass, or the mean of both passes."""
    if mode == "fwd":
        return batch["fwd"].float()
    if mode == "mean":
        if "bwd" not in batch:  # a single-stack column (image teacher; data.teacher_arrays reads no bwd): its one stack
            return batch["fwd"].float()
        return 0.5 * (batch["fwd"].float() + batch["bwd"].float())
    raise ValueError(f"unknown REPA teacher {mode!r}; valid: fwd, mean")


def repa_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity per token, averaged: -1 when aligned. Both [B, T, h, w, C]."""
    if projected.shape != teacher.shape:
        raise ValueError(f"REPA needs matching shapes: projected {tuple(projected.shape)} vs teacher {tuple(teacher.shape)}")
    return -F.cosine_similarity(projected.float(), teacher.float(), dim=-1, eps=1e-6).mean()


def mask_loss(
    logits: torch.Tensor, mask: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0, eps: float = 1.0
) -> torch.Tensor:
    """BCE + soft Dice of mask logits [B, T, h, w] against coverage `mask` uint8 0..255 [B, T, h, w].

    The target is the coverage fraction (mask / 255), so partly covered tokens are soft targets.
    Dice per sample: 1 - (2 sum(p y) + eps) / (sum p + sum y + eps), eps smoothing empty masks.
    """
    target = mask.float() / 255.0
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    dice = 1.0 - (2.0 * (prob * target).sum(1) + eps) / (prob.sum(1) + target.sum(1) + eps)
    return bce_weight * bce + dice_weight * dice.mean()


def weight_at(step: int, weight: float, warmup_steps: int = 0, cutoff_step: int | None = None) -> float:
    """Scheduled loss weight: linear ramp 0 -> weight over warmup_steps, then constant, 0 from cutoff_step."""
    if cutoff_step is not None and step >= cutoff_step:
        return 0.0
    if warmup_steps > 0 and step < warmup_steps:
        return weight * step / warmup_steps
    return weight


@dataclass
class FeatureLosses:
    """The feature terms of one step: unweighted values (fp32, on the graph) and their scheduled weights."""

    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor | float:
        """sum_i weight_i * term_i (0.0 when no term is active)."""
        return sum((self.weights[k] * v for k, v in self.terms.items()), 0.0)


def feature_losses(
    cfg: Any,
    step: int,
    projector: torch.nn.Module,
    features: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    column_lgf: Any = None,
) -> FeatureLosses:
    """Project tapped features [B, T, h, w, D] once and compute every feature loss active at `step`.

    cfg: a LossesConfig (stages/config/distill.py). A term whose scheduled weight is 0 is not computed.
    batch: needs fwd/bwd (+ lgf), and mask for the mask term. column_lgf: the teacher column's LGF settings.
    """
    out = FeatureLosses()
    configs = {"lgf": cfg.lgf, "repa": cfg.repa, "mask": cfg.mask}
    weights = {name: weight_at(step, c.weight, c.warmup_steps, c.cutoff_step) for name, c in configs.items()}
    if not any(weights.values()):
        return out
    projected = projector(features)
    if weights["lgf"]:
        target = teacher_target(batch, cfg.lgf, column_lgf)
        out.terms["lgf"] = lgf_loss(projected, target, cfg.lgf.kernel, cfg.lgf.tau, cfg.lgf.offsets)
    if weights["repa"]:
        out.terms["repa"] = repa_loss(projected, repa_teacher(batch, cfg.repa.teacher))
    if weights["mask"]:
        out.terms["mask"] = mask_loss(projector.mask_logits(projected), batch["mask"], cfg.mask.bce_weight, cfg.mask.dice_weight)
    out.weights = {k: weights[k] for k in out.terms}
    return out
