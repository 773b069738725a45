"""LTX-Video (diffusers LTXVideoTransformer3DModel) behind the student interface: text- and image-to-video.

Objective: rectified flow as LTXPipeline samples and finetrainers' LTX-Video specification trains it
(finetrainers/models/ltx_video/base_specification.py `forward`: x_t = (1 - sigma) x0 + sigma eps, target
eps - x0, timestep 1000 sigma, rope_interpolation_scale (8 / frame_rate, 32, 32), weighting "none"):
    x0 ~ the stored posterior of the normalised latent (z - latents_mean) / latents_std (encoders.py), [B, C, T, H, W];
    u ~ U(0, 1); sigma = e^mu / (e^mu + 1/u - 1) with mu = calculate_shift(T*H*W tokens, base/max_image_seq_len,
        base/max_shift of the scheduler config): the resolution-dependent shift LTXPipeline's dynamic-shifting
        scheduler applies to its sampling sigmas (shift_terminal only stretches the sampling schedule's end; not applied);
    eps ~ N(0, 1); x_t = (1 - sigma) x0 + sigma eps; the transformer predicts v = eps - x0 from
        (x_t packed to tokens, t = 1000 sigma, the T5 embeddings + their mask, num_frames/height/width, rope scale);
    L_diff = mean over the batch of mean((v_pred - (eps - x0))^2)   (loss weight 1).
Layouts: LTX takes and returns packed tokens [B, T*H*W, C] (LTXPipeline._pack_latents with patch 1, 1: ordered frame,
row, column), its blocks return the video tokens alone [B, T*h*w, D], and it computes its RoPE from the grid it is given
(`num_frames`, `height`, `width` kwargs: the token grid is read from them, not from the packed input).

Image-to-video (LTXImageToVideoPipeline; the same transformer): latent frame 0 is the clean condition
(the VAE latent of the first frame alone, stored as `image_latents`), as its prepare_latents builds it:
    conditioning_mask [B, T*H*W] = 1 on the tokens of latent frame 0, else 0;
    hidden = mask * condition + (1 - mask) * x_t;   timestep = 1000 sigma * (1 - mask) per token;
    L_diff over the tokens of latent frames 1.. only (the pipeline never steps frame 0).
finetrainers' T2V spec instead noises frame 0 lightly in 10% of steps; this follows the stock I2V pipeline exactly.
Caption dropout replaces embeddings and mask by the empty prompt's (T5: one </s> token).
The exported LoRA is read by the stock `LTXPipeline` / `LTXImageToVideoPipeline.load_lora_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import compute_density_for_timestep_sampling
from diffusers.utils.torch_utils import randn_tensor

from stages.families.base import Geometry, Student
from stages.families.ltx.encoders import (  # noqa: F401 (the published configs, read here and by tests)
    KNOWN_VAES, LTX_VIDEO, LTX_VIDEO_VAE, TINY_LTX, TINY_LTX_VAE_CONFIG, LtxVaeGeometry,
)
from stages.families.ltx.transformer import (  # noqa: F401
    DEFAULT_LATENT_SHAPE, FRAME_RATE, KNOWN_LATENT_SHAPES, KNOWN_TRANSFORMERS, LTX_SCHEDULER, LTX_VIDEO_TRANSFORMER,
    build_tiny_transformer, load_transformer, tiny_transformer_config,
)



def pack_latents(latents: torch.Tensor, p: int = 1, p_t: int = 1) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T/p_t * H/p * W/p, C * p_t * p * p], ordered (frame, row, column): LTXPipeline._pack_latents."""
    b, c, t, h, w = latents.shape
    x = latents.reshape(b, c, t // p_t, p_t, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)


def video_shift(scheduler_config: Mapping[str, Any], tokens: int) -> float:
    """mu of LTXPipeline's calculate_shift for a video of `tokens` latent tokens (its defaults where unset)."""
    c = dict(scheduler_config)
    base, top = c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096)
    lo, hi = c.get("base_shift", 0.5), c.get("max_shift", 1.15)
    m = (hi - lo) / (top - base)
    return tokens * m + lo - m * base


def shifted_sigmas(scheduler: FlowMatchEulerDiscreteScheduler, u: torch.Tensor, tokens: int) -> torch.Tensor:
    """u in (0, 1) -> the dynamically shifted sigma e^mu / (e^mu + 1/u - 1) (static shift s u / (1 + (s - 1) u) if the
    scheduler has no dynamic shifting), as LTXPipeline's scheduler shifts its sigmas."""
    u = u.clamp(1e-5, 1.0)
    if scheduler.config.use_dynamic_shifting:
        mu = torch.tensor(video_shift(scheduler.config, tokens), dtype=torch.float64)
        return (mu.exp() / (mu.exp() + (1.0 / u.double() - 1.0))).float()
    s = float(scheduler.config.shift)
    return s * u / (1 + (s - 1) * u)


