"""The student's view of the store: which columns and arrays a run reads, checked before step one.

A run never loads the VAE or the text encoder: the encodings column holds the posterior of every
clip, its noised first-frame latent and its prompt embedding. The teacher column is joined even for
runs without a feature loss, so every ablation trains on exactly the same clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection

from stages.config.distill import DistillConfig
from stages.core.grid import latent_shape, pixel_shape
from stages.store import Column, FeatureStore, StoreError
from stages.distill.stream import ClipStream, column_buckets
from stages.distill.losses import stored_lgf_fits


class StoreMismatch(StoreError):
    """The store was extracted for another student geometry."""


@dataclass
class TrainingData:
    store: FeatureStore
    encodings: Column
    teacher: Column | None
    arrays: dict[str, list[str]]  # column name -> arrays the run reads
    scaling_factor: float
    image_scale: float  # factor of the image latents: scaling_factor, or its inverse (CogVideoX 1.5)
    teacher_channels: int | None
    column_lgf: dict | None  # the LGF settings the stored target was fused with

    @property
    def columns(self) -> list[Column]:
        return [c for c in (self.teacher, self.encodings) if c is not None]

    def stream(
        self, batch_size: int, seed: int, shuffle_buffer: int, num_workers: int, on_corrupt: str = "fail", exclude: Collection[str] = (),
        allow_partial_columns: bool = False, ranks: tuple[int, int] | None = None,
    ) -> ClipStream:
        return ClipStream(self.store, self.columns, self.arrays, batch_size, seed, shuffle_buffer, num_workers, on_corrupt, exclude, allow_partial_columns,
                          ranks)


# columns a run can train against (data.teacher_column): SAM2's two-pass `teacher` (the default) and
# the DINOv2 image-only baseline `image_teacher` (one stack, stored as `fwd`; stages/extract/columns/image_teacher.py)
TEACHER_COLUMNS = ("teacher", "image_teacher")


def _select(store: FeatureStore, name: str, selector: str | None) -> Column:
    if selector is None:
        return store.column(name)
    return store.column(selector) if selector.startswith(f"{name}-") else store.column(name, selector)


def select_teacher(store: FeatureStore, selector: str | None) -> Column:
    """The teacher column of data.teacher_column: None -> `teacher`; a column name (teacher, image_teacher),
    a dirname (<name>-<hash>) or a hash prefix of either."""
    if selector is None or selector in TEACHER_COLUMNS:
        return store.column(selector or "teacher")
    name = selector.split("-", 1)[0]
    if "-" in selector and name in TEACHER_COLUMNS:
        return store.column(selector)
    found = [c for c in store.columns() if c.name in TEACHER_COLUMNS and c.hash.startswith(selector)]
    if len(found) == 1:
        return found[0]
    have = ", ".join(c.dirname for c in store.columns() if c.name in TEACHER_COLUMNS) or "none"
    what = "matches no" if not found else f"matches {len(found)}"
    raise StoreError(f"data.teacher_column={selector!r} {what} teacher column in {store.url} (teacher columns: {have}); "
                     f"name one as teacher, image_teacher or <name>-<hash>")


def directions(teacher: Column) -> int:
    """2 for SAM2's fwd/bwd column, 1 for a single-stack column (image_teacher: `fwd` only, no mask)."""
    return int(teacher.attrs.get("directions", 2))


