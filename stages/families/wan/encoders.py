"""The Wan 2.1 VAE (AutoencoderKLWan) and UMT5 text encoder: loading, and the encodings stage one stores.

Stage two never loads these models. What differs from CogVideoX (stages/families/cogvideox/encoders.py):
- the VAE normalises latents per channel with `latents_mean` / `latents_std` from its config
  (x0 = (z - mean) / std, as WanPipeline inverts at decode) instead of one scaling factor; the store
  keeps the unnormalised posterior and the two vectors as column attrs, the student applies them;
- the prompt is encoded WITH the attention mask and its padding positions zeroed, as
  WanPipeline._get_t5_prompt_embeds does (CogVideoX encodes padded text without a mask).

Models come from a diffusers folder / hub id (`vae/`, `text_encoder/`, `tokenizer/`) or the "tiny-wan"
preset: the real architectures with random weights at toy width, saved and loaded in diffusers format.

The encodings column (its one producer is stages/extract/columns/encodings.py; this module gives its layout and
per-clip encode): the same column name and arrays as CogVideoX's, so stage two streams it alike, with what differs
in the attrs: `vae_family` "wan", the VAE's per-channel `latents_mean` / `latents_std` (the student normalises
x0 = (z - mean) / std), scaling_factor 1. Text-to-video stores no image arrays. An image-to-video model (one with
image_encoder/, or "tiny-wan-i2v") adds the Wan 2.1 I2V condition as WanImageToVideoPipeline builds it from the
first frame: `image_latents` (the VAE mode of [frame 0, zeros], unnormalised) and `image_embeds` (CLIP's
penultimate hidden state); the CLIP config is in the column config, so the column key changes with the task. The
prompt is encoded with its mask and zeroed past its tokens, as WanPipeline does (max_text_len 512 for the real
models). The Wan 2.2 VAE (TI2V-5B, or the "tiny-wan22" preset) gives the same arrays with 48 channels at 16x
spatial; TI2V's image condition is the first latent frame of `latents` itself, so its stores hold no image arrays.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from stages.config.loader import config_hash
from stages.core.devices import resolve_device, resolve_dtype
from stages.core.grid import latent_shape
from stages.families.base import EncodingsLayout
from stages.families.cogvideox.encoders import (
    TINY_T5_CONFIG, _pixels, _tiny_pieces, _to_fp16, cache_root, caption_tokens, publish_cached, tiny_tokenizer,
)
from stages.store import ArraySpec

log = logging.getLogger(__name__)

TINY_WAN = "tiny-wan"
TINY_WAN_I2V = "tiny-wan-i2v"  # tiny-wan plus a tiny CLIP vision tower (Wan 2.1 image-to-video encoders)
TINY_WAN22 = "tiny-wan22"  # the Wan 2.2 VAE (TI2V-5B's) at toy width + the tiny UMT5
TINY_WAN_MODELS = (TINY_WAN, TINY_WAN_I2V, TINY_WAN22)
TINY_WAN_VERSION = 1  # bump when the preset changes (cache folder name and column hash)

# The Wan 2.1 VAE's structure (4 stages, temporal downsampling in the last two: 8x spatial, 4x temporal,
# 16 channels) at toy width; latents_mean/std keep diffusers' defaults, which are Wan 2.1's values.
TINY_WAN_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


# The Wan 2.1 VAE (vae/config.json of every Wan 2.1 model): 8x spatial, 4x temporal, 16 channels
WAN21_VAE: dict[str, Any] = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                             "temperal_downsample": [False, True, True]}
# The Wan 2.2 VAE (vae/config.json of TI2V-5B, diffusers' convert_wan_to_diffusers.py vae22 config): residual blocks,
# a 2x2 pixel patch in front (12 = 3 x 2 x 2 input channels), so 16x spatial (8 from the stages x 2 from the patch),
# 4x temporal, 48 channels
WAN22_VAE: dict[str, Any] = {
    "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "temperal_downsample": [False, True, True], "is_residual": True, "in_channels": 12, "out_channels": 12,
    "patch_size": 2, "scale_factor_spatial": 16, "scale_factor_temporal": 4,
    "latents_mean": [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891, 0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667],
    "latents_std": [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744],
}


def tiny_wan22_vae_config() -> dict[str, Any]:
    """The Wan 2.2 VAE (residual blocks, 2x2 pixel patch: 16x spatial, 4x temporal, 48 channels with TI2V-5B's
    latents_mean/std) at toy width: base 8, one residual block per stage."""
    return {**WAN22_VAE, "base_dim": 8, "decoder_base_dim": 8, "num_res_blocks": 1}


def tiny_vae_config(model: str) -> dict[str, Any]:
    return tiny_wan22_vae_config() if model == TINY_WAN22 else dict(TINY_WAN_VAE_CONFIG)


# A UMT5 encoder at toy width: the tiny T5's sizes (UMT5 differs in per-layer relative attention, not in these fields).
TINY_UMT5_CONFIG: dict[str, Any] = dict(TINY_T5_CONFIG)


# A CLIP ViT (Wan 2.1 I2V uses open-clip ViT-H/14 at 224 px: 257 tokens x 1280) at toy width: 32 px,
# patch 8 -> 16 patches + CLS = 17 tokens x 16. The processor is the PIL one (CLIPImageProcessor, no torchvision).
TINY_CLIP_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
    "image_size": 32, "patch_size": 8, "projection_dim": 16,
}
TINY_CLIP_PROCESSOR: dict[str, Any] = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}


@dataclass
class WanEncoders:
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    # Wan 2.1 I2V only (the model folder's image_encoder/ and image_processor/), else None
    image_encoder: CLIPVisionModel | None = None
    image_processor: CLIPImageProcessor | None = None

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.config.d_model)

    # -- the family's Encoders interface (stages/families/base.py), run by the one encodings producer
    def check_layout(self, layout: EncodingsLayout, model: str) -> None:
        if self.text_dim != layout.schema["prompt_embeds"].shape[1]:
            raise ValueError(f"loaded UMT5 is {self.text_dim} wide, the config of {model} says "
                             f"{layout.schema['prompt_embeds'].shape[1]}")

    def compile(self) -> None:
        """Not compiled: encoders.compile applies to the CogVideoX VAE only (the Wan VAE runs eager)."""

    def column_arrays(self, encoders_cfg: Any) -> dict[str, np.ndarray]:
        embeds, mask = encode_prompt_wan(self, "", encoders_cfg.max_text_len)
        return {"empty_prompt_embeds": embeds, "empty_prompt_mask": mask}

    def encode_clip(self, frames: np.ndarray, key: str, caption: str, encoders_cfg: Any) -> tuple[dict[str, np.ndarray], dict]:
        """(latents, prompt_embeds, prompt_mask[, image_latents, image_embeds (I2V)]; {["caption_truncated"]})."""
        embeds, mask = encode_prompt_wan(self, caption, encoders_cfg.max_text_len)
        arrays = {"latents": encode_video_wan(self, frames), "prompt_embeds": embeds, "prompt_mask": mask}
        if self.image_encoder is not None:
            arrays["image_latents"], arrays["image_embeds"] = encode_image_condition_wan(self, frames)
        tokens = caption_tokens(self, caption)
        return arrays, ({"caption_truncated": tokens} if tokens > encoders_cfg.max_text_len else {})


@dataclass(frozen=True)
class WanVaeGeometry:
    latent_channels: int
    spatial: int
    temporal: int
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> "WanVaeGeometry":
        """From vae/config.json; the compression as WanPipeline reads it (scale_factor_*), else from the stages."""
        full = {**_vae_defaults(), **dict(config)}
        down = list(full["temperal_downsample"])
        temporal = full.get("scale_factor_temporal") or 2 ** sum(bool(d) for d in down)
        spatial = full.get("scale_factor_spatial") or 2 ** len(down)
        return WanVaeGeometry(int(full["z_dim"]), int(spatial), int(temporal),
                              tuple(float(v) for v in full["latents_mean"]), tuple(float(v) for v in full["latents_std"]))


def _vae_defaults() -> dict[str, Any]:
    import inspect

    sig = inspect.signature(AutoencoderKLWan.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def tiny_umt5_config() -> dict[str, Any]:
    return {**TINY_UMT5_CONFIG, "vocab_size": len(_tiny_pieces())}


def read_image_encoder_config(model: str) -> dict[str, Any] | None:
    """The CLIP vision config of a Wan I2V model (image_encoder/config.json), None for a text-to-video one."""
    if model == TINY_WAN_I2V:
        return dict(TINY_CLIP_VISION_CONFIG)
    if model in (TINY_WAN, TINY_WAN22):
        return None
    try:
        config, _ = CLIPVisionConfig.get_config_dict(model, subfolder="image_encoder")
    except (OSError, ValueError):
        return None
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}


def image_tokens(config: Mapping[str, Any]) -> int:
    """Tokens of CLIP's penultimate hidden state (what WanImageToVideoPipeline.encode_image returns): patches + CLS."""
    full = CLIPVisionConfig(**dict(config))
    return (full.image_size // full.patch_size) ** 2 + 1


def read_wan_configs(model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vae config, text-encoder config) of `model` from config files only (or the tiny preset)."""
    if model in TINY_WAN_MODELS:
        return tiny_vae_config(model), tiny_umt5_config()
    vae = AutoencoderKLWan.load_config(model, subfolder="vae")
    text, _ = UMT5Config.get_config_dict(model, subfolder="text_encoder")
    return ({k: v for k, v in vae.items() if not k.startswith("_")},
            {k: v for k, v in text.items() if not k.startswith("_") and k != "transformers_version"})


def save_tiny_wan_encoders(directory: str | Path, seed: int = 0, image: bool = False,
                           vae_config: Mapping[str, Any] | None = None) -> Path:
    """The tiny preset in diffusers format; image=True adds image_encoder/ and image_processor/ (I2V);
    vae_config: another tiny VAE (the Wan 2.2 one), default the Wan 2.1 one."""
    directory = Path(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**dict(vae_config or TINY_WAN_VAE_CONFIG))
        text = UMT5EncoderModel(UMT5Config(**tiny_umt5_config()))
        clip = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_VISION_CONFIG)) if image else None
    vae.save_pretrained(directory / "vae")
    text.save_pretrained(directory / "text_encoder")
    tiny_tokenizer().save_pretrained(directory / "tokenizer")
    if clip is not None:
        clip.save_pretrained(directory / "image_encoder")
        CLIPImageProcessor(**TINY_CLIP_PROCESSOR).save_pretrained(directory / "image_processor")
    return directory


def tiny_wan_encoders_dir(seed: int = 0, image: bool = False, vae_config: Mapping[str, Any] | None = None) -> Path:
    """The tiny-wan preset's folder in the cache, built on first use (atomic rename, as tiny_encoders_dir)."""
    preset = {"vae": dict(vae_config or TINY_WAN_VAE_CONFIG), "umt5": tiny_umt5_config(), "seed": seed, "v": TINY_WAN_VERSION}
    if image:
        preset["clip"] = {"vision": TINY_CLIP_VISION_CONFIG, "processor": TINY_CLIP_PROCESSOR}
    return publish_cached(cache_root() / f"tiny-wan-encoders-{config_hash(preset)}",
                          lambda tmp: save_tiny_wan_encoders(tmp, seed, image, vae_config))


def load_wan_encoders(model: str, dtype: str | torch.dtype = "bfloat16", device: str | torch.device = "auto") -> WanEncoders:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tiny = model in TINY_WAN_MODELS
    source = str(tiny_wan_encoders_dir(image=model == TINY_WAN_I2V, vae_config=tiny_vae_config(model))) if tiny else model
    # The Wan VAE runs in fp32 in diffusers' examples (its causal-conv caches are precision sensitive)
    vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
    text = UMT5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=dt)
    tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
    vae = vae.to(dev).eval().requires_grad_(False)
    text = text.to(dev).eval().requires_grad_(False)
    image_encoder = image_processor = None
    if read_image_encoder_config(model) is not None:  # Wan 2.1 I2V: CLIP in fp32 as WanImageToVideoPipeline's examples
        image_encoder = CLIPVisionModel.from_pretrained(source, subfolder="image_encoder", dtype=torch.float32)
        image_encoder = image_encoder.to(dev).eval().requires_grad_(False)
        image_processor = CLIPImageProcessor.from_pretrained(source, subfolder="image_processor")
    return WanEncoders(vae, text, tokenizer, dev, dt, image_encoder, image_processor)


