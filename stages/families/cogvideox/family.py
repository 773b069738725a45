"""CogVideoX (1.0 and 1.5, I2V and T2V) behind the student interface.

The implementation sits beside it (transformer.py: loading, LoRA, RoPE; objective.py:
the v-prediction objective of diffusers' CogVideoX LoRA scripts; export.py): this class only points
the interface at it, so CogVideoX trains exactly as before (the golden curve is unchanged).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from stages.families.cogvideox import transformer as cogvideox
from stages.families.base import Geometry, Student


# transformer/config.json of THUDM/CogVideoX1.5-5B-I2V (T2V: in_channels 16, no ofs embedding): temporal patch 2
COGVIDEOX_15_5B_I2V_TRANSFORMER: dict[str, Any] = {
    **cogvideox.COGVIDEOX_5B_I2V_TRANSFORMER, "ofs_embed_dim": 512, "patch_bias": False, "patch_size_t": 2,
    "sample_frames": 81, "sample_height": 300, "sample_width": 300, "use_learned_positional_embeddings": False,
}
COGVIDEOX_15_KNOWN: dict[str, dict[str, Any]] = {
    "THUDM/CogVideoX1.5-5B-I2V": COGVIDEOX_15_5B_I2V_TRANSFORMER,
    "THUDM/CogVideoX1.5-5B": {**COGVIDEOX_15_5B_I2V_TRANSFORMER, "in_channels": 16, "ofs_embed_dim": None},
}
# vae/config.json of CogVideoX(-5b, -5b-I2V) 1.0: 8x spatial, 4x temporal, 16 channels
COGVIDEOX_5B_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 256, 512], "latent_channels": 16, "temporal_compression_ratio": 4, "scaling_factor": 0.7,
}
# vae/config.json of CogVideoX 1.5: 4 blocks (8x spatial), 4x temporal, image latents divided by the factor
COGVIDEOX_15_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 256, 512], "latent_channels": 16, "temporal_compression_ratio": 4,
    "scaling_factor": 0.7, "invert_scale_latents": True,
}


def _defaults(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


class CogVideoXStudent(Student):
    family = "cogvideox"
    transformer_class = "CogVideoXTransformer3DModel"
    pipeline_classes = {"i2v": "CogVideoXImageToVideoPipeline", "t2v": "CogVideoXPipeline"}

    # -- what the registry asks
    tiny_presets = (cogvideox.TINY,)
    encoder_presets = (cogvideox.TINY,)
    vae_classes = ("AutoencoderKLCogVideoX",)
    hub_name_prefixes = ("cogvideo",)  # THUDM/CogVideoX-5b, THUDM/CogVideoX1.5-5B-I2V, ...

    def tiny_encoders(self, task: str) -> str:
        return cogvideox.TINY  # one preset for both tasks (the I2V image latents are stored either way)

    def known_configs(self, model: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        from stages.families.cogvideox.encoders import TINY_VAE_CONFIG

        if model == cogvideox.TINY:
            return cogvideox.tiny_transformer_config("i2v"), dict(TINY_VAE_CONFIG)
        if model in COGVIDEOX_15_KNOWN:
            return dict(COGVIDEOX_15_KNOWN[model]), dict(COGVIDEOX_15_VAE)
        if model in cogvideox.KNOWN_TRANSFORMERS:
            return dict(cogvideox.KNOWN_TRANSFORMERS[model]), dict(COGVIDEOX_5B_VAE)
        return None

    def load(self, model: str, task: str, dtype: torch.dtype, device: str | torch.device):
        return cogvideox.load_student(model, task, dtype, device)

    def save_tiny(self, directory: str | Path, task: str) -> Path:
        return cogvideox.save_tiny_student(directory, task)

    def geometry(self, transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> Geometry:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

        t = {**_defaults(CogVideoXTransformer3DModel), **dict(transformer_config)}
        v = {**_defaults(AutoencoderKLCogVideoX), **dict(vae_config)}
        return Geometry(2 ** (len(v["block_out_channels"]) - 1), int(v["temporal_compression_ratio"]),
                        int(t["patch_size"]), t["patch_size_t"])

    def single_size(self, transformer_config: Mapping[str, Any]) -> str | None:
        # CogVideoX 1.0 (no temporal patch) was trained at 49 frames of 480x720 only, and a learned positional
        # embedding fixes the latent grid outright; 1.5 (patch_size_t) trains at several sizes
        t = dict(transformer_config)
        if t.get("use_learned_positional_embeddings"):
            return "its learned positional embeddings fix one latent grid"
        if not t.get("patch_size_t"):
            return "CogVideoX 1.0 is trained at one size (49 frames at 480x720); CogVideoX 1.5 takes several"
        return None

    def token_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        return cogvideox.token_grid(transformer_config, latent_shape)

    def input_grid(self, transformer_config: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        # CogVideoX inputs are [B, T, C, H8, W8]
        return cogvideox.token_grid(transformer_config, hidden_states.shape[1:2] + hidden_states.shape[3:5])

    def rotary(self, transformer_config: Any, latent_shape: Sequence[int], device: torch.device) -> Any:
        frames, height, width = (int(s) for s in latent_shape[-3:])
        return cogvideox.rotary_embedding(transformer_config, frames, height, width, device)

    def text_dim(self, transformer_config: Any) -> int:
        return int(transformer_config.text_embed_dim)

    def check_latent_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> str | None:
        grid = tuple(int(s) for s in latent_shape[-2:])
        size = (transformer_config.sample_height, transformer_config.sample_width)
        if transformer_config.use_learned_positional_embeddings and grid != size:
            return f"latent grid {grid[0]}x{grid[1]} but the student's learned positional embeddings are {size[0]}x{size[1]}"
        return None

    def blocks(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        return transformer.transformer_blocks

    # -- attention, memory plan and stage one (the interface's later sections)
    def plan_latent_shape(self, transformer_config: Any, model: str) -> tuple[int, int, int]:
        c = transformer_config
        # CogVideoX 1.5's sample size is its RoPE limit (300x300), not a video size: plan its 768x1360
        size = (96, 170) if c.patch_size_t else (c.sample_height, c.sample_width)
        return ((c.sample_frames - 1) // c.temporal_compression_ratio + 1, *size)

    def attention_tokens(self, transformer_config: Any, video_tokens: int, text_len: int | None) -> int:
        return video_tokens + (text_len or transformer_config.max_text_seq_length)  # joint text + video attention

    def encodings_layout(self, encoders_cfg: Any, video_cfg: Any):
        from stages.families.cogvideox.encoders import encodings_layout

        return encodings_layout(encoders_cfg, video_cfg)

    def load_encoders(self, encoders_cfg: Any, device: str):
        from stages.families.cogvideox.encoders import load_column_encoders

        return load_column_encoders(encoders_cfg, device)

    def video_tokens(self, block_output: Any) -> torch.Tensor:
        return block_output[0]  # a CogVideoX block returns (video tokens, text tokens)

    def prepare_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> Any:
        from stages.families.cogvideox.objective import prepare_diffusion_inputs

        return prepare_diffusion_inputs(
            ctx.transformer_config, ctx.scheduler, batch["latents"], batch["prompt_embeds"], ctx.scaling_factor, generator,
            task=ctx.task, image_latents=batch.get("image_latents"), image_scale=ctx.image_scale, timesteps=ctx.timesteps,
            image_dropout=ctx.image_dropout, empty_prompt_embeds=ctx.empty_prompt,
            caption_dropout=ctx.caption_dropout, rotary=ctx.rotary, dtype=ctx.dtype,
        )

    def loss_from_output(self, ctx: Any, output: torch.Tensor, inputs: Any):
        from stages.families.cogvideox.objective import diffusion_loss_from_output

        return diffusion_loss_from_output(ctx.scheduler, output, inputs)

    # -- inference (stages/families/cogvideox/sampling.py: CogVideoXImageToVideoPipeline for i2v, CogVideoXPipeline for t2v)
    def inference_scheduler(self, student_model: str, task: str) -> Any:
        from stages.families.cogvideox import sampling

        return sampling.inference_scheduler(student_model)

    def pipeline_around(self, transformer, student_model, encoders_model, task, device, dtype, low_memory=False):
        from stages.families.cogvideox import sampling

        return sampling.pipeline_around(transformer, student_model, encoders_model, task, device, dtype, low_memory)

    def sample(self, pipe, task, first_frame, prompt, num_frames, height, width, steps, guidance, seed, max_text_len,
               dynamic_cfg=False):
        from stages.families.cogvideox import sampling

        return sampling.sample(pipe, task, first_frame, prompt, num_frames, height, width, steps, guidance, seed,
                               max_text_len, dynamic_cfg)

    # -- attention
    def set_attention(self, transformer: torch.nn.Module, backend: str) -> str:
        """sdpa, or xformers through this project's CogVideoX processor (joint text+video attention, RoPE kept)."""
        if backend not in ("sdpa", "xformers"):
            return super().set_attention(transformer, backend)
        return cogvideox.set_attention(transformer, backend)

    # -- validation
    def validation_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], timestep: int, generator: torch.Generator) -> Any:
        from stages.families.cogvideox.objective import prepare_diffusion_inputs

        return prepare_diffusion_inputs(
            ctx.transformer_config, ctx.scheduler, batch["latents"], batch["prompt_embeds"], ctx.scaling_factor, generator,
            task=ctx.task, image_latents=batch.get("image_latents"), image_scale=ctx.image_scale, rotary=ctx.rotary,
            dtype=ctx.dtype, fixed_timesteps=torch.tensor([timestep]),
        )


