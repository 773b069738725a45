"""The `encodings` column for an LTX-Video student: LTX-VAE posteriors (of the normalised latent) and T5 prompt embeddings.

The same column name and arrays as CogVideoX's and Wan's, so stage two streams it alike, with what differs in the
attrs: `vae_family` "ltx", `latents_normalised` true (a posterior sample is x0 already: the VAE's latents_mean/std are
checkpoint buffers, applied at extraction and kept as the column arrays `latents_mean` / `latents_std`),
`training_arrays` ["prompt_mask"] (the transformer's cross-attention takes the mask: the trainer streams it).
The prompt is encoded without its mask, padded to max_text_len (LTXPipeline's max_sequence_length, 128 for the real
model). One LTX model does both tasks, so every column also holds `image_latents` [C, 1, H/32, W/32]: frame 0 alone
through the VAE, normalised (LTXImageToVideoPipeline's condition; one extra 1-frame encode per clip): a store extracted
once trains a t2v and an i2v student.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from stages.config.extract import ExtractConfig
from stages.extract.producer import ColumnSpec
from stages.store.store import ArraySpec
from stages.extract.columns.registry import check_compute_dtype, compute_dtype
from stages.families.cogvideox.encoders import caption_tokens
from stages.families.ltx.encoders import (
    TINY_LTX,
    TINY_LTX_VERSION,
    LtxVaeGeometry,
    encode_image_condition_ltx,
    encode_prompt_ltx,
    encode_video_ltx,
    latent_statistics,
    load_ltx_encoders,
    read_ltx_configs,
)
from stages.families.ltx.family import KNOWN_VAES

NAME = "encodings"


def is_ltx_encoders(model: str) -> bool:
    """True for "tiny-ltx", a known LTX hub id, or a folder / hub id whose vae/config.json names AutoencoderKLLTXVideo."""
    if model == TINY_LTX or model in KNOWN_VAES:
        return True
    if model == "tiny" or model.startswith("tiny-"):
        return False
    path = Path(model) / "vae" / "config.json"
    if path.is_file():
        return json.loads(path.read_text()).get("_class_name") == "AutoencoderKLLTXVideo"
    return model.split("/")[-1].lower().startswith("ltx")  # the published hub ids say it: Lightricks/LTX-Video...


def ltx_encodings_spec(cfg: ExtractConfig) -> ColumnSpec:
    enc, video = cfg.encoders, cfg.video
    vae_config, text_config = read_ltx_configs(enc.model)
    geo = LtxVaeGeometry.from_config(vae_config)
    if (video.num_frames - 1) % geo.temporal:
        raise ValueError(f"video.num_frames={video.num_frames} must be {geo.temporal}k+1 for the LTX VAE")
    if video.height % geo.spatial or video.width % geo.spatial:
        raise ValueError(f"video size {video.height}x{video.width} must be a multiple of {geo.spatial} for the LTX VAE")
    from stages.extract.student_geometry import resolve_student_geometry

    student = resolve_student_geometry(cfg)
    if (student.vae_spatial, student.vae_temporal) != (geo.spatial, geo.temporal):
        raise ValueError(f"student.vae_spatial/vae_temporal = {student.vae_spatial}/{student.vae_temporal} but the "
                         f"LTX VAE of {enc.model} compresses {geo.spatial}x spatially and {geo.temporal}x in time")
    t, h, w = geo.latent_frames(video.num_frames), video.height // geo.spatial, video.width // geo.spatial
    c, length, text_dim = geo.latent_channels, enc.max_text_len, int(text_config["d_model"])
    schema = {
        "latents": ArraySpec((2 * c, t, h, w), "float16"),
        "prompt_embeds": ArraySpec((length, text_dim), "float16"),
        "prompt_mask": ArraySpec((length,), "uint8"),
        "image_latents": ArraySpec((c, 1, h, w), "float16"),  # the I2V condition (module docstring)
    }
    keep = ("model", "max_text_len", "dtype", "seed")  # image noise, slicing and tiling do not apply
    encoders = {k: v for k, v in dataclasses.asdict(enc).items() if k in keep}
    encoders["compute_dtype"] = compute_dtype(enc.dtype, enc.device, cfg.ray.gpus_per_worker)
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
    return ColumnSpec(NAME, {"encoders": encoders, "video": dataclasses.asdict(video), "model": model}, schema, attrs)


class LtxEncodingsProducer:
    """Decoded clip -> the LTX `encodings` arrays; loads the LTX VAE and T5 once per worker."""

    def __init__(self, cfg: ExtractConfig, device: str):
        self.cfg = cfg
        self.spec = ltx_encodings_spec(cfg)
        self.enc = load_ltx_encoders(cfg.encoders.model, cfg.encoders.dtype, device)
        check_compute_dtype("encodings", self.spec.config["encoders"]["compute_dtype"], self.enc.dtype, self.enc.device)
        if self.enc.text_dim != self.spec.schema["prompt_embeds"].shape[1]:
            raise ValueError(f"loaded T5 is {self.enc.text_dim} wide, the config of {cfg.encoders.model} says "
                             f"{self.spec.schema['prompt_embeds'].shape[1]}")
        self.device = self.enc.device

    def column_arrays(self) -> dict[str, np.ndarray]:
        embeds, mask = encode_prompt_ltx(self.enc, "", self.cfg.encoders.max_text_len)
        return {"empty_prompt_embeds": embeds, "empty_prompt_mask": mask, **latent_statistics(self.enc)}

    def produce(self, clip: Any, entry: Any) -> tuple[dict[str, np.ndarray], dict]:
        e, video = self.cfg.encoders, self.cfg.video
        frames = np.asarray(clip.frames)
        expected = (video.num_frames, video.height, video.width, 3)
        if frames.shape != expected:
            raise ValueError(f"clip {entry.key}: frames {frames.shape}, expected {expected}")
        embeds, mask = encode_prompt_ltx(self.enc, entry.caption or "", e.max_text_len)
        arrays = {"latents": encode_video_ltx(self.enc, frames), "prompt_embeds": embeds, "prompt_mask": mask}
        arrays["image_latents"] = encode_image_condition_ltx(self.enc, frames)
        for key, spec in self.spec.schema.items():
            if arrays[key].shape != spec.shape or arrays[key].dtype != np.dtype(spec.dtype):
                raise ValueError(f"clip {entry.key}: {key} is {arrays[key].dtype}{arrays[key].shape}, schema says {spec}")
        record: dict[str, Any] = {}
        tokens = caption_tokens(self.enc, entry.caption or "")
        if tokens > e.max_text_len:
            record["caption_truncated"] = tokens
        return arrays, record