@torch.inference_mode()
def encode_video_wan(enc: WanEncoders, frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> float16 [2*C, T, H/8, W/8]: the posterior [mean | logvar], unnormalised."""
    x = _pixels(frames, enc)  # [1, 3, F, H, W] in [-1, 1]
    params = enc.vae.encode(x.to(enc.vae.dtype)).latent_dist.parameters
    return _to_fp16(params[0], "video latents")


@torch.inference_mode()
def encode_image_condition_wan(enc: WanEncoders, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [F, H, W, 3] -> the Wan 2.1 I2V condition, as WanImageToVideoPipeline builds it from frame 0:
    (float16 [C, T, H/8, W/8] the VAE posterior mode of [frame 0, F - 1 zero frames], unnormalised (the student
    normalises and prepends the 4-channel first-frame mask), float16 [N, D] CLIP's penultimate hidden state
    of frame 0 through the CLIP image processor (PIL))."""
    from PIL import Image

    if enc.image_encoder is None or enc.image_processor is None:
        raise ValueError("the Wan encoders have no image_encoder/image_processor: not an image-to-video model")
    x = _pixels(frames, enc)  # [1, 3, F, H, W] in [-1, 1]
    video = torch.cat([x[:, :, :1], torch.zeros_like(x[:, :, 1:])], dim=2)
    condition = enc.vae.encode(video.to(enc.vae.dtype)).latent_dist.mode()  # retrieve_latents(..., "argmax")
    pixels = enc.image_processor(images=Image.fromarray(np.asarray(frames[0])), return_tensors="pt").pixel_values
    out = enc.image_encoder(pixel_values=pixels.to(enc.device, enc.image_encoder.dtype), output_hidden_states=True)
    return _to_fp16(condition[0], "image condition latents"), _to_fp16(out.hidden_states[-2][0], "image embeddings")


def _prompt_clean(text: str) -> str:
    """WanPipeline's prompt_clean without ftfy (not a dependency here): html unescape + whitespace."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


@torch.inference_mode()
def encode_prompt_wan(enc: WanEncoders, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """text -> (float16 [max_len, D], uint8 [max_len] mask): as WanPipeline._get_t5_prompt_embeds.

    Encoded with the attention mask; positions after the prompt's tokens are set to zero.
    """
    tokens = enc.tokenizer(
        [_prompt_clean(text)], padding="max_length", max_length=max_len, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    mask = tokens.attention_mask
    hidden = enc.text_encoder(tokens.input_ids.to(enc.device), mask.to(enc.device)).last_hidden_state[0]
    length = int(mask.gt(0).sum())
    hidden = torch.cat([hidden[:length], hidden.new_zeros(max_len - length, hidden.shape[1])])
    return _to_fp16(hidden, "prompt embeddings"), mask[0].numpy().astype(np.uint8)


# -- the encodings column (its one producer: stages/extract/columns/encodings.py) --------------


def encodings_layout(encoders_cfg: Any, video: Any) -> EncodingsLayout:
    """The column's layout from the Wan VAE, UMT5 (and, for I2V, CLIP) configs alone."""
    enc = encoders_cfg
    vae_config, text_config = read_wan_configs(enc.model)
    geo = WanVaeGeometry.from_config(vae_config)
    t, h, w = latent_shape(video.num_frames, video.height, video.width, geo.temporal, geo.spatial)
    c, length, text_dim = geo.latent_channels, enc.max_text_len, int(text_config["d_model"])
    schema = {
        "latents": ArraySpec((2 * c, t, h, w), "float16"),
        "prompt_embeds": ArraySpec((length, text_dim), "float16"),
        "prompt_mask": ArraySpec((length,), "uint8"),
    }
    image_config = read_image_encoder_config(enc.model)
    if image_config is not None:  # Wan 2.1 I2V: the first-frame condition and its CLIP embeddings
        schema["image_latents"] = ArraySpec((c, t, h, w), "float16")
        schema["image_embeds"] = ArraySpec((image_tokens(image_config), int(image_config["hidden_size"])), "float16")
    keep = ("model", "max_text_len", "dtype", "seed")  # image noise, slicing and tiling do not apply
    encoders = {k: v for k, v in dataclasses.asdict(enc).items() if k in keep}
    model: dict[str, Any] = {"family": "wan", "vae": vae_config, "text_encoder": text_config}
    if image_config is not None:
        model["image_encoder"] = image_config
    if enc.model in TINY_WAN_MODELS:
        model["tiny_version"] = TINY_WAN_VERSION
    attrs = {
        "vae_family": "wan",
        "scaling_factor": 1.0,  # the Wan VAE normalises per channel instead (latents_mean / latents_std)
        "latents_mean": list(geo.latents_mean),
        "latents_std": list(geo.latents_std),
        "latent_channels": c,
        "temporal_compression": geo.temporal,
        "spatial_compression": geo.spatial,
        "invert_scale_latents": False,
        "latents": "Wan VAE posterior parameters [mean | logvar] on channels, unnormalised: sample z, then "
        "x0 = (z - latents_mean) / latents_std per channel",
        "task": "i2v" if image_config is not None else "t2v",
        "prompt": {"max_text_len": length, "text_dim": text_dim, "encoded_with_attention_mask": True,
                   "padding": "zeros after the prompt's tokens (WanPipeline)"},
    }
    return EncodingsLayout(encoders, model, schema, attrs, geo.spatial, geo.temporal)


def load_column_encoders(encoders_cfg: Any, device: str) -> WanEncoders:
    return load_wan_encoders(encoders_cfg.model, encoders_cfg.dtype, device)
