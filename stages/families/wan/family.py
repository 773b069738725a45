"""Wan 2.1 text-to-video (diffusers WanTransformer3DModel) behind the student interface.

Objective: rectified flow as finetrainers' Wan training and diffusers' flow-matching scripts do it
(weighting "none"; DiffSynth-Studio's Wan SFT instead draws t from its 1000 training timesteps, shift 5, and
weights the loss by a bell-shaped table over t -- not implemented here):
    x0 = (z - latents_mean) / latents_std    z ~ the stored VAE posterior; mean/std per channel (VAE config)
    u ~ U(0, 1);  index = floor(u * N);  sigma = scheduler.sigmas[index], t = scheduler.timesteps[index]
        with scheduler = FlowMatchEulerDiscreteScheduler(N = num_train_timesteps, shift = the model
        folder's flow_shift) -- the shifted sigmas sigma' = s u / (1 + (s - 1) u) WanPipeline samples with;
    x_t = (1 - sigma) x0 + sigma eps;   the transformer predicts v = eps - x0 from (x_t, t = 1000 sigma);
    L_diff = mean over the batch of mean((v_pred - (eps - x0))^2)   (loss weight 1, "none" weighting).
Layouts: Wan takes and returns [B, C, T, H8, W8] (channels first; CogVideoX is [B, T, C, ...]), its
blocks return the video tokens alone [B, T*h*w, D], ordered (frame, row, column), and it computes its
RoPE inside the forward. The exported LoRA is read by the stock `WanPipeline.load_lora_weights`.

Image-to-video (Wan 2.1 I2V, in_channels 36 = 16 noisy + 4 mask + 16 condition), as WanImageToVideoPipeline:
    condition = [mask | (c - latents_mean) / latents_std]   c: the stored VAE mode of [frame 0, zero frames]
        mask [B, 4, T, H8, W8]: 1 on latent frame 0 (its 4 channels = the 4 pixel frames it holds), else 0;
    hidden_states = [x_t | condition] on channels; encoder_hidden_states_image = the stored CLIP embeddings.
The loss is on the 16 predicted channels as for T2V; the LoRA is read by `WanImageToVideoPipeline.load_lora_weights`.

Wan 2.2 TI2V-5B (student.task=ti2v; 48 latent channels in and out, no mask or condition channels), as the stock pipelines
run it with `expand_timesteps` (WanImageToVideoPipeline: latents = (1 - m) * condition + m * latents, m = 0 on
latent frame 0; timestep = (m[0, 0, :, ::2, ::2] * t).flatten() per token):
    x_t[:, :, 0] = x0[:, :, 0] from the posterior mean (the pipeline's condition is the VAE's argmax of the image;
        the causal VAE's first latent frame sees pixel frame 0 only, so it is the stored video latent's frame 0);
    timestep [B, T*h*w]: 0 on the tokens of latent frame 0, 1000 sigma elsewhere (ordered frame, row, column);
    L_diff = the mean of (v_pred - (eps - x0))^2 over latent frames 1.. only (frame 0 is given, not predicted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import compute_density_for_timestep_sampling
from diffusers.utils.torch_utils import randn_tensor

from stages.families.base import Geometry, Student, xformers_usable
# the VAE configs live with the encoders (stage one); named here too, as before
from stages.families.wan.encoders import TINY_WAN_MODELS, TINY_WAN_VAE_CONFIG, WAN21_VAE, WAN22_VAE  # noqa: F401

log = logging.getLogger(__name__)

TINY_WAN = "tiny-wan"
TINY_SEED = 0

# transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers and -14B (memory plans; no download)
WAN21_T2V_1_3B_TRANSFORMER: dict[str, Any] = {
    "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 8960,
    "freq_dim": 256, "image_dim": None, "in_channels": 16, "num_attention_heads": 12, "num_layers": 30,
    "out_channels": 16, "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
    "text_dim": 4096,
}
WAN21_T2V_14B_TRANSFORMER: dict[str, Any] = {**WAN21_T2V_1_3B_TRANSFORMER, "num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824}
# The scheduler folder of the Wan 2.1 Diffusers checkpoints: UniPC on flow sigmas, shift 3.0 (480P)
WAN21_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "prediction_type": "flow_prediction",
                                   "use_flow_sigmas": True, "flow_shift": 3.0}
# transformer/config.json of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (and -720P): 36 input channels, CLIP ViT-H/14
# image tokens (1280 wide) through added K/V projections in every cross attention
WAN21_I2V_14B_TRANSFORMER: dict[str, Any] = {**WAN21_T2V_14B_TRANSFORMER, "in_channels": 36, "image_dim": 1280,
                                             "added_kv_proj_dim": 5120}
# Wan 2.2 TI2V-5B (Wan-AI/Wan2.2-TI2V-5B-Diffusers): one 5B transformer (24 heads x 128, FFN 14336, 30 blocks)
# on 48 latent channels; text-to-video, and image-to-video by keeping the first latent frame clean (below).
WAN22_TI2V_5B_TRANSFORMER: dict[str, Any] = {**WAN21_T2V_1_3B_TRANSFORMER, "num_attention_heads": 24, "num_layers": 30,
                                             "ffn_dim": 14336, "in_channels": 48, "out_channels": 48}
# TI2V-5B's scheduler folder: UniPC on flow sigmas, shift 5.0; its pipeline config sets expand_timesteps (per-token t)
WAN22_SCHEDULER: dict[str, Any] = {**WAN21_SCHEDULER, "flow_shift": 5.0}
WAN22_TI2V_5B = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
KNOWN_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": WAN21_T2V_1_3B_TRANSFORMER,
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": WAN21_T2V_14B_TRANSFORMER,
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": WAN21_I2V_14B_TRANSFORMER,
    "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers": WAN21_I2V_14B_TRANSFORMER,
    WAN22_TI2V_5B: WAN22_TI2V_5B_TRANSFORMER,
}
# The VAE config of a known hub id (Wan 2.1 for the others)
KNOWN_VAES: dict[str, dict[str, Any]] = {WAN22_TI2V_5B: WAN22_VAE}
# The sample size a memory plan assumes, as latent (T, H, W): TI2V-5B's published 121 frames of 704x1280 (24 fps)
KNOWN_LATENT_SHAPES: dict[str, tuple[int, int, int]] = {WAN22_TI2V_5B: (31, 44, 80)}


def tiny_transformer_config() -> dict[str, Any]:
    """A 3-block Wan 2.1 T2V (2 heads x 12, FFN 64, text width 32 = the tiny UMT5's), patch (1, 2, 2)."""
    return {
        "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16,
        "out_channels": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 64, "num_layers": 3,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 64,
    }


@dataclass
class FlowInputs:
    """One training forward of a flow-matching student."""

    model_kwargs: dict[str, Any]  # transformer(**model_kwargs)[0]: the v prediction [B, C, T, H8, W8]
    clean: torch.Tensor  # x0 [B, C, T, H8, W8] fp32, normalised
    noise: torch.Tensor  # eps, same shape
    sigmas: torch.Tensor  # [B]
    timesteps: torch.Tensor  # [B] float, 1000 * sigma
    first_loss_frame: int = 0  # 1 for Wan 2.2 TI2V: latent frame 0 is the clean condition, outside the loss

    @property
    def target(self) -> torch.Tensor:
        return self.noise - self.clean


def training_scheduler(scheduler_config: Mapping[str, Any]) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching noise schedule a Wan folder's scheduler config implies (its shift, its N)."""
    shift = scheduler_config.get("flow_shift") or scheduler_config.get("shift") or 1.0
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)), shift=float(shift))