def tiny_15_transformer_config(task: str = "i2v") -> dict[str, Any]:
    """The tiny CogVideoX with CogVideoX 1.5's switches: temporal patch 2, ofs embedding (I2V), no patch bias,
    RoPE without learned positions (so any frame count and size train)."""
    config = {**cogvideox.tiny_transformer_config(task), "patch_size_t": 2, "patch_bias": False,
              "use_learned_positional_embeddings": False}
    if task == "i2v":
        config["ofs_embed_dim"] = config["time_embed_dim"]
    return config


def save_tiny_cogvideox15(directory: str | Path, task: str = "i2v") -> Path:
    """A tiny CogVideoX 1.5 as one diffusers model folder: the tiny encoders (vae/, text_encoder/, tokenizer/)
    with the 1.5 VAE's `invert_scale_latents` set, the 1.5-style transformer/ and the scheduler/. Used as both
    encoders.model (stage one records the flag) and student.model (the grid follows from transformer/ + vae/)."""
    import json
    import shutil

    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    from stages.families.cogvideox.encoders import tiny_encoders_dir

    directory = Path(directory)
    shutil.copytree(tiny_encoders_dir(), directory, dirs_exist_ok=True)
    vae_config = directory / "vae" / "config.json"
    vae_config.chmod(0o644)
    vae_config.write_text(json.dumps({**json.loads(vae_config.read_text()), "invert_scale_latents": True}, indent=2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cogvideox.TINY_SEED)
        transformer = CogVideoXTransformer3DModel(**tiny_15_transformer_config(task))
    transformer.save_pretrained(directory / "transformer")
    _, scheduler = cogvideox.build_tiny_student(task)
    CogVideoXDDIMScheduler.from_config(scheduler.config).save_pretrained(directory / "scheduler")
    return directory