def open_training_data(cfg: DistillConfig) -> TrainingData:
    store = FeatureStore(cfg.data.store, cfg.data.storage_options)
    store.require_snapshot()
    encodings = _select(store, "encodings", cfg.data.encodings_column)
    has_teacher = cfg.data.teacher_column is not None or any(c.name == "teacher" for c in store.columns())
    teacher = select_teacher(store, cfg.data.teacher_column) if has_teacher or cfg.losses.needs_projector else None
    arrays = {"encodings": ["latents", "prompt_embeds"] + (["image_latents"] if cfg.student.task == "i2v" else [])}
    if cfg.student.task == "i2v" and "image_embeds" in encodings.schema:  # Wan 2.1 I2V: CLIP image embeddings
        arrays["encodings"].append("image_embeds")
    arrays["encodings"] += list(encodings.attrs.get("training_arrays", []))  # what the column says its student reads besides (a prompt mask)
    column_lgf = teacher.attrs.get("lgf") if teacher is not None else None
    if teacher is not None:
        if cfg.losses.mask.weight > 0 and "mask" not in teacher.schema:
            raise StoreError(
                f"{store.url} ({teacher.dirname}): losses.mask needs SAM2's subject mask, which the {teacher.name} column "
                f"does not hold: train the mask baseline against the SAM2 teacher column (data.teacher_column=teacher)"
            )
        arrays[teacher.name] = teacher_arrays(cfg, column_lgf, directions(teacher))
    return TrainingData(
        store, encodings, teacher, arrays,
        scaling_factor=float(encodings.attrs["scaling_factor"]),
        image_scale=image_scale(encodings.attrs),
        teacher_channels=teacher.attrs.get("channels") if teacher is not None else None,
        column_lgf=column_lgf,
    )


def image_scale(attrs: dict) -> float:
    """The factor the I2V pipeline puts on the image latents, from the encodings column's attrs.

    CogVideoX 1.5's VAE sets invert_scale_latents: its pipeline divides the image latent by the
    scaling factor instead of multiplying (pipeline_cogvideox_image2video.prepare_latents). Stores
    extracted before the flag was recorded hold CogVideoX 1.0 encodings: False.
    """
    factor = float(attrs["scaling_factor"])
    return 1.0 / factor if attrs.get("invert_scale_latents", False) else factor


def teacher_arrays(cfg: DistillConfig, column_lgf: dict | None, directions: int = 2) -> list[str]:
    """Only what the active losses read: the stored target when its LGF settings are the run's.

    A single-stack column (directions 1) has `fwd` only: its target is recomputed from that one
    stack, and REPA's "mean" teacher is that stack (losses.teacher_target / repa_teacher).
    """
    losses, wanted = cfg.losses, []
    stacks = ["fwd", "bwd"] if directions == 2 else ["fwd"]
    if losses.lgf.weight > 0:
        stored_fits = column_lgf is not None and stored_lgf_fits(column_lgf, losses.lgf)
        wanted += ["lgf"] if stored_fits else stacks
    if losses.repa.weight > 0:
        wanted += ["fwd"] + (["bwd"] if losses.repa.teacher == "mean" and directions == 2 else [])
    if losses.mask.weight > 0:
        wanted += ["mask"]
    return sorted(set(wanted))


