"""The `encodings` column for a Wan 2.1 text-to-video student: Wan-VAE posteriors and UMT5 prompt embeddings.

The same column name and arrays as CogVideoX's (stages/extract/columns/encodings.py), so stage two
streams it alike, with what differs in the attrs: `vae_family` "wan", the VAE's per-channel
`latents_mean` / `latents_std` (the student normalises x0 = (z - mean) / std), scaling_factor 1.
Text-to-video stores no image arrays. An image-to-video model (one with image_encoder/, or "tiny-wan-i2v")
adds the Wan 2.1 I2V condition as WanImageToVideoPipeline builds it from the first frame: `image_latents`
(the VAE mode of [frame 0, zeros], unnormalised) and `image_embeds` (CLIP's penultimate hidden state);
the CLIP config is in the column config, so the column key changes with the task. The prompt is encoded with its mask
and zeroed past its tokens, as WanPipeline does (max_text_len 512 for the real models).
The Wan 2.2 VAE (TI2V-5B, or the "tiny-wan22" preset) gives the same arrays with 48 channels at 16x spatial; TI2V's
image condition is the first latent frame of `latents` itself, so its stores hold no image arrays.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from diffusers import AutoencoderKLWan

from stages.config.extract import ExtractConfig
from stages.extract.producer import ColumnSpec
from stages.store import ArraySpec
from stages.core.devices import check_compute_dtype, compute_dtype
from stages.families.cogvideox.encoders import caption_tokens
from stages.families.wan.encoders import (
    TINY_WAN_MODELS,
    TINY_WAN_VERSION,
    WanVaeGeometry,
    encode_image_condition_wan,
    encode_prompt_wan,
    encode_video_wan,
    image_tokens,
    load_wan_encoders,
    read_image_encoder_config,
    read_wan_configs,
)

NAME = "encodings"


def is_wan_encoders(model: str) -> bool:
    """True for "tiny-wan" or a folder / hub id whose vae/config.json names AutoencoderKLWan."""
    if model in TINY_WAN_MODELS:
        return True
    if model == "tiny":
        return False
    path = Path(model) / "vae" / "config.json"
    if path.is_file():
        return json.loads(path.read_text()).get("_class_name") == "AutoencoderKLWan"
    name = model.split("/")[-1].lower()
    if name.startswith(("wan", "cogvideo")):  # the published hub ids say it: Wan-AI/Wan2.1-..., THUDM/CogVideoX...
        return name.startswith("wan")
    try:  # another hub id: its vae/config.json (cached or fetched; config only)
        return AutoencoderKLWan.load_config(model, subfolder="vae").get("_class_name") == "AutoencoderKLWan"
    except (OSError, ValueError):
        return False


def wan_encodings_spec(cfg: ExtractConfig) -> ColumnSpec:
    enc, video = cfg.encoders, cfg.video
    vae_config, text_config = read_wan_configs(enc.model)
    geo = WanVaeGeometry.from_config(vae_config)
    if (video.num_frames - 1) % geo.temporal:
        raise ValueError(f"video.num_frames={video.num_frames} must be {geo.temporal}k+1 for the Wan VAE")
    if video.height % geo.spatial or video.width % geo.spatial:
        raise ValueError(f"video size {video.height}x{video.width} must be a multiple of {geo.spatial} for the Wan VAE")
    from stages.extract.student_geometry import resolve_student_geometry

    student = resolve_student_geometry(cfg)
    if (student.vae_spatial, student.vae_temporal) != (geo.spatial, geo.temporal):
        raise ValueError(f"student.vae_spatial/vae_temporal = {student.vae_spatial}/{student.vae_temporal} but the "
                         f"Wan VAE of {enc.model} compresses {geo.spatial}x spatially and {geo.temporal}x in time")
    t, h, w = geo.latent_frames(video.num_frames), video.height // geo.spatial, video.width // geo.spatial
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
    encoders["compute_dtype"] = compute_dtype(enc.dtype, enc.device, cfg.ray.gpus_per_worker)
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
    return ColumnSpec(NAME, {"encoders": encoders, "video": dataclasses.asdict(video), "model": model}, schema, attrs)


class WanEncodingsProducer:
    """Decoded clip -> the Wan `encodings` arrays; loads the Wan VAE and UMT5 once per worker."""

    def __init__(self, cfg: ExtractConfig, device: str):
        self.cfg = cfg
        self.spec = wan_encodings_spec(cfg)
        self.enc = load_wan_encoders(cfg.encoders.model, cfg.encoders.dtype, device)
        check_compute_dtype("encodings", self.spec.config["encoders"]["compute_dtype"], self.enc.dtype, self.enc.device)
        if self.enc.text_dim != self.spec.schema["prompt_embeds"].shape[1]:
            raise ValueError(f"loaded UMT5 is {self.enc.text_dim} wide, the config of {cfg.encoders.model} says "
                             f"{self.spec.schema['prompt_embeds'].shape[1]}")
        self.device = self.enc.device

    def column_arrays(self) -> dict[str, np.ndarray]:
        embeds, mask = encode_prompt_wan(self.enc, "", self.cfg.encoders.max_text_len)
        return {"empty_prompt_embeds": embeds, "empty_prompt_mask": mask}

    def produce(self, clip: Any, entry: Any) -> tuple[dict[str, np.ndarray], dict]:
        e, video = self.cfg.encoders, self.cfg.video
        frames = np.asarray(clip.frames)
        expected = (video.num_frames, video.height, video.width, 3)
        if frames.shape != expected:
            raise ValueError(f"clip {entry.key}: frames {frames.shape}, expected {expected}")
        embeds, mask = encode_prompt_wan(self.enc, entry.caption or "", e.max_text_len)
        arrays = {"latents": encode_video_wan(self.enc, frames), "prompt_embeds": embeds, "prompt_mask": mask}
        if "image_latents" in self.spec.schema:
            arrays["image_latents"], arrays["image_embeds"] = encode_image_condition_wan(self.enc, frames)
        for key, spec in self.spec.schema.items():
            if arrays[key].shape != spec.shape or arrays[key].dtype != np.dtype(spec.dtype):
                raise ValueError(f"clip {entry.key}: {key} is {arrays[key].dtype}{arrays[key].shape}, schema says {spec}")
        record: dict[str, Any] = {}
        tokens = caption_tokens(self.enc, entry.caption or "")
        if tokens > e.max_text_len:
            record["caption_truncated"] = tokens
        return arrays, record
