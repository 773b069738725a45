"""The LTX-Video VAE (AutoencoderKLLTXVideo) and T5 text encoder: loading, and the encodings stage one stores.

Stage two never loads these models. What differs from CogVideoX and Wan:
- 32x spatial, 8x temporal compression (a 4x4 pixel patch in front of three 2x2x2 stages), 128 channels;
- the VAE normalises latents per channel with `latents_mean` / `latents_std`, which are *buffers* of the
  checkpoint (not config fields, as Wan's are): x0 = (z - mean) / std (LTXPipeline._normalize_latents, scaling 1).
  The store therefore keeps the posterior of the normalised latent, [(mu - mean) / std | logvar - 2 log std]:
  a sample of it is (z - mean) / std, and the student needs no statistics (they are also kept as column arrays);
- the prompt is encoded WITHOUT the attention mask (padded to max_sequence_length, as LTXPipeline._get_t5_prompt_embeds),
  and the mask is given to the transformer's cross-attention (encoder_attention_mask), so it is streamed too;
- image-to-video conditions on the VAE encoding of the first frame alone (LTXImageToVideoPipeline.prepare_latents:
  vae.encode(image[:, :, None]) -> one latent frame, normalised), stored as `image_latents` [C, 1, H/32, W/32].

Models come from a diffusers folder / hub id (`vae/`, `text_encoder/`, `tokenizer/`) or the "tiny-ltx"
preset: the real architectures with random weights at toy width, saved and loaded in diffusers format.

The encodings column (its one producer is stages/extract/columns/encodings.py; this module gives its layout and
per-clip encode): the same column name and arrays as CogVideoX's and Wan's, so stage two streams it alike, with what
differs in the attrs: `vae_family` "ltx", `latents_normalised` true (a posterior sample is x0 already; the VAE's
latents_mean / latents_std are kept as the column arrays of those names), `training_arrays` ["prompt_mask"] (the
transformer's cross-attention takes the mask: the trainer streams it). The prompt is encoded without its mask, padded
to max_text_len (LTXPipeline's max_sequence_length, 128 for the real model). One LTX model does both tasks, so every
column also holds `image_latents` [C, 1, H/32, W/32]: frame 0 alone through the VAE, normalised (one extra 1-frame
encode per clip): a store extracted once trains a t2v and an i2v student.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from diffusers import AutoencoderKLLTXVideo
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from stages.config.loader import config_hash
from stages.core.devices import resolve_device, resolve_dtype
from stages.core.grid import latent_shape
from stages.families.base import EncodingsLayout
from stages.families.cogvideox.encoders import (
    _pixels, _to_fp16, cache_root, caption_tokens, publish_cached, tiny_t5_config, tiny_tokenizer,
)
from stages.store import ArraySpec

TINY_LTX = "tiny-ltx"

LTX_VIDEO = "Lightricks/LTX-Video"
# vae/config.json of LTX-Video 0.9.0 (the encoder side, which sets the geometry: patch 4 x 2^3 = 32 spatial,
# 1 x 2^3 = 8 temporal, 128 channels); later 0.9.x decoders differ (timestep conditioning), the encoder does not
LTX_VIDEO_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 128, "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": [4, 3, 3, 3, 4], "spatio_temporal_scaling": [True, True, True, False], "patch_size": 4,
    "patch_size_t": 1, "encoder_causal": True, "scaling_factor": 1.0,
}
# text_encoder/config.json: google/t5-v1_1-xxl's encoder (4096 wide)
T5_XXL: dict[str, Any] = {
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "feed_forward_proj": "gated-gelu",
    "vocab_size": 32128, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
}
KNOWN_VAES: dict[str, dict[str, Any]] = {LTX_VIDEO: LTX_VIDEO_VAE}
KNOWN_TEXT_ENCODERS: dict[str, dict[str, Any]] = {LTX_VIDEO: T5_XXL}
TINY_LTX_VERSION = 1  # bump when the preset changes (cache folder name and column hash)
TINY_SEED = 0

# The LTX-Video 0.9 VAE's structure (patch 4, three spatio-temporal 2x stages and one spatial-only: 32x / 8x)
# at toy width: 8..32 channels, one layer per block, 16 latent channels (the real one has 128).
TINY_LTX_VAE_CONFIG: dict[str, Any] = {
    "latent_channels": 16,
    "block_out_channels": [8, 16, 32, 32],
    "decoder_block_out_channels": [8, 16, 32, 32],
    "layers_per_block": [1, 1, 1, 1, 1],
    "decoder_layers_per_block": [1, 1, 1, 1, 1],
    "spatio_temporal_scaling": [True, True, True, False],
    "decoder_spatio_temporal_scaling": [True, True, True, False],
    "patch_size": 4,
    "patch_size_t": 1,
}


@dataclass
class LtxEncoders:
    vae: AutoencoderKLLTXVideo
    text_encoder: T5EncoderModel
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.config.d_model)

    # -- the family's Encoders interface (stages/families/base.py), run by the one encodings producer
    def check_layout(self, layout: EncodingsLayout, model: str) -> None:
        if self.text_dim != layout.schema["prompt_embeds"].shape[1]:
            raise ValueError(f"loaded T5 is {self.text_dim} wide, the config of {model} says "
                             f"{layout.schema['prompt_embeds'].shape[1]}")

    def compile(self) -> None:
        """Not compiled: encoders.compile applies to the CogVideoX VAE only (the LTX VAE runs eager)."""

    def column_arrays(self, encoders_cfg: Any) -> dict[str, np.ndarray]:
        """The empty prompt (embeddings and mask: caption dropout replaces both) and the VAE's statistics."""
        embeds, mask = encode_prompt_ltx(self, "", encoders_cfg.max_text_len)
        return {"empty_prompt_embeds": embeds, "empty_prompt_mask": mask, **latent_statistics(self)}

    def encode_clip(self, frames: np.ndarray, key: str, caption: str, encoders_cfg: Any) -> tuple[dict[str, np.ndarray], dict]:
        """(latents, prompt_embeds, prompt_mask, image_latents; {["caption_truncated"]})."""
        embeds, mask = encode_prompt_ltx(self, caption, encoders_cfg.max_text_len)
        arrays = {"latents": encode_video_ltx(self, frames), "prompt_embeds": embeds, "prompt_mask": mask,
                  "image_latents": encode_image_condition_ltx(self, frames)}
        tokens = caption_tokens(self, caption)
        return arrays, ({"caption_truncated": tokens} if tokens > encoders_cfg.max_text_len else {})


