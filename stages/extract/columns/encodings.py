"""The `encodings` column: what stage two needs from the VAE and the text encoder(s), per clip.

One producer for every family: the family that claims `encoders.model` (stages/families/registry.py) gives the
column's layout from config files alone (its arrays, attrs and the settings that key it) and loads its encoders,
which encode one clip. Computed once in stage one, so training never loads either model. What each family
stores: stages/families/<family>/encoders.py.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from stages.config.extract import ExtractConfig
from stages.core.devices import check_compute_dtype, compute_dtype
from stages.extract.producer import ColumnSpec
from stages.families.base import Encoders, EncodingsLayout
from stages.families.registry import encoders_for

log = logging.getLogger(__name__)

NAME = "encodings"


def _layout(cfg: ExtractConfig) -> EncodingsLayout:
    """The column's layout; with video.buckets, at the envelope (the largest bucket in each dimension: the
    shape every clip's arrays are padded to on write, stages/extract/shard_worker.py `_pad`)."""
    from stages.extract.student_geometry import check_buckets

    check_buckets(cfg)
    layout = encoders_for(cfg.encoders.model).encodings_layout(cfg.encoders, cfg.video.envelope())
    _check_geometry(cfg, layout)
    return layout


def bucket_schemas(cfg: ExtractConfig) -> dict[tuple[int, int, int], dict]:
    """{bucket: the schema of a clip of that bucket} (one entry, the column's schema, without buckets)."""
    family = encoders_for(cfg.encoders.model)
    return {b: family.encodings_layout(cfg.encoders, cfg.video.at(b)).schema for b in cfg.video.bucket_shapes()}


def encodings_spec(cfg: ExtractConfig) -> ColumnSpec:
    """The column's spec from configs only (no weights): shapes derive from the family's model configs.

    Raises ValueError when the clip geometry does not fit the VAE, or when the student grid of
    `cfg.student` disagrees with the VAE (teacher and student grids would then not line up).
    """
    return _spec(cfg, _layout(cfg))


def _spec(cfg: ExtractConfig, layout: EncodingsLayout) -> ColumnSpec:
    encoders = {**layout.encoders, "compute_dtype": compute_dtype(cfg.encoders.dtype, cfg.encoders.device, cfg.ray.gpus_per_worker)}
    config = {"encoders": encoders, "video": cfg.video.key(), "model": layout.model}
    return ColumnSpec(NAME, config, layout.schema, layout.attrs)


def _check_geometry(cfg: ExtractConfig, layout: EncodingsLayout) -> None:
    from stages.extract.student_geometry import resolve_student_geometry

    video, student = cfg.video, resolve_student_geometry(cfg)
    # video.buckets: check_buckets has checked each bucket against the student's grid, which the check
    # below ties to this VAE (num_frames / height / width are then unused)
    if video.buckets is None and (video.num_frames - 1) % layout.temporal:
        raise ValueError(f"video.num_frames={video.num_frames} must be {layout.temporal}k+1 for this VAE")
    if video.buckets is None and (video.height % layout.spatial or video.width % layout.spatial):
        raise ValueError(f"video size {video.height}x{video.width} must be a multiple of {layout.spatial} for this VAE")
    if (student.vae_spatial, student.vae_temporal) != (layout.spatial, layout.temporal):
        raise ValueError(
            f"student.vae_spatial/vae_temporal = {student.vae_spatial}/{student.vae_temporal} but the VAE of "
            f"{cfg.encoders.model} compresses {layout.spatial}x spatially and {layout.temporal}x in time"
        )


class EncodingsProducer:
    """Turns a decoded clip into the `encodings` arrays; built once per worker (loads the family's encoders)."""

    def __init__(self, cfg: ExtractConfig, device: str, encoders: Encoders | None = None):
        # encoders: models already built (benchmarks with random real-size weights); None loads cfg.encoders.model
        self.cfg = cfg
        self.layout = _layout(cfg)
        self.spec = _spec(cfg, self.layout)
        self.schemas = bucket_schemas(cfg) if cfg.video.buckets is not None else None  # bucket -> a clip's schema
        e = cfg.encoders
        self.enc = encoders or encoders_for(e.model).load_encoders(e, device)
        if encoders is None:  # benchmarks pass models built for a device of their own choosing
            check_compute_dtype("encodings", self.spec.config["encoders"]["compute_dtype"], self.enc.dtype, self.enc.device)
        self.enc.check_layout(self.layout, e.model)
        self.device = self.enc.device  # the worker synchronises it before reading its model timer
        self.truncated = 0  # captions truncated so far: warned about once per worker, then only counted in records
        if e.compile:
            self.enc.compile()

    def column_arrays(self) -> dict[str, np.ndarray]:
        """The empty-prompt embedding, for classifier-free-guidance dropout of captions in stage two."""
        return self.enc.column_arrays(self.cfg.encoders)

    def produce(self, clip: Any, entry: Any) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays of the schema, the family's record fields) for a DecodedClip and its ClipEntry."""
        e, video = self.cfg.encoders, self.cfg.video
        frames = np.asarray(clip.frames)
        schema = self.spec.schema
        if self.schemas is not None:  # mixed sizes: the clip's bucket says its shapes (padded to the envelope on write)
            bucket = tuple(getattr(clip, "bucket", None) or ())
            if bucket not in self.schemas:
                raise ValueError(f"clip {entry.key}: decoded for bucket {list(bucket)}, not one of video.buckets")
            expected, schema = (*bucket, 3), self.schemas[bucket]
        else:
            expected = (video.num_frames, video.height, video.width, 3)
        if frames.shape != expected:
            raise ValueError(f"clip {entry.key}: frames {frames.shape}, expected {expected}")
        arrays, record = self.enc.encode_clip(frames, entry.key, entry.caption or "", e)
        if "caption_truncated" in record:
            self.truncated += 1
            if self.truncated == 1:  # once, not per clip: a corpus of long captions would flood the log
                log.warning(
                    "captions longer than encoders.max_text_len=%d tokens are truncated (first: %s, %d tokens); "
                    "each such clip's record says caption_truncated", e.max_text_len, entry.key, record["caption_truncated"],
                )
        if set(arrays) != set(self.spec.schema):
            raise ValueError(f"clip {entry.key}: encoded arrays {sorted(arrays)}, schema says {sorted(self.spec.schema)}")
        for key, spec in schema.items():
            if arrays[key].shape != spec.shape or arrays[key].dtype != np.dtype(spec.dtype):
                got = f"{arrays[key].dtype}{arrays[key].shape}"
                raise ValueError(f"clip {entry.key}: {key} is {got}, schema says {spec}")
        return arrays, record
