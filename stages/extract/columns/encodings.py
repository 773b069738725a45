"""The `encodings` column: VAE latents, first-frame image latents and T5 prompt embeddings per clip.

Everything stage two needs from the VAE and the text encoder, computed once in stage one, so
training never loads either model. The spec (name, producer config, schema, attrs) comes from
the models' config files alone; the producer loads the models once per worker.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from stages.config.extract import ExtractConfig
from stages.extract.producer import ColumnSpec
from stages.store import ArraySpec
from stages.core.devices import check_compute_dtype, compute_dtype
from stages.core.compiling import compile_modules, vae_compile_targets
from stages.families.cogvideox.encoders import (
    TINY,
    TINY_VERSION,
    Encoders,
    clip_seed,
    encode_image,
    caption_tokens,
    encode_prompt,
    encode_video,
    load_encoders,
    read_model_configs,
)

log = logging.getLogger(__name__)

NAME = "encodings"


def encodings_spec(cfg: ExtractConfig) -> ColumnSpec:
    """The column's spec from configs only (no weights): shapes derive from the VAE and T5 configs.

    Raises ValueError when the clip geometry does not fit the VAE, or when the student grid of
    `cfg.student` disagrees with the VAE (teacher and student grids would then not line up).
    """
    enc, video = cfg.encoders, cfg.video
    models = read_model_configs(enc.model)
    geo = models.geometry
    _check_geometry(cfg, geo)
    t, h, w = geo.latent_frames(video.num_frames), video.height // geo.spatial, video.width // geo.spatial
    c, length = geo.latent_channels, enc.max_text_len
    schema = {
        "latents": ArraySpec((2 * c, t, h, w), "float16"),
        "image_latents": ArraySpec((c, 1, h, w), "float16"),
        "prompt_embeds": ArraySpec((length, models.text_dim), "float16"),
        "prompt_mask": ArraySpec((length,), "uint8"),
    }
    # the device never changes content, nor compile (speed only; CPU ignores it)
    encoders = {k: v for k, v in dataclasses.asdict(enc).items() if k not in ("device", "compile")}
    encoders["compute_dtype"] = compute_dtype(enc.dtype, enc.device, cfg.ray.gpus_per_worker)  # ...but CPU runs fp32
    model = {"vae": models.vae, "text_encoder": models.text_encoder}
    if enc.model == TINY:
        model["tiny_version"] = TINY_VERSION
    config = {"encoders": encoders, "video": dataclasses.asdict(video), "model": model}
    return ColumnSpec(NAME, config, schema, _attrs(cfg, geo, models.text_dim))


def _check_geometry(cfg: ExtractConfig, geo) -> None:
    from stages.extract.student_geometry import resolve_student_geometry

    video, student = cfg.video, resolve_student_geometry(cfg)
    if (video.num_frames - 1) % geo.temporal:
        raise ValueError(f"video.num_frames={video.num_frames} must be {geo.temporal}k+1 for this VAE")
    if video.height % geo.spatial or video.width % geo.spatial:
        raise ValueError(f"video size {video.height}x{video.width} must be a multiple of {geo.spatial} for this VAE")
    if (student.vae_spatial, student.vae_temporal) != (geo.spatial, geo.temporal):
        raise ValueError(
            f"student.vae_spatial/vae_temporal = {student.vae_spatial}/{student.vae_temporal} but the VAE of "
            f"{cfg.encoders.model} compresses {geo.spatial}x spatially and {geo.temporal}x in time"
        )


def _attrs(cfg: ExtractConfig, geo, text_dim: int) -> dict[str, Any]:
    enc = cfg.encoders
    return {
        "scaling_factor": geo.scaling_factor,
        "latent_channels": geo.latent_channels,
        "temporal_compression": geo.temporal,
        "spatial_compression": geo.spatial,
        "invert_scale_latents": geo.invert_scale_latents,
        "latents": "VAE posterior parameters [mean | logvar] on channels (DiagonalGaussianDistribution), "
        "unscaled: sample, then multiply by scaling_factor",
        "image_noise": {
            "sigma": "exp(N(mean, std)) per clip, seeded by (encoders.seed, clip key)",
            "mean": enc.image_noise_sigma_mean,
            "std": enc.image_noise_sigma_std,
            "space": "pixels in [-1, 1], noise added before VAE encoding",
            "image_latents": "one posterior sample of the noised first frame, unscaled",
        },
        "prompt": {
            "max_text_len": enc.max_text_len,
            "text_dim": text_dim,
            "encoded_with_attention_mask": False,  # as diffusers' CogVideoX pipelines
        },
    }


class EncodingsProducer:
    """Turns a decoded clip into the `encodings` arrays; built once per worker (loads both models)."""

    def __init__(self, cfg: ExtractConfig, device: str, encoders: Encoders | None = None):
        # encoders: models already built (benchmarks with random real-size weights); None loads cfg.encoders.model
        self.cfg = cfg
        self.spec = encodings_spec(cfg)
        e = cfg.encoders
        self.enc = encoders or load_encoders(e.model, e.dtype, device, e.vae_slicing, e.vae_tiling)
        if encoders is None:  # benchmarks pass models built for a device of their own choosing
            check_compute_dtype("encodings", self.spec.config["encoders"]["compute_dtype"], self.enc.dtype, self.enc.device)
        self._check_models()
        self.device = self.enc.device  # the worker synchronises it before reading its model timer
        self.truncated = 0  # captions truncated so far: warned about once per worker, then only counted in records
        if e.compile:
            compile_modules("encoders", vae_compile_targets(self.enc.vae), self.enc.device)

    def _check_models(self) -> None:
        """The loaded weights must match the config files the spec was computed from."""
        spec_geo = read_model_configs(self.cfg.encoders.model).geometry
        if self.enc.geometry != spec_geo or self.enc.text_dim != self.spec.schema["prompt_embeds"].shape[1]:
            raise ValueError(
                f"loaded encoders ({self.enc.geometry}, text dim {self.enc.text_dim}) do not match the configs "
                f"of {self.cfg.encoders.model} ({spec_geo}, {self.spec.schema['prompt_embeds']})"
            )

    def column_arrays(self) -> dict[str, np.ndarray]:
        """The empty-prompt embedding, for classifier-free-guidance dropout of captions in stage two."""
        embeds, mask = encode_prompt(self.enc, "", self.cfg.encoders.max_text_len)
        return {"empty_prompt_embeds": embeds, "empty_prompt_mask": mask}

    def produce(self, clip: Any, entry: Any) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays of the schema, {"image_noise_sigma", "image_seed"}) for a DecodedClip and its ClipEntry."""
        e, video = self.cfg.encoders, self.cfg.video
        frames = np.asarray(clip.frames)
        expected = (video.num_frames, video.height, video.width, 3)
        if frames.shape != expected:
            raise ValueError(f"clip {entry.key}: frames {frames.shape}, expected {expected}")
        seed = clip_seed(e.seed, entry.key)
        image = encode_image(self.enc, frames[0], seed, e.image_noise_sigma_mean, e.image_noise_sigma_std)
        embeds, mask = encode_prompt(self.enc, entry.caption or "", e.max_text_len)
        tokens = caption_tokens(self.enc, entry.caption or "")
        if tokens > e.max_text_len:
            self.truncated += 1
            if self.truncated == 1:  # once, not per clip: a corpus of long captions would flood the log
                log.warning(
                    "captions longer than encoders.max_text_len=%d tokens are truncated (first: %s, %d tokens); "
                    "each such clip's record says caption_truncated", e.max_text_len, entry.key, tokens,
                )
        arrays = {
            "latents": encode_video(self.enc, frames),
            "image_latents": image.latents,
            "prompt_embeds": embeds,
            "prompt_mask": mask,
        }
        for key, spec in self.spec.schema.items():
            if arrays[key].shape != spec.shape or arrays[key].dtype != np.dtype(spec.dtype):
                got = f"{arrays[key].dtype}{arrays[key].shape}"
                raise ValueError(f"clip {entry.key}: {key} is {got}, schema says {spec}")
        record = {"image_noise_sigma": image.sigma, "image_seed": seed}
        if tokens > e.max_text_len:
            record["caption_truncated"] = tokens
        return arrays, record
