"""The `teacher` column: SAM2 features of both directions on the student's token grid, and their fusion.

Per clip (T latent frames, h x w tokens, C teacher channels, K = k*k):
    fwd, bwd  int8    [T, h, w, C]     features of the forward / backward pass (teacher.feature),
                                       quantised per token (stages/core/quantize.py: attrs "quantized")
    fwd_scale, bwd_scale float32 [T, h, w, 1]  their per-token scales (x ~= q * scale)
    lgf       float16 [T', h, w, K]    fused Local Gram Flow target (probabilities; T' = sum_o (T - o))
    mask      uint8   [T, h, w]        forward-pass subject coverage per token, 0..255
    mask_bwd  uint8   [T, h, w]        backward-pass coverage (where the passes agree: inspect --teacher-stats)
The fwd/bwd features are kept so stage two can refuse nothing: a run with other LGF settings
recomputes its target from them instead of re-extracting. They are int8 so that 256-channel
memory-attention features fit: 49x480x720 (13x30x45 tokens) is 10.75 MB per clip in all, against
19.7 MB with float16 fwd/bwd; the relations recomputed from them stay within KL 1e-3 of the fp32
ones (tests/extract/test_teacher_storage.py). Columns written before (float16 fwd/bwd, no "quantized"
attrs) still read: `Column.read_dequantized` returns float32 either way.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from stages.config.loader import to_dict
from stages.config.extract import ExtractConfig
from stages.extract.producer import ColumnSpec
from stages.core.quantize import QUANT_INT8, quantize, scale_name
from stages.store import ArraySpec
from stages.store.schema import QUALITY, TEACHER, TEACHER_COLUMN, TEACHER_RECORD
from stages.core.devices import check_compute_dtype, compute_dtype, resolve_device, resolve_dtype
from stages.core.compiling import compile_modules, sam2_compile_targets
from stages.teacher.prompts import Prompt, manifest_prompt
from stages.teacher.sam2_model import build_sam2, feature_channels
from stages.teacher.tracker import BidirectionalTracker, TrackResult
from stages.core.grid import TokenGrid, mask_to_token_grid, to_token_grid, token_grid
from stages.core.lgf import fuse

log = logging.getLogger(__name__)

# teacher settings that change speed, not content (beyond float reassociation), so not the column key
# (allow_random_weights: a permission; the weights are keyed by model, checkpoint and seed)
_NOT_KEYED = ("device", "image_batch", "clip_batch", "compile", "compile_loop", "allow_random_weights")
# the feature stacks stored int8 with a per-token scale (part of the column key: a float16 column of the
# same settings stays a column of its own, with its own schema)
QUANTIZED = {TEACHER.fwd: QUANT_INT8, TEACHER.bwd: QUANT_INT8}


def student_grid(cfg: ExtractConfig) -> TokenGrid:
    from stages.extract.student_geometry import resolve_student_geometry

    s, v = resolve_student_geometry(cfg), cfg.video.envelope()  # with buckets: the largest grid, which the arrays are padded to
    return token_grid(v.num_frames, v.height, v.width, s.vae_temporal, s.vae_spatial, s.patch_size, s.patch_size_t)


def _student_key(cfg: ExtractConfig) -> dict:
    """The student geometry the column is keyed by: the resolved grid numbers, not which model gave them
    (a column made for student.model=X equals one made with X's numbers written out; unset model keeps old keys)."""
    from stages.extract.student_geometry import resolve_student_geometry

    key = to_dict(resolve_student_geometry(cfg))
    key.pop("model", None)
    return key


def teacher_spec(cfg: ExtractConfig) -> ColumnSpec:
    """Name, hashed producer config and schema of the teacher column, without loading SAM2."""
    from stages.extract.student_geometry import check_buckets

    check_weights(cfg)
    check_buckets(cfg)
    grid = student_grid(cfg)
    channels = feature_channels(cfg.teacher.model, cfg.teacher.feature)
    pairs = sum(grid.frames - o for o in cfg.lgf.offsets)
    k2 = cfg.lgf.kernel**2
    # grounding is keyed only when prompt=grounded: other prompt modes keep the keys they had before it existed
    teacher = {k: v for k, v in to_dict(cfg.teacher).items() if k not in (*_NOT_KEYED, "grounding", "cast_weights")}
    teacher["compute_dtype"] = compute_dtype(cfg.teacher.dtype, cfg.teacher.device, cfg.ray.gpus_per_worker)
    # cast_weights is keyed by what it does, only where it does something (float32 compute keeps float32 weights),
    # so columns made without it keep their keys
    if cfg.teacher.cast_weights and teacher["compute_dtype"] != "float32":
        teacher["weights_dtype"] = teacher["compute_dtype"]
    if cfg.teacher.prompt == "grounded":
        teacher["grounding"] = _grounding_key(cfg)
    config = {
        "teacher": teacher,
        "video": cfg.video.key(),
        "student": _student_key(cfg),
        "lgf": to_dict(cfg.lgf),
        "quantized": dict(QUANTIZED),
    }
    schema = {
        TEACHER.fwd: ArraySpec((*grid.shape, channels), "int8"),
        TEACHER.fwd_scale: ArraySpec((*grid.shape, 1), "float32"),
        TEACHER.bwd: ArraySpec((*grid.shape, channels), "int8"),
        TEACHER.bwd_scale: ArraySpec((*grid.shape, 1), "float32"),
        TEACHER.lgf: ArraySpec((pairs, grid.height, grid.width, k2), "float16"),
        TEACHER.mask: ArraySpec(grid.shape, "uint8"),
        TEACHER.mask_bwd: ArraySpec(grid.shape, "uint8"),
    }
    attrs = {"grid": list(grid.shape), "channels": channels, "mask_scale": 255, "lgf": to_dict(cfg.lgf), "quantized": dict(QUANTIZED)}
    return ColumnSpec(TEACHER_COLUMN, config, schema, attrs)


def real_size_bytes_per_clip() -> dict[str, int]:
    """{array: bytes} of one teacher clip at the real size (ExtractConfig defaults: SAM 2.1 Hiera-L, the
    default feature, 49x480x720), from the schema alone: no SAM2, no extraction."""
    from dataclasses import replace

    cfg = ExtractConfig()
    spec = teacher_spec(replace(cfg, teacher=replace(cfg.teacher, allow_random_weights=True)))
    return {k: int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for k, v in spec.schema.items()}


def _grounding_key(cfg: ExtractConfig) -> dict:
    """The detector settings that change content (device and batch are speed), with the dtype it
    really computes in, as for the teacher."""
    g = cfg.teacher.grounding
    key = {k: v for k, v in to_dict(g).items() if k not in ("device", "batch", "dtype")}
    device = cfg.teacher.device if g.device == "auto" else g.device
    key["compute_dtype"] = compute_dtype(g.dtype, device, cfg.ray.gpus_per_worker)
    return key


def check_weights(cfg: ExtractConfig) -> None:
    """A released SAM2 config with random weights gives meaningless targets: refuse unless asked for."""
    t = cfg.teacher
    if t.checkpoint is None and t.model != "tiny" and not t.allow_random_weights:
        raise ValueError(
            f"teacher.checkpoint is null for the released SAM2 config '{t.model}': set teacher.checkpoint to its released "
            f"weights (a .pt file), or teacher.allow_random_weights=true for a random-weight test run"
        )


class TeacherProducer:
    """Built once per worker: loads SAM2 and turns decoded clips into teacher arrays, one clip
    at a time (`produce`) or `teacher.clip_batch` clips in lockstep (`produce_batch`)."""

    def __init__(self, cfg: ExtractConfig, device: str):
        self.cfg = cfg
        self.grid = student_grid(cfg)
        # video.buckets: bucket (frames, height, width) -> its token grid
        self.grids = {b: student_grid(dataclasses.replace(cfg, video=cfg.video.at(b))) for b in cfg.video.bucket_shapes()}
        from stages.extract.student_geometry import resolve_student_geometry

        self.vae_temporal = resolve_student_geometry(cfg).vae_temporal
        t = cfg.teacher
        dev = self.device = resolve_device(device)
        model = build_sam2(t.model, t.checkpoint, t.image_size, device=dev, seed=t.seed if t.checkpoint is None else None)
        dtype = resolve_dtype(t.dtype, dev)
        check_compute_dtype("teacher", compute_dtype(t.dtype, t.device, cfg.ray.gpus_per_worker), dtype, dev)
        if t.cast_weights and dtype != torch.float32:
            model.to(dtype)  # teacher.cast_weights: parameters and buffers in the compute dtype (autocast stays on)
        if t.compile:
            compile_modules("teacher", sam2_compile_targets(model, loop=t.compile_loop), dev)
        self.tracker = BidirectionalTracker(model, feature=t.feature, image_batch=t.image_batch, dtype=dtype, mask_threshold=t.mask_threshold)
        self.detector = None  # Grounding DINO, loaded once per worker for prompt=grounded
        if t.prompt == "grounded":
            from stages.teacher.grounding import GroundingDetector

            gdev = dev if t.grounding.device == "auto" else resolve_device(t.grounding.device)
            self.detector = GroundingDetector(t.grounding, gdev)
            declared = _grounding_key(cfg)["compute_dtype"]
            check_compute_dtype("teacher (grounding detector)", declared, self.detector.dtype, gdev)

    def column_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def produce(self, clip, entry) -> tuple[dict[str, np.ndarray], dict]:
        prompt, source = self._prompt(clip, entry)
        result = self.tracker.track(torch.from_numpy(clip.frames), prompt, source)
        return self._arrays(result, source, self._grid_of(clip.frames))

    def produce_batch(self, clips: list, entries: list) -> list[tuple[dict[str, np.ndarray], dict] | Exception]:
        """`produce` for several decoded clips, tracked `teacher.clip_batch` at a time in lockstep.

        Returns one item per clip, in order: (arrays, record) as `produce` gives them, or the
        Exception that clip failed with. A clip whose prompt cannot be prepared fails alone
        before tracking; a batch whose tracking raises is tracked again one clip at a time, so
        only the clip that fails alone fails (its neighbours' results equal the batched ones:
        track_batch == track per clip).
        """
        out: list[tuple[dict[str, np.ndarray], dict] | Exception | None] = [None] * len(clips)
        ready: list[tuple[int, torch.Tensor, Prompt | None, str]] = []
        try:
            grounded = self._ground(clips, entries)  # one batched detector pass over every clip's frame 0
        except Exception as exc:  # each clip is grounded alone in _prompt: only a clip that fails alone fails
            log.warning("grounding a batch of %d clips failed (%s: %s): grounding them one at a time", len(clips), type(exc).__name__, exc)
            grounded = [None] * len(clips)
        for i, (clip, entry) in enumerate(zip(clips, entries, strict=True)):
            try:
                prompt, source = self._prompt(clip, entry, grounded[i])
                ready.append((i, torch.from_numpy(clip.frames), prompt, source))
            except Exception as exc:  # this clip's prompt (or frames) only
                out[i] = exc
        for group in _same_shape_groups(ready, self.cfg.teacher.clip_batch):
            try:
                results: list[TrackResult | Exception] = list(self.tracker.track_batch([g[1] for g in group], [g[2] for g in group], [g[3] for g in group]))
            except Exception as exc:
                if len(group) == 1:
                    results = [exc]
                else:
                    log.warning("a batch of %d clips failed (%s: %s): tracking them one at a time", len(group), type(exc).__name__, exc)
                    results = [self._track_one(frames, prompt, source) for _, frames, prompt, source in group]
            for (i, frames, _, source), result in zip(group, results):
                if isinstance(result, Exception):
                    out[i] = result
                    continue
                try:
                    out[i] = self._arrays(result, source, self._grid_of(frames))
                except Exception as exc:
                    out[i] = exc
        return out  # type: ignore[return-value]

    def _track_one(self, frames: torch.Tensor, prompt: Prompt | None, source: str) -> TrackResult | Exception:
        try:
            return self.tracker.track(frames, prompt, source)
        except Exception as exc:
            return exc

    def _ground(self, clips: list, entries: list) -> list[Prompt | Exception | None]:
        """Grounded box prompts (or the NoSubjectFound of a clip), one per clip; Nones when not grounded."""
        if self.detector is None:
            return [None] * len(clips)
        # one detector batch per frame size (its frames must share one: a mixed-size store's buckets differ)
        out: list = [None] * len(clips)
        sizes: dict[tuple, list[int]] = {}
        for i, c in enumerate(clips):
            sizes.setdefault(tuple(c.frames.shape[1:3]), []).append(i)
        for idx in sizes.values():
            for i, p in zip(idx, self.detector.prompts([clips[i].frames[0] for i in idx], [entries[i].caption for i in idx])):
                out[i] = p
        return out

    def _prompt(self, clip, entry, grounded: Prompt | Exception | None = None) -> tuple[Prompt | None, str]:
        """The clip's forward prompt in frame pixels (None: the tracker computes it) and its source.
        grounded: the clip's detector result when produce_batch already ran it for the whole batch."""
        source = self.cfg.teacher.prompt
        if source == "grounded":
            found = grounded if grounded is not None else self._ground([clip], [entry])[0]
            if isinstance(found, Exception):
                raise found
            return found, source
        if source == "manifest":
            if entry.prompt:
                return manifest_prompt(clip.map_prompt(entry.prompt, self._mask_loader())), source
            return None, "auto"  # documented fallback: a clip without a manifest prompt
        return None, source

    def _grid_of(self, frames) -> TokenGrid:
        """The student's token grid for a clip of frames [F, H, W, 3]: the column's grid, or (video.buckets)
        the grid of the clip's bucket, which the same geometry gives (docs/method.md: teacher grid = student grid)."""
        if self.cfg.video.buckets is None:
            return self.grid
        bucket = tuple(int(v) for v in frames.shape[:3])
        if bucket not in self.grids:
            raise ValueError(f"frames of shape {list(frames.shape)} match no bucket of video.buckets")
        return self.grids[bucket]

    def _arrays(self, result: TrackResult, source: str, grid: TokenGrid | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Per-frame features -> the column's arrays on the student's token grid (`grid`, the clip's; None: the
        column's), and the record."""
        cfg = self.cfg
        grid = grid or self.grid
        vt, mode = self.vae_temporal, cfg.teacher.temporal
        fwd = to_token_grid(result.fwd, grid, vt, mode, cfg.teacher.resample)
        bwd = to_token_grid(result.bwd, grid, vt, mode, cfg.teacher.resample)
        lgf = fuse(fwd[None], bwd[None], cfg.lgf.kernel, cfg.lgf.tau, cfg.lgf.offsets, cfg.lgf.fusion)[0]
        arrays = {
            TEACHER.fwd: fwd.numpy(),  # float32 until checked, then int8 + scale
            TEACHER.bwd: bwd.numpy(),
            TEACHER.lgf: lgf.numpy().astype(np.float16),
            TEACHER.mask: mask_to_token_grid(result.masks_fwd, grid, vt).numpy(),
            TEACHER.mask_bwd: mask_to_token_grid(result.masks_bwd, grid, vt).numpy(),
        }
        _check_finite(arrays)
        arrays = quantize_features(arrays)
        record = {
            TEACHER_RECORD.prompt: result.prompt.to_record(),
            TEACHER_RECORD.prompt_source: source,
            TEACHER_RECORD.object_score: float(result.object_score),
            TEACHER_RECORD.quality: teacher_quality(result),
        }
        return arrays, record

    def _mask_loader(self):
        from stages.media.corpus import load_prompt_mask

        options = self.cfg.corpus.storage_options
        return lambda url: load_prompt_mask(url, options)


def _same_shape_groups(ready: list, size: int) -> list[list]:
    """Consecutive items (i, frames, prompt, source) in groups of up to `size` whose frames share one shape
    (clips of different buckets are never tracked in lockstep); without buckets, plain groups of `size`."""
    groups: list[list] = []
    for item in ready:
        if groups and len(groups[-1]) < size and tuple(groups[-1][0][1].shape) == tuple(item[1].shape):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def quantize_features(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """fwd/bwd float [T, h, w, C] -> int8 [T, h, w, C] plus `<name>_scale` float32 [T, h, w, 1]; others as they are."""
    out = dict(arrays)
    for name in QUANTIZED:
        out[name], out[scale_name(name)] = quantize(arrays[name])
    return out


QUALITY_KEYS = QUALITY.all  # the per-clip record["quality"] keys (stages/store/schema.py)


def teacher_quality(result: TrackResult) -> dict[str, float]:
    """The clip's teacher-quality summary (scalars only, it goes into the commit record):
    what stage two's data.filter and `inspect --teacher-stats` read, so no array is opened.

    object_score_fwd/bwd: mean presence (sigmoid of SAM2's object-score logit) of each pass;
    presence_min: the lowest presence over frames and both passes (a frame where SAM2 says the
        subject is gone);
    area_*: each pass's mask area as a fraction of the frame, min and mean over frames;
    iou_fwd_bwd: mean over frames of IoU(masks_fwd[t], masks_bwd[t]), a frame where both masks
        are empty counting as 1 (the passes agree there is no subject).
    """
    fwd = result.masks_fwd.flatten(1).bool()  # [F, H*W]
    bwd = result.masks_bwd.flatten(1).bool()
    pixels = fwd.shape[1]
    area_fwd = fwd.sum(1).double() / pixels  # [F]
    area_bwd = bwd.sum(1).double() / pixels
    inter = (fwd & bwd).sum(1).double()
    union = (fwd | bwd).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    p_fwd, p_bwd = result.presence_fwd.double(), result.presence_bwd.double()
    return {
        QUALITY.object_score_fwd: float(p_fwd.mean()),
        QUALITY.object_score_bwd: float(p_bwd.mean()),
        QUALITY.presence_min: float(torch.minimum(p_fwd.min(), p_bwd.min())),
        QUALITY.area_fwd_min: float(area_fwd.min()),
        QUALITY.area_bwd_min: float(area_bwd.min()),
        QUALITY.area_fwd_mean: float(area_fwd.mean()),
        QUALITY.area_bwd_mean: float(area_bwd.mean()),
        QUALITY.iou_fwd_bwd: float(iou.mean()),
    }


def _check_finite(arrays: dict[str, np.ndarray]) -> None:
    """Refuse NaN or Inf teacher values (fwd/bwd before quantising, lgf after the fp16 cast, which
    overflows past 65504): the clip fails into the ledger instead of poisoning every loss that reads it."""
    for key in (*TEACHER.stacks, TEACHER.lgf):
        bad = ~np.isfinite(arrays[key])
        if bad.any():
            nan = int(np.isnan(arrays[key]).sum())
            raise ValueError(
                f"non-finite teacher values: '{key}' has {int(bad.sum())} of {bad.size} non-finite "
                f"({nan} NaN, {int(bad.sum()) - nan} Inf{' after the float16 cast' if key == TEACHER.lgf else ''})"
            )