@dataclass(frozen=True)
class LtxVaeGeometry:
    latent_channels: int
    spatial: int
    temporal: int

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> "LtxVaeGeometry":
        """From vae/config.json, as AutoencoderKLLTXVideo computes its compression ratios (the explicit
        spatial/temporal_compression_ratio fields when set, else patch x 2^(scaling stages))."""
        full = {**vae_defaults(), **{k: v for k, v in dict(config).items() if v is not None}}
        stages = sum(bool(s) for s in full["spatio_temporal_scaling"])
        spatial = full.get("spatial_compression_ratio") or int(full["patch_size"]) * 2**stages
        temporal = full.get("temporal_compression_ratio") or int(full["patch_size_t"]) * 2**stages
        return LtxVaeGeometry(int(full["latent_channels"]), int(spatial), int(temporal))


def vae_defaults() -> dict[str, Any]:
    """AutoencoderKLLTXVideo's constructor defaults (the LTX-Video 0.9.0 VAE)."""
    sig = inspect.signature(AutoencoderKLLTXVideo.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def read_ltx_configs(model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vae config, text-encoder config) of `model` from config files only (or the tiny preset / a known hub id)."""
    if model == TINY_LTX:
        return dict(TINY_LTX_VAE_CONFIG), tiny_t5_config()
    if model in KNOWN_VAES:
        return dict(KNOWN_VAES[model]), dict(KNOWN_TEXT_ENCODERS[model])
    vae = AutoencoderKLLTXVideo.load_config(model, subfolder="vae")
    text, _ = T5Config.get_config_dict(model, subfolder="text_encoder")
    return ({k: v for k, v in vae.items() if not k.startswith("_")},
            {k: v for k, v in text.items() if not k.startswith("_") and k != "transformers_version"})


def save_tiny_ltx_encoders(directory: str | Path, seed: int = TINY_SEED) -> Path:
    """The tiny preset in diffusers format. latents_mean/std are set away from 0/1 (seeded) so the
    normalisation is exercised (the real checkpoint's buffers are not 0/1 either)."""
    directory = Path(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLLTXVideo(**TINY_LTX_VAE_CONFIG)
        c = TINY_LTX_VAE_CONFIG["latent_channels"]
        vae.latents_mean.copy_(0.1 * torch.randn(c))
        vae.latents_std.copy_(0.5 + torch.rand(c))
        text = T5EncoderModel(T5Config(**tiny_t5_config()))
    vae.save_pretrained(directory / "vae")
    text.save_pretrained(directory / "text_encoder")
    tiny_tokenizer().save_pretrained(directory / "tokenizer")
    return directory


def tiny_ltx_encoders_dir(seed: int = TINY_SEED) -> Path:
    """The tiny-ltx preset's folder in the cache, built on first use (publish_cached: safe for concurrent workers)."""
    preset = {"vae": TINY_LTX_VAE_CONFIG, "t5": tiny_t5_config(), "seed": seed, "v": TINY_LTX_VERSION}
    return publish_cached(cache_root() / f"tiny-ltx-encoders-{config_hash(preset)}", lambda tmp: save_tiny_ltx_encoders(tmp, seed))


def encoders_source(model: str) -> str:
    return str(tiny_ltx_encoders_dir()) if model == TINY_LTX else model


def load_ltx_encoders(model: str, dtype: str | torch.dtype = "bfloat16", device: str | torch.device = "auto") -> LtxEncoders:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source = encoders_source(model)
    vae = AutoencoderKLLTXVideo.from_pretrained(source, subfolder="vae", torch_dtype=dt)
    text = T5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=dt)
    tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
    return LtxEncoders(vae.to(dev).eval().requires_grad_(False), text.to(dev).eval().requires_grad_(False), tokenizer, dev, dt)


def _statistics(enc: LtxEncoders, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latents_mean / latents_std buffers as [1, C, 1, 1, 1] fp32 on `like`'s device."""
    shape = (1, -1, 1, 1, 1)
    return (enc.vae.latents_mean.float().to(like.device).view(shape), enc.vae.latents_std.float().to(like.device).view(shape))


def normalised_posterior(params: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """VAE posterior [B, 2C, ...] = [mu | logvar] of z -> that of (z - mean) / std: [(mu - mean) / std | logvar - 2 log std].
    DiagonalGaussianDistribution(out).sample() = (mu + e^(logvar/2) eps - mean) / std, the pipeline's normalised latent."""
    mu, logvar = params.float().chunk(2, dim=1)
    return torch.cat([(mu - mean) / std, logvar - 2.0 * torch.log(std)], dim=1)


@torch.inference_mode()
def encode_video_ltx(enc: LtxEncoders, frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> float16 [2C, T, H/32, W/32]: the posterior of the normalised latent (module docstring)."""
    x = _pixels(frames, enc)  # [1, 3, F, H, W] in [-1, 1]
    params = enc.vae.encode(x.to(enc.vae.dtype)).latent_dist.parameters
    mean, std = _statistics(enc, params)
    return _to_fp16(normalised_posterior(params, mean, std)[0], "video latents")


@torch.inference_mode()
def encode_image_condition_ltx(enc: LtxEncoders, frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> float16 [C, 1, H/32, W/32]: frame 0 alone through the VAE, normalised, as
    LTXImageToVideoPipeline.prepare_latents builds its condition (posterior mode here: the stored condition
    is one fixed latent per clip; the pipeline draws a posterior sample, whose logvar is small)."""
    x = _pixels(frames[:1], enc)  # [1, 3, 1, H, W]
    dist = enc.vae.encode(x.to(enc.vae.dtype)).latent_dist
    mode = dist.mode().float()
    mean, std = _statistics(enc, mode)
    return _to_fp16(((mode - mean) / std)[0], "image condition latents")


def latent_statistics(enc: LtxEncoders) -> dict[str, np.ndarray]:
    """The VAE's per-channel latents_mean / latents_std (float32 [C]): kept beside the column for decoding."""
    return {"latents_mean": enc.vae.latents_mean.float().cpu().numpy(), "latents_std": enc.vae.latents_std.float().cpu().numpy()}


@torch.inference_mode()
def encode_prompt_ltx(enc: LtxEncoders, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """text -> (float16 [max_len, D], uint8 [max_len] mask), as LTXPipeline._get_t5_prompt_embeds: padded to
    max_len, encoded WITHOUT the mask (padding positions keep their T5 outputs); the mask goes to the transformer."""
    tokens = enc.tokenizer([text], padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True,
                           return_tensors="pt")
    hidden = enc.text_encoder(tokens.input_ids.to(enc.device))[0][0]
    return _to_fp16(hidden, "prompt embeddings"), tokens.attention_mask[0].numpy().astype(np.uint8)


# -- the encodings column (its one producer: stages/extract/columns/encodings.py) --------------


def encodings_layout(encoders_cfg: Any, video: Any) -> EncodingsLayout:
    """The column's layout from the LTX VAE and T5 configs alone (the module docstring says what it holds)."""
    enc = encoders_cfg
    vae_config, text_config = read_ltx_configs(enc.model)
    geo = LtxVaeGeometry.from_config(vae_config)
    t, h, w = latent_shape(video.num_frames, video.height, video.width, geo.temporal, geo.spatial)
    c, length, text_dim = geo.latent_channels, enc.max_text_len, int(text_config["d_model"])
    schema = {
        "latents": ArraySpec((2 * c, t, h, w), "float16"),
        "prompt_embeds": ArraySpec((length, text_dim), "float16"),
        "prompt_mask": ArraySpec((length,), "uint8"),
        "image_latents": ArraySpec((c, 1, h, w), "float16"),  # the I2V condition (module docstring)
    }
    keep = ("model", "max_text_len", "dtype", "seed")  # image noise, slicing and tiling do not apply
    encoders = {k: v for k, v in dataclasses.asdict(enc).items() if k in keep}
    model: dict[str, Any] = {"family": "ltx", "vae": vae_config, "text_encoder": text_config}
    if enc.model == TINY_LTX:
        model["tiny_version"] = TINY_LTX_VERSION
    attrs = {
        "vae_family": "ltx",
        "scaling_factor": 1.0,  # the LTX VAE normalises per channel instead (applied at extraction)
        "latents_normalised": True,
        "latent_channels": c,
        "temporal_compression": geo.temporal,
        "spatial_compression": geo.spatial,
        "invert_scale_latents": False,
        "latents": "LTX VAE posterior of the normalised latent [(mu - latents_mean) / latents_std | logvar - 2 log "
        "latents_std] on channels: a sample is x0 (the column arrays latents_mean / latents_std undo it)",
        "training_arrays": ["prompt_mask"],
        "task": "t2v+i2v",
        "prompt": {"max_text_len": length, "text_dim": text_dim, "encoded_with_attention_mask": False,
                   "padding": "T5 outputs of the padding tokens, masked in the transformer's cross-attention (LTXPipeline)"},
    }
    return EncodingsLayout(encoders, model, schema, attrs, geo.spatial, geo.temporal)


def load_column_encoders(encoders_cfg: Any, device: str) -> LtxEncoders:
    return load_ltx_encoders(encoders_cfg.model, encoders_cfg.dtype, device)