def tiny_i2v_transformer_config() -> dict[str, Any]:
    """The tiny Wan 2.1 I2V: 36 input channels, image tokens 16 wide (the tiny CLIP's) through added K/V."""
    from stages.families.wan.encoders import TINY_CLIP_VISION_CONFIG

    config = tiny_transformer_config()
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    return {**config, "in_channels": 36, "image_dim": TINY_CLIP_VISION_CONFIG["hidden_size"], "added_kv_proj_dim": inner}


def tiny_ti2v_transformer_config() -> dict[str, Any]:
    """The tiny Wan 2.2 TI2V: the tiny blocks on the Wan 2.2 VAE's 48 channels in and out (no condition channels)."""
    return {**tiny_transformer_config(), "in_channels": WAN22_VAE["z_dim"], "out_channels": WAN22_VAE["z_dim"]}


def build_tiny_transformer(task: str = "t2v") -> WanTransformer3DModel:
    configs = {"i2v": tiny_i2v_transformer_config, "ti2v": tiny_ti2v_transformer_config}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return WanTransformer3DModel(**configs.get(task, tiny_transformer_config)())


def image_condition(image_latents: torch.Tensor, latents_mean: torch.Tensor, latents_std: torch.Tensor) -> torch.Tensor:
    """Stored condition mode [B, C, T, H8, W8] (unnormalised) -> [B, 4 + C, T, H8, W8]: first-frame mask | normalised,
    as WanImageToVideoPipeline.prepare_latents (its mask: 1 on the first latent frame's 4 channels, 0 after)."""
    shape = (1, -1, 1, 1, 1)
    c = (image_latents.float() - latents_mean.to(image_latents.device).view(shape)) / latents_std.to(image_latents.device).view(shape)
    b, _, t, h, w = c.shape
    mask = c.new_zeros(b, 4, t, h, w)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, c], dim=1)