def empty_prompt_mask(length: int, device: torch.device) -> torch.Tensor:
    """The mask of the empty prompt through a T5 tokenizer: its one </s> token, then padding."""
    mask = torch.zeros(length, dtype=torch.long, device=device)
    mask[0] = 1
    return mask


@dataclass
class LtxInputs:
    """One training forward of an LTX student; tensors packed [B, S, C] with S = T*H*W tokens (frame, row, column)."""

    model_kwargs: dict[str, Any]  # transformer(**model_kwargs)[0]: the v prediction [B, S, C]
    clean: torch.Tensor  # x0 packed, fp32
    noise: torch.Tensor  # eps packed
    sigmas: torch.Tensor  # [B]
    timesteps: torch.Tensor  # [B] float, 1000 sigma
    first_loss_token: int = 0  # I2V: H*W (latent frame 0's tokens are the clean condition, outside the loss)

    @property
    def target(self) -> torch.Tensor:
        return self.noise - self.clean


def prepare_ltx_inputs(
    transformer_config: Any,
    scheduler: FlowMatchEulerDiscreteScheduler,
    latent_params: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    generator: torch.Generator | None,
    *,
    empty_prompt_embeds: torch.Tensor | None = None,
    caption_dropout: float = 0.0,
    dtype: torch.dtype = torch.float32,
    image_latents: torch.Tensor | None = None,
    frame_rate: int = FRAME_RATE,
    vae_spatial: int = 32,
    vae_temporal: int = 8,
    fixed_sigma: float | None = None,
) -> LtxInputs:
    """Sample x0, sigma, eps and build the transformer's inputs (the module docstring).

    latent_params [B, 2C, T, H, W]: the stored posterior of the normalised latent. prompt_embeds [B, L, D] with
    prompt_mask [B, L] (1 = a token). image_latents [B, C, 1, H, W] normalised: the I2V condition (None: T2V).
    Random draws, in order, from `generator`: posterior eps, u, noise, caption-dropout uniforms.
    fixed_sigma (validation): every sample at this sigma, unshifted (no u draw), as Wan's validation does.
    """
    from stages.families.noise import caption_drops, rand_device

    device, batch = latent_params.device, latent_params.shape[0]
    clean = DiagonalGaussianDistribution(latent_params.float()).sample(generator)  # [B, C, T, H, W]
    _, c, t, h, w = clean.shape
    cfg = transformer_config
    if c != cfg.out_channels or cfg.in_channels != c:
        raise ValueError(f"latents have {c} channels; the LTX transformer takes {cfg.in_channels} and predicts {cfg.out_channels}")
    p, p_t = int(cfg.patch_size), int(cfg.patch_size_t)
    if fixed_sigma is None:
        u = compute_density_for_timestep_sampling("uniform", batch, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                  device=rand_device(generator), generator=generator)
        sigmas = shifted_sigmas(scheduler, u, (t // p_t) * (h // p) * (w // p)).to(device=device, dtype=torch.float32)
    else:
        sigmas = torch.full((batch,), float(fixed_sigma), device=device, dtype=torch.float32)
    timesteps = sigmas * 1000.0
    noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy = (1.0 - s) * clean + s * noise
    model_timestep = timesteps
    first_loss_token = 0
    if image_latents is not None:  # LTXImageToVideoPipeline: frame 0 = the condition, timestep 0 on its tokens
        if p_t != 1 or t < 2 or tuple(image_latents.shape[1:]) != (c, 1, h, w):
            raise ValueError(f"an LTX image-to-video step needs image_latents [B, {c}, 1, {h}, {w}] and >= 2 latent frames "
                             f"of temporal patch 1; got image_latents {tuple(image_latents.shape)}, {t} latent frames, patch_t {p_t}")
        condition = image_latents.float().to(device)
        clean = torch.cat([condition, clean[:, :, 1:]], dim=2)
        noisy = torch.cat([condition, noisy[:, :, 1:]], dim=2)
        mask = torch.zeros(batch, 1, t, h, w, device=device)
        mask[:, :, 0] = 1.0
        mask = pack_latents(mask, p, p_t).squeeze(-1)  # [B, S]
        model_timestep = timesteps.view(-1, 1) * (1.0 - mask)
        first_loss_token = (h // p) * (w // p)
    text, text_mask = prompt_embeds, prompt_mask.to(device)
    drop = caption_drops(batch, caption_dropout, generator, device)  # the embeddings' and the mask's
    if drop.any():
        if empty_prompt_embeds is None:
            raise ValueError("caption dropout needs empty_prompt_embeds [L, D_text]")
        text = torch.where(drop.view(-1, 1, 1), empty_prompt_embeds.to(text).expand_as(text), text)
        empty_mask = empty_prompt_mask(text.shape[1], device).to(text_mask.dtype)
        text_mask = torch.where(drop.view(-1, 1), empty_mask.expand_as(text_mask), text_mask)
    kwargs = {
        "hidden_states": pack_latents(noisy, p, p_t).to(dtype), "encoder_hidden_states": text.to(dtype),
        "timestep": model_timestep, "encoder_attention_mask": text_mask,
        "num_frames": t, "height": h, "width": w,
        "rope_interpolation_scale": (vae_temporal / frame_rate, vae_spatial, vae_spatial), "return_dict": False,
    }
    return LtxInputs(kwargs, pack_latents(clean, p, p_t), pack_latents(noise, p, p_t), sigmas, timesteps, first_loss_token)


def ltx_loss_from_output(model_output: torch.Tensor, inputs: LtxInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L_diff, aux): aux "per_sample" [B] (detached), "timesteps" [B], "weights" [B] (ones).
    Tokens before inputs.first_loss_token (I2V's clean latent frame 0) are left out of the mean."""
    f0 = inputs.first_loss_token
    per_sample = (model_output.float()[:, f0:] - inputs.target[:, f0:]).square().flatten(1).mean(1)
    weights = torch.ones_like(per_sample)
    return (weights * per_sample).mean(), {"per_sample": per_sample.detach(), "timesteps": inputs.timesteps, "weights": weights}


class LtxStudent(Student):
    family = "ltx"
    transformer_class = "LTXVideoTransformer3DModel"
    # one transformer for both tasks; the LoRA format (LTXVideoLoraLoaderMixin) is the same
    pipeline_classes = {"t2v": "LTXPipeline", "i2v": "LTXImageToVideoPipeline"}
    frame_rate = FRAME_RATE

    # -- what the registry asks
    tiny_presets = (TINY_LTX,)
    encoder_presets = (TINY_LTX,)  # the tiny LTX VAE + the tiny T5 (one store serves both tasks)
    vae_classes = ("AutoencoderKLLTXVideo",)
    hub_name_prefixes = ("ltx",)  # Lightricks/LTX-Video, Lightricks/LTX-Video-0.9.x, ...

    def tiny_encoders(self, task: str) -> str:
        return TINY_LTX

    def known_configs(self, model: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(transformer config, VAE config) of the tiny preset or a known hub id without a download; None otherwise."""
        if model == TINY_LTX:
            return tiny_transformer_config(), dict(TINY_LTX_VAE_CONFIG)
        if model in KNOWN_TRANSFORMERS:
            return dict(KNOWN_TRANSFORMERS[model]), dict(KNOWN_VAES[model])
        return None

    def load(self, model: str, task: str, dtype: torch.dtype, device: str | torch.device):
        if task not in self.pipeline_classes:
            raise ValueError(f"{model}: student.task={task!r}; an LTX-Video student is t2v or i2v")
        return load_transformer(model, dtype, device)  # one transformer for both tasks

    def save_tiny(self, directory: str | Path, task: str = "t2v") -> Path:
        directory = Path(directory)
        build_tiny_transformer().save_pretrained(directory / "transformer")
        FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER).save_pretrained(directory / "scheduler")
        return directory

    def geometry(self, transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> Geometry:
        vae = LtxVaeGeometry.from_config(vae_config)
        config = dict(transformer_config)
        return Geometry(vae.spatial, vae.temporal, int(config.get("patch_size", 1)), int(config.get("patch_size_t", 1)))

    def token_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        frames, height, width = (int(s) for s in latent_shape[-3:])
        p, p_t = int(transformer_config.patch_size), int(transformer_config.patch_size_t)
        if frames % p_t or height % p or width % p:
            raise ValueError(f"latent {frames}x{height}x{width} is not divisible by the patch size {[p_t, p, p]}")
        return frames // p_t, height // p, width // p

    def input_grid(self, transformer_config: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        raise ValueError("an LTX transformer input is packed tokens [B, S, C]: its grid is in the forward's "
                         "num_frames/height/width kwargs (forward_grid)")

    def forward_grid(self, transformer_config: Any, model_kwargs: Mapping[str, Any]) -> tuple[int, int, int]:
        """The forward's num_frames/height/width (latent sizes) / the patch: LTX's input is packed [B, S, C]."""
        missing = [k for k in ("num_frames", "height", "width") if model_kwargs.get(k) is None]
        if missing:
            raise ValueError(f"an LTX transformer forward without {', '.join(missing)}: its packed tokens have no grid")
        return self.token_grid(transformer_config, (model_kwargs["num_frames"], model_kwargs["height"], model_kwargs["width"]))

    def text_dim(self, transformer_config: Any) -> int:
        return int(transformer_config.caption_channels)

    def check_context_parallel(self, degree: int) -> None:
        """LTX has a diffusers _cp_plan, but it does not train: diffusers 0.42.1 runs the cross-attention (video
        queries over the text) through Ulysses too, whose backward reshapes the key/value gradients with the
        queries' length (RuntimeError "shape '[1, 2, 36, 1, 12]' is invalid for input of size 192" on the tiny
        LTX, 2 ranks), and the text mask, expanded per head before the split, fails the forward ("output with
        shape [1, 1, 72, 16] doesn't match the broadcast shape [1, 2, 72, 16]"). Wan's processor keeps its
        cross-attention local, which is why Wan trains."""
        if degree > 1:
            from stages.config.loader import ConfigError

            raise ConfigError(f"parallel.context={degree}: diffusers' context parallelism of the ltx transformer cannot train "
                              f"(its Ulysses cross-attention backward and text mask fail); use parallel.context=1")

    def blocks(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        return transformer.transformer_blocks

    # -- data, memory plan and stage one
    def condition_arrays(self, task: str) -> tuple[str, ...]:
        return ("image_latents",) if task == "i2v" else ()  # frame 0's latent; every LTX store holds it

    def plan_latent_shape(self, transformer_config: Any, model: str) -> tuple[int, int, int]:
        return KNOWN_LATENT_SHAPES.get(model, DEFAULT_LATENT_SHAPE)  # 121 frames of 512x768

    # attention_tokens: the default (video only): LTX's text enters by cross-attention, not the token sequence

    def encodings_layout(self, encoders_cfg: Any, video_cfg: Any):
        from stages.families.ltx.encoders import encodings_layout

        return encodings_layout(encoders_cfg, video_cfg)

    def load_encoders(self, encoders_cfg: Any, device: str):
        from stages.families.ltx.encoders import load_column_encoders

        return load_column_encoders(encoders_cfg, device)

    def video_tokens(self, block_output: Any) -> torch.Tensor:
        return block_output  # an LTX block returns the video tokens [B, T*h*w, D] alone (text enters by cross-attention)

    def prepare_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> LtxInputs:
        if "prompt_mask" not in batch:
            raise ValueError("an LTX student needs the prompt mask (its cross-attention masks the padded T5 tokens): "
                             "the encodings column's prompt_mask is not in the batch")
        return prepare_ltx_inputs(
            ctx.transformer_config, ctx.scheduler, batch["latents"], batch["prompt_embeds"], batch["prompt_mask"], generator,
            empty_prompt_embeds=ctx.empty_prompt, caption_dropout=ctx.caption_dropout, dtype=ctx.dtype,
            image_latents=batch.get("image_latents") if ctx.task == "i2v" else None,
        )

    def loss_from_output(self, ctx: Any, output: torch.Tensor, inputs: LtxInputs):
        return ltx_loss_from_output(output, inputs)

    # -- inference: the stock pipeline of each task (stages/families/ltx/sampling.py)
    def inference_scheduler(self, student_model: str, task: str):
        from stages.families.ltx.sampling import inference_scheduler

        return inference_scheduler(student_model)

    def pipeline_around(self, transformer, student_model, encoders_model, task, device, dtype, low_memory=False):
        from stages.families.ltx.sampling import pipeline_around

        return pipeline_around(transformer, self.inference_scheduler(student_model, task), encoders_model, task, device, dtype)

    def sample(self, pipe, task, first_frame, prompt, num_frames, height, width, steps, guidance, seed, max_text_len,
               dynamic_cfg=False):
        """uint8 [F, H, W, 3]: i2v from the clip's first frame [H, W, 3] and caption, t2v from the caption at height x width."""
        from stages.families.ltx.sampling import sample_ltx

        if dynamic_cfg:
            raise ValueError("dynamic_cfg is CogVideoX's; the LTX pipelines have no such switch")
        return sample_ltx(pipe, task, first_frame, prompt, num_frames, height, width, steps, guidance, seed, max_text_len)

    # -- validation
    def validation_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], timestep: int, generator: torch.Generator) -> LtxInputs:
        """The flow objective at sigma = t / N (the model sees 1000 sigma), no caption dropout."""
        n = ctx.scheduler.config.num_train_timesteps
        return prepare_ltx_inputs(
            ctx.transformer_config, ctx.scheduler, batch["latents"], batch["prompt_embeds"], batch["prompt_mask"], generator,
            dtype=ctx.dtype, image_latents=batch.get("image_latents") if ctx.task == "i2v" else None,
            fixed_sigma=timestep / n,
        )