def check_fit(data: TrainingData, transformer_config: Any, cfg: DistillConfig, student: Any = None) -> tuple[int, int, int]:
    """Refuse, before any step, a store whose shapes do not fit the student. Returns the token grid.

    student: the family (stages/families/); None = the family of the transformer config's class.
    """
    from stages.families.registry import encodings_family, student_of

    if student is None:
        student = student_of(transformer_config)
    lat = data.encodings.schema["latents"].shape  # [2C, T, H8, W8]
    where = f"{data.store.url} ({data.encodings.dirname})"
    buckets = column_buckets(data.encodings)
    why = student.single_size(transformer_config) if buckets else None
    if why:  # stage one refuses this when it knows the student (student.model); a store made without it lands here
        raise StoreMismatch(f"{where}: extracted at several sizes (video.buckets {buckets}), but student.model={cfg.student.model} "
                            f"trains at one size only ({why}): train it on a store of one size")
    if lat[0] != 2 * transformer_config.out_channels:
        raise StoreMismatch(f"{where}: latents have {lat[0] // 2} channels, the student predicts {transformer_config.out_channels}")
    vae = encodings_family(data.encodings.attrs)
    if vae != student.family:
        raise StoreMismatch(f"{where}: the encodings were made with the {vae} VAE/text encoder, the student is {student.family}")
    # the condition arrays the task's student is fed (image-to-video: the first frame's)
    missing = [k for k in student.condition_arrays(cfg.student.task) if k not in data.encodings.schema]
    if missing:
        raise StoreMismatch(f"{where}: student.task={cfg.student.task} needs {', '.join(missing)}, which these encodings do not hold "
                            "(extracted for text-to-video): re-extract with an image-to-video encoders model")
    problem = student.check_latent_grid(transformer_config, lat[1:])
    if problem:
        raise StoreMismatch(f"{where}: {problem}")
    grid = student.token_grid(transformer_config, lat[1:])
    text = data.encodings.schema["prompt_embeds"].shape
    if text[1] != student.text_dim(transformer_config):
        raise StoreMismatch(f"{where}: prompt embeddings are {text[1]} wide, the student takes {student.text_dim(transformer_config)}")
    if data.teacher is not None:
        tgrid = tuple(data.teacher.attrs.get("grid") or data.teacher.schema["mask"].shape)
        if tgrid != grid:
            raise StoreMismatch(_grid_mismatch(data, transformer_config, tgrid, grid, tuple(lat[1:])))
    if cfg.tap.block >= student.num_blocks(transformer_config):
        raise StoreMismatch(f"tap.block={cfg.tap.block} but the student has {student.num_blocks(transformer_config)} blocks")
    return grid


def largest_latent_shape(data: TrainingData) -> tuple[int, int, int]:
    """(T, H8, W8) of the largest clip the run trains on: the schema's, or in a mixed-size store (video.buckets,
    whose schema is the envelope of every bucket, larger than any one) the bucket of the most latent elements,
    which is what the memory plan must fit."""
    lat = tuple(int(v) for v in data.encodings.schema["latents"].shape[1:])
    buckets = column_buckets(data.encodings)
    if not buckets:
        return lat
    temporal, spatial = _compression(data)
    shapes = [latent_shape(int(f), int(h), int(w), temporal, spatial) for f, h, w in buckets]
    return max(shapes, key=lambda s: (s[0] * s[1] * s[2], s))


def _compression(data: TrainingData) -> tuple[int, int]:
    """(temporal, spatial) VAE compression, as the family's encodings layout recorded it in the column's attrs
    (CogVideoX's 4 / 8 for a column whose attrs lack them)."""
    attrs = data.encodings.attrs
    return int(attrs.get("temporal_compression", 4)), int(attrs.get("spatial_compression", 8))


def _grid_mismatch(data: TrainingData, transformer_config: Any, tgrid: tuple, grid: tuple, lat: tuple) -> str:
    """The teacher/student grid mismatch in pixels, with the two ways out."""
    temporal, spatial = _compression(data)
    patch = transformer_config.patch_size  # CogVideoX: an int; Wan: (t, h, w)
    token = spatial * (patch[-1] if isinstance(patch, (list, tuple)) else patch)  # pixels per token side
    frames, height, width = pixel_shape(lat, temporal, spatial)
    video = data.teacher.producer_config.get("video") or {}
    t_frames = video.get("num_frames", (tgrid[0] - 1) * temporal + 1)
    t_height, t_width = video.get("height", tgrid[1] * token), video.get("width", tgrid[2] * token)
    return (
        f"{data.store.url} ({data.teacher.dirname}): teacher grid (T, h, w) = {tgrid}, but the student config gives {grid} "
        f"for latents {lat}: the teacher was extracted from {t_frames} frames of {t_height}x{t_width} pixels, the student "
        f"trains on {frames} frames of {height}x{width} pixels ({token}x{token} pixels per token). Either re-extract the "
        f"teacher at the student's size (sam2videox extract ... video.num_frames={frames} video.height={height} "
        f"video.width={width}), or train on encodings of {t_frames} frames at {t_height}x{t_width} (extract them, then "
        f"data.encodings_column=<that column>) so the student's grid is the teacher's"
    )