def prepare_flow_inputs(
    transformer_config: Any,
    scheduler: FlowMatchEulerDiscreteScheduler,
    latent_params: torch.Tensor,
    prompt_embeds: torch.Tensor,
    latents_mean: torch.Tensor,
    latents_std: torch.Tensor,
    generator: torch.Generator | None,
    *,
    empty_prompt_embeds: torch.Tensor | None = None,
    caption_dropout: float = 0.0,
    weighting: str = "uniform",
    dtype: torch.dtype = torch.float32,
    image_latents: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    first_frame_clean: bool = False,
    fixed_timesteps: torch.Tensor | None = None,
) -> FlowInputs:
    """Sample x0, sigma, eps and build the transformer's inputs (see the module docstring).

    latent_params: [B, 2C, T, H8, W8] stored posterior (mean | logvar), unnormalised. latents_mean/std: [C].
    Random draws, in order, from `generator`: posterior eps, u, noise, caption-dropout uniforms.
    image_latents [B, C, T, H8, W8] / image_embeds [B, N, D_img]: the stored I2V condition (I2V transformers only).
    first_frame_clean: Wan 2.2 TI2V -- latent frame 0 clean (the posterior mean), per-token timesteps [B, T*h*w]
    with 0 on its tokens, and the loss over frames 1.. (the module docstring).
    fixed_timesteps: [B] (or [1]) timesteps in 0..N-1 used instead of drawing u (validation at fixed t): sigma = t / N,
    the timestep the model sees for that sigma; the u draw is then skipped, the other draws are unchanged.
    """
    from stages.families.noise import caption_dropout as _caption_dropout, rand_device as _rand_device

    device = latent_params.device
    batch = latent_params.shape[0]
    z = DiagonalGaussianDistribution(latent_params.float()).sample(generator)  # [B, C, T, H8, W8]
    shape = (1, -1, 1, 1, 1)
    clean = (z - latents_mean.to(z).view(shape)) / latents_std.to(z).view(shape)
    extra = 0 if image_latents is None else 4 + image_latents.shape[1]  # mask + condition channels
    if clean.shape[1] != transformer_config.out_channels or transformer_config.in_channels != clean.shape[1] + extra:
        raise ValueError(f"latents have {clean.shape[1]} channels{f' + {extra} of image condition' if extra else ''}; "
                         f"the Wan transformer takes {transformer_config.in_channels} and predicts {transformer_config.out_channels}")
    if fixed_timesteps is not None:
        timesteps = fixed_timesteps.to(device=device, dtype=torch.float32).expand(batch)
        sigmas = timesteps / float(scheduler.config.num_train_timesteps)
    else:
        u = compute_density_for_timestep_sampling(weighting, batch, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                  device=_rand_device(generator), generator=generator)
        n = len(scheduler.timesteps)  # N training sigmas, 1 down to 1/N before the shift (no terminal 0 until set_timesteps)
        index = (u * n).long().clamp(0, n - 1)
        sigmas = scheduler.sigmas[index].to(device=device, dtype=torch.float32)
        timesteps = scheduler.timesteps[index].to(device=device, dtype=torch.float32)
    noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy = (1.0 - s) * clean + s * noise
    model_timestep = timesteps
    if first_frame_clean:
        if image_latents is not None or clean.shape[2] < 2:
            raise ValueError(f"Wan 2.2 TI2V conditions on latent frame 0 of the video latents (got {clean.shape[2]} latent "
                             "frames, and no separate image_latents): it needs at least 2 latent frames")
        channels = clean.shape[1]
        first = (latent_params[:, :channels, :1].float() - latents_mean.to(z).view(shape)) / latents_std.to(z).view(shape)
        clean = torch.cat([first, clean[:, :, 1:]], dim=2)
        noisy = torch.cat([first, noisy[:, :, 1:]], dim=2)
        p_t, p_h, p_w = (int(p) for p in transformer_config.patch_size)
        # the pipeline's mask per token: [B, T/p_t, H8/p_h, W8/p_w] ones, frame 0 zero, times t, flattened (frame, row, col)
        grid = noisy[:, 0, ::p_t, ::p_h, ::p_w]
        mask = torch.ones_like(grid)
        mask[:, 0] = 0.0
        model_timestep = (mask * timesteps.view(-1, 1, 1, 1)).flatten(1)
    text = _caption_dropout(prompt_embeds, empty_prompt_embeds, caption_dropout, generator)
    if image_latents is not None:
        if image_embeds is None:
            raise ValueError("a Wan I2V step needs image_embeds (the encodings column's CLIP embeddings)")
        noisy = torch.cat([noisy, image_condition(image_latents, latents_mean, latents_std)], dim=1)
    kwargs = {"hidden_states": noisy.to(dtype), "timestep": model_timestep, "encoder_hidden_states": text.to(dtype), "return_dict": False}
    if image_embeds is not None:
        kwargs["encoder_hidden_states_image"] = image_embeds.to(dtype)
    return FlowInputs(kwargs, clean, noise, sigmas, timesteps, 1 if first_frame_clean else 0)


def flow_loss_from_output(model_output: torch.Tensor, inputs: FlowInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L_diff, aux): aux "per_sample" [B] (detached), "timesteps" [B], "weights" [B] (ones).
    Frames before inputs.first_loss_frame (Wan 2.2 TI2V's clean frame 0) are left out of the mean."""
    f0 = inputs.first_loss_frame
    per_sample = (model_output.float()[:, :, f0:] - inputs.target[:, :, f0:]).square().flatten(1).mean(1)
    weights = torch.ones_like(per_sample)
    return (weights * per_sample).mean(), {"per_sample": per_sample.detach(), "timesteps": inputs.timesteps, "weights": weights}


class WanStudent(Student):
    family = "wan"
    transformer_class = "WanTransformer3DModel"
    # ti2v: Wan 2.2 TI2V-5B trains image-to-video (clean latent frame 0), so it is sampled as the stock image-to-video
    # pipeline with expand_timesteps, from the first frame (the LoRA format is every Wan pipeline's)
    pipeline_classes = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline", "ti2v": "WanImageToVideoPipeline"}

    # -- what the registry asks
    tiny_presets = (TINY_WAN,)
    vae_classes = ("AutoencoderKLWan",)
    hub_name_prefixes = ("wan",)  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan-AI/Wan2.2-TI2V-5B-Diffusers, ...

    encoder_presets = TINY_WAN_MODELS

    def tiny_encoders(self, task: str) -> str:
        from stages.families.wan.encoders import TINY_WAN22, TINY_WAN_I2V

        return {"i2v": TINY_WAN_I2V, "ti2v": TINY_WAN22}.get(task, TINY_WAN)  # + CLIP (Wan 2.1 I2V); the Wan 2.2 VAE

    def known_configs(self, model: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if model == TINY_WAN:
            return tiny_transformer_config(), dict(TINY_WAN_VAE_CONFIG)
        if model in KNOWN_TRANSFORMERS:  # published configs known without a download
            return dict(KNOWN_TRANSFORMERS[model]), dict(KNOWN_VAES.get(model, WAN21_VAE))
        return None

    def load(self, model: str, task: str, dtype: torch.dtype, device: str | torch.device):
        if task not in self.pipeline_classes:
            raise ValueError(f"{model}: student.task={task!r}; a Wan student is t2v (Wan 2.1 T2V), i2v (Wan 2.1 I2V) "
                             "or ti2v (Wan 2.2 TI2V-5B)")
        if model == TINY_WAN:
            transformer = build_tiny_transformer(task)
            scheduler_config = dict(WAN22_SCHEDULER if task == "ti2v" else WAN21_SCHEDULER)
        else:
            transformer = WanTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
            scheduler_config = dict(UniPCMultistepScheduler.load_config(model, subfolder="scheduler"))
        is_i2v = transformer.config.in_channels != transformer.config.out_channels
        if is_i2v != (task == "i2v"):
            kind = "an image-to-video" if is_i2v else "a text-to-video"
            raise ValueError(f"{model} is {kind} Wan (in_channels {transformer.config.in_channels}) but student.task={task!r}")
        if is_i2v and (transformer.config.image_dim is None or transformer.config.in_channels != 2 * transformer.config.out_channels + 4):
            raise ValueError(f"{model}: in_channels {transformer.config.in_channels}, image_dim {transformer.config.image_dim}: "
                             "not a Wan 2.1 I2V transformer (36 channels, CLIP image tokens); Wan 2.2 TI2V is not supported")
        if task == "ti2v" and transformer.config.in_channels != WAN22_VAE["z_dim"]:
            raise ValueError(f"{model}: in_channels {transformer.config.in_channels}; student.task=ti2v is Wan 2.2 TI2V "
                             f"({WAN22_VAE['z_dim']} latent channels of the Wan 2.2 VAE)")
        if transformer.dtype != dtype:
            transformer.to(dtype=dtype)
        transformer.to(device=device)
        return transformer, training_scheduler(scheduler_config)

    def save_tiny(self, directory: str | Path, task: str = "t2v") -> Path:
        directory = Path(directory)
        build_tiny_transformer(task).save_pretrained(directory / "transformer")
        UniPCMultistepScheduler(**(WAN22_SCHEDULER if task == "ti2v" else WAN21_SCHEDULER)).save_pretrained(directory / "scheduler")
        return directory

    def geometry(self, transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> Geometry:
        from stages.families.wan.encoders import WanVaeGeometry

        vae = WanVaeGeometry.from_config(vae_config)
        p_t, p_h, p_w = (int(p) for p in dict(transformer_config).get("patch_size", (1, 2, 2)))
        if p_h != p_w:
            raise ValueError(f"patch_size {[p_t, p_h, p_w]}: non-square spatial patches are not supported")
        return Geometry(vae.spatial, vae.temporal, p_h, p_t)

    def _patch(self, config: Any) -> tuple[int, int, int]:
        p_t, p_h, p_w = (int(p) for p in config.patch_size)
        return p_t, p_h, p_w

    def token_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        frames, height, width = (int(s) for s in latent_shape[-3:])
        p_t, p_h, p_w = self._patch(transformer_config)
        if frames % p_t or height % p_h or width % p_w:
            raise ValueError(f"latent {frames}x{height}x{width} is not divisible by the patch size {[p_t, p_h, p_w]}")
        return frames // p_t, height // p_h, width // p_w

    def input_grid(self, transformer_config: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        return self.token_grid(transformer_config, hidden_states.shape[2:5])  # [B, C, T, H8, W8]

    def text_dim(self, transformer_config: Any) -> int:
        return int(transformer_config.text_dim)

    context_parallel = True

    def enable_context_parallel(self, transformer: torch.nn.Module, mesh: Any, video_tokens: int) -> None:
        """diffusers' own plan for the Wan transformer (its _cp_plan: the video tokens split at blocks.0's input,
        gathered at proj_out), Ulysses self-attention; the cross-attention over the whole text stays local."""
        from stages.families import context_parallel

        context_parallel.enable(transformer, mesh, self.family, video_tokens, int(transformer.config.num_attention_heads))

    def full_sequence(self, transformer: torch.nn.Module, video_tokens: torch.Tensor) -> torch.Tensor:
        from stages.families import context_parallel

        return context_parallel.gather_sequence(transformer, video_tokens)

    def blocks(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        return transformer.blocks

    # -- data, memory plan and stage one (the interface's later sections)
    def condition_arrays(self, task: str) -> tuple[str, ...]:
        return ("image_latents", "image_embeds") if task == "i2v" else ()  # Wan 2.1 I2V: + CLIP image tokens

    def starts_from_first_frame(self, task: str) -> bool:
        return task in ("i2v", "ti2v")  # TI2V keeps its first latent frame clean: no condition arrays, still image-to-video

    def plan_latent_shape(self, transformer_config: Any, model: str) -> tuple[int, int, int]:
        # 81 frames of 480x832 through the Wan 2.1 VAE; Wan 2.2 TI2V-5B its 121 frames of 704x1280 (16x VAE)
        return KNOWN_LATENT_SHAPES.get(model, (21, 60, 104))

    # attention_tokens: the default (video only): Wan's text enters by cross-attention, not the token sequence

    def encodings_layout(self, encoders_cfg: Any, video_cfg: Any):
        from stages.families.wan.encoders import encodings_layout

        return encodings_layout(encoders_cfg, video_cfg)

    def load_encoders(self, encoders_cfg: Any, device: str):
        from stages.families.wan.encoders import load_column_encoders

        return load_column_encoders(encoders_cfg, device)

    def video_tokens(self, block_output: Any) -> torch.Tensor:
        return block_output  # a Wan block returns the video tokens [B, T*h*w, D] alone

    def prepare_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> FlowInputs:
        if ctx.latents_mean is None or ctx.latents_std is None:
            raise ValueError("a Wan student needs the encodings column's latents_mean/latents_std attrs (a Wan-VAE store)")
        return prepare_flow_inputs(
            ctx.transformer_config, ctx.scheduler, batch["latents"], batch["prompt_embeds"], ctx.latents_mean, ctx.latents_std,
            generator, empty_prompt_embeds=ctx.empty_prompt, caption_dropout=ctx.caption_dropout, dtype=ctx.dtype,
            image_latents=batch.get("image_latents") if ctx.task == "i2v" else None,
            image_embeds=batch.get("image_embeds") if ctx.task == "i2v" else None,
            first_frame_clean=ctx.task == "ti2v",
        )

    def loss_from_output(self, ctx: Any, output: torch.Tensor, inputs: FlowInputs):
        return flow_loss_from_output(output, inputs)

    # -- inference (stages/families/wan/sampling.py: WanPipeline for t2v, WanImageToVideoPipeline for i2v and ti2v)
    def inference_scheduler(self, student_model: str, task: str) -> UniPCMultistepScheduler:
        from stages.families.wan import sampling

        tiny = {"t2v": WAN21_SCHEDULER, "i2v": WAN21_SCHEDULER, "ti2v": WAN22_SCHEDULER}
        return sampling.inference_scheduler(student_model, task, TINY_WAN, tiny)

    def pipeline_around(self, transformer, student_model, encoders_model, task, device, dtype, low_memory=False):
        from stages.families.wan import sampling

        return sampling.pipeline_around(transformer, self.inference_scheduler(student_model, task), encoders_model, task,
                                        device, dtype)

    def sample(self, pipe, task, first_frame, prompt, num_frames, height, width, steps, guidance, seed, max_text_len,
               dynamic_cfg=False):
        from stages.families.wan import sampling

        return sampling.sample(pipe, task, first_frame, prompt, num_frames, height, width, steps, guidance, seed,
                               max_text_len, dynamic_cfg)

    # -- attention
    def set_attention(self, transformer: torch.nn.Module, backend: str) -> str:
        """sdpa, or xformers through diffusers' attention dispatcher (WanAttnProcessor calls dispatch_attention_fn, so
        the kernel swaps without a processor of ours; CogVideoX's joint-attention processor does not fit Wan's blocks)."""
        if backend != "xformers":
            return super().set_attention(transformer, backend)
        if not xformers_usable(transformer, log):
            return "sdpa"
        transformer.set_attention_backend("xformers")
        return "xformers"

    # -- validation
    def validation_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], timestep: int, generator: torch.Generator) -> FlowInputs:
        """The flow objective at sigma = t / N (the model sees t), no caption dropout."""
        if ctx.latents_mean is None or ctx.latents_std is None:
            raise ValueError("a Wan student needs the encodings column's latents_mean/latents_std attrs (a Wan-VAE store)")
        return prepare_flow_inputs(
            ctx.transformer_config, ctx.scheduler, batch["latents"], batch["prompt_embeds"], ctx.latents_mean, ctx.latents_std,
            generator, dtype=ctx.dtype, image_latents=batch.get("image_latents") if ctx.task == "i2v" else None,
            image_embeds=batch.get("image_embeds") if ctx.task == "i2v" else None, first_frame_clean=ctx.task == "ti2v",
            fixed_timesteps=torch.tensor([float(timestep)]),
        )


def build_wan_pipeline(student_model: str, encoders_model: str, lora_dir: str | Path | None, device: str = "cpu",
                       dtype: torch.dtype = torch.float32, task: str = "t2v"):
    """The stock diffusers pipeline of a Wan `task` (WanStudent.build_pipeline): WanPipeline (t2v),
    WanImageToVideoPipeline (i2v; ti2v with expand_timesteps)."""
    return WanStudent().build_pipeline(student_model, encoders_model, lora_dir, task, device, dtype)
