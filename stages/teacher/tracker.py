"""Bidirectional SAM2 tracking of one subject through a clip, capturing per-frame teacher features.

Forward pass: prompted on frame 0, tracked 0 -> F-1. Backward pass: prompted on frame F-1 with
the mask the forward pass predicted there, tracked F-1 -> 0, in its own state (tracking in
reverse inside the forward state would overwrite the forward outputs). Both passes reproduce
what `SAM2VideoPredictor` computes when used the documented way (JPEG folder, `init_state`,
`add_new_points_or_box` / `add_new_mask`, `propagate_in_video`; a fresh state for the reverse
pass): tests/teacher/test_tracker_parity.py checks features and masks against it. Differences, by design:

- frames come in as a uint8 tensor (no JPEG round trip, no float32 copy of the whole clip);
- the image encoder runs once per frame, `image_batch` frames per call, and its output serves
  both passes (stock encodes one frame at a time and again for the reverse pass);
- the tracking state holds only what memory attention can read (the prompted frame, the last
  num_maskmem-1 memories, object pointers of the last max_obj_ptrs_in_encoder-1 frames), so it
  stays flat in clip length (stock keeps every frame's outputs);
- the features SAM2 never returns (memory-encoder output, memory-attention output, backbone)
  are captured per frame, moved to CPU float32 as they are produced;
- `track_batch` tracks B clips of one shape in lockstep: each clip is one row of SAM2's object
  batch (the batch SAM2's predictor uses for several objects of one video), with its own
  memories in that row of every state entry; the image encoder takes frames across clips.
  Each clip's result equals `track` of that clip alone (float noise: tests/teacher/test_tracker_parity.py).

The SAM2 steps themselves are the model's own methods (`forward_image`,
`_prepare_backbone_features`, `_track_step`, `_encode_memory_in_output`, `_encode_new_memory`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from stages.teacher.prompts import Prompt, auto_prompt, center_prompt, mask_summary
from stages.teacher.sam2_model import FrameFeatures, SAM2VideoPredictor, encode_clips

logger = logging.getLogger(__name__)

FeatureKind = Literal["maskmem", "memory_attention", "backbone"]
FEATURE_KINDS: tuple[str, ...] = ("maskmem", "memory_attention", "backbone")


@dataclass
class TrackResult:
    """The teacher's output for one clip of F frames at H x W.

    fwd, bwd: float32 CPU [F, C, Hf, Wf], indexed by frame time (bwd[t] is the backward pass's
        feature at frame t). C = mem_dim for "maskmem", hidden_dim otherwise; Hf = Wf =
        image_size / 16.
    masks_fwd, masks_bwd: bool [F, H, W], the subject mask of each pass at frame resolution
        (SAM2's low-res logits upsampled bilinearly, > mask_threshold, as stock returns them).
    presence_fwd, presence_bwd: float32 [F], sigmoid(object_score_logits) per frame.
    object_score: mean of presence_fwd, how sure SAM2 is the subject stays visible (on a
        mask-prompted frame SAM2 sets the logit to +10 for a non-empty mask, -10 for an empty one).
    prompt: the forward prompt actually used; backward_prompt: the summary of the mask that
        prompted the backward pass (mask_shape, mask_area, mask_bbox).
    stats: timings (s) and state sizes, JSON-able.
    """

    fwd: torch.Tensor
    bwd: torch.Tensor
    masks_fwd: torch.Tensor
    masks_bwd: torch.Tensor
    presence_fwd: torch.Tensor
    presence_bwd: torch.Tensor
    object_score: float
    prompt: Prompt
    backward_prompt: dict[str, Any]
    feature: str
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def backward_prompt_area(self) -> int:
        return int(self.backward_prompt["mask_area"])

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary of the clip's teacher pass (no tensors)."""
        return {
            "feature": self.feature,
            "feature_shape": list(self.fwd.shape),
            "object_score": self.object_score,
            "prompt": self.prompt.to_record(),
            "backward_prompt": self.backward_prompt,
            "mask_area_fwd": self.masks_fwd.flatten(1).sum(1).tolist(),
            "mask_area_bwd": self.masks_bwd.flatten(1).sum(1).tolist(),
            "stats": self.stats,
        }


@dataclass
class _PassOutput:
    """One direction's per-frame captures, indexed by frame time."""

    feats: list[torch.Tensor | None]
    masks: list[torch.Tensor | None]
    presence: list[torch.Tensor | None]
    peak_maskmem_frames: int = 0
    peak_ptr_frames: int = 0


class BidirectionalTracker:
    """Track one prompted subject forward and backward through a clip with a SAM2 video predictor.

    model: a built SAM2VideoPredictor (stages.teacher.sam2_model.build_sam2), eval and frozen.
    feature: what to capture per frame: "maskmem" (memory-encoder output, mem_dim channels),
        "memory_attention" (the memory-conditioned feature SAM2's mask head reads, hidden_dim;
        on a prompted frame it is what SAM2 uses there: backbone + no-memory embedding for a
        click/box prompt, the raw backbone feature for a mask prompt, whose mask SAM2 takes as
        its output without memory attention), "backbone" (the stride-16 image feature, hidden_dim).
    image_batch: frames per image-encoder call.
    dtype: autocast dtype (float32 disables autocast). Callers pass `resolve_dtype`'s choice, float32
        on CPU; a model whose weights are already in `dtype` (cast_weights) still runs under autocast,
        which then casts only the float32 tensors SAM2 makes itself (masks, position encodings).
    mask_threshold: logit threshold of the output masks (and of auto prompts).
    auto_grid: the auto prompt's click lattice is auto_grid x auto_grid.
    """

    def __init__(
        self,
        model: SAM2VideoPredictor,
        feature: FeatureKind = "maskmem",
        image_batch: int = 8,
        dtype: torch.dtype = torch.float32,
        mask_threshold: float = 0.0,
        auto_grid: int = 4,
    ) -> None:
        if feature not in FEATURE_KINDS:
            raise ValueError(f"feature must be one of {FEATURE_KINDS}, got {feature!r}")
        if image_batch < 1:
            raise ValueError("image_batch must be >= 1")
        self.model = model
        self.feature = feature
        self.image_batch = image_batch
        self.dtype = dtype
        self.mask_threshold = mask_threshold
        self.auto_grid = auto_grid

    # -- public ------------------------------------------------------------------------------

    def track(
        self,
        frames: torch.Tensor,
        prompt: Prompt | None = None,
        prompt_source: str = "auto",
    ) -> TrackResult:
        """Track the subject through `frames` (uint8 [F, H, W, 3]) in both directions.

        prompt: the forward prompt on frame 0 in frame pixels; None computes one from
        `prompt_source`: "center" (centre click), "auto" (SAM2's best mask on frame 0, from the
        image features already computed for tracking), "manifest" (a clip without a manifest
        prompt: falls back to "auto").
        """
        _check_frames(frames)
        with torch.inference_mode(), self._autocast():
            return self._track_group([frames], [prompt], [prompt_source])[0]

    def track_batch(
        self,
        frames: list[torch.Tensor],
        prompts: list[Prompt | None],
        sources: list[str],
    ) -> list[TrackResult]:
        """Track B clips in lockstep; result b equals `track(frames[b], prompts[b], sources[b])`.

        Clips of one shape (F, H, W) form one group: the image encoder takes frames across the
        group's clips, then the forward passes of all its clips run together (frame t of every
        clip in one batch through memory attention, mask decoder and memory encoder, each clip a
        row of SAM2's object batch with its own memories), then the backward passes. Clips of
        other shapes form their own groups, tracked one group after the other. A config whose
        memory encoder mixes the rows of a batch (non_overlap_masks_for_mem_enc) tracks every
        clip alone.
        """
        if not len(frames) == len(prompts) == len(sources):
            raise ValueError(f"track_batch needs one prompt and one source per clip: {len(frames)} clips, {len(prompts)} prompts, {len(sources)} sources")
        for i, f in enumerate(frames):
            _check_frames(f, f"clip {i}: ")
        results: list[TrackResult | None] = [None] * len(frames)
        with torch.inference_mode(), self._autocast():
            for rows in self._groups(frames):
                group = self._track_group([frames[i] for i in rows], [prompts[i] for i in rows], [sources[i] for i in rows])
                for i, result in zip(rows, group):
                    results[i] = result
        return results  # type: ignore[return-value]

    # -- internals ---------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype != torch.float32:
            return torch.autocast(self.model.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def _groups(self, frames: list[torch.Tensor]) -> list[list[int]]:
        """Indices of the clips that can run in lockstep: one shape (F, H, W), in input order."""
        if getattr(self.model, "non_overlap_masks_for_mem_enc", False):
            return [[i] for i in range(len(frames))]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(tuple(f.shape[:3]), []).append(i)
        return list(groups.values())

    def _track_group(self, clips: list[torch.Tensor], prompts: list[Prompt | None], sources: list[str]) -> list[TrackResult]:
        """B clips of one shape [F, H, W, 3], both passes in lockstep."""
        b = len(clips)
        n, h, w = int(clips[0].shape[0]), int(clips[0].shape[1]), int(clips[0].shape[2])
        t0 = time.perf_counter()
        enc = encode_clips(self.model, clips, self.image_batch)  # F FrameFeatures of B rows
        self._sync()
        t1 = time.perf_counter()
        prompts = [self._resolve_prompt(p, s, enc[0] if b == 1 else enc[0].rows([i]), (h, w)) for i, (p, s) in enumerate(zip(prompts, sources))]
        fwd = self._run_pass(enc, prompts, start=0, reverse=False, frame_hw=(h, w))
        self._sync()
        t2 = time.perf_counter()
        last_masks = [out.masks[n - 1].numpy() for out in fwd]
        back_prompts = [Prompt(source=p.source, mask=m) for p, m in zip(prompts, last_masks)]
        for i, m in enumerate(last_masks):
            if not m.any():
                logger.warning("forward pass lost the subject on the last frame%s: backward pass prompted with an empty mask", f" (clip {i} of {b})" if b > 1 else "")
        bwd = self._run_pass(enc, back_prompts, start=n - 1, reverse=True, frame_hw=(h, w))
        self._sync()
        t3 = time.perf_counter()
        results = []
        for i in range(b):
            f, r = fwd[i], bwd[i]
            presence_fwd = torch.stack(f.presence).float().cpu()
            results.append(TrackResult(
                fwd=torch.stack(f.feats),
                bwd=torch.stack(r.feats),
                masks_fwd=torch.stack(f.masks),
                masks_bwd=torch.stack(r.masks),
                presence_fwd=presence_fwd,
                presence_bwd=torch.stack(r.presence).float().cpu(),
                object_score=float(presence_fwd.mean()),
                prompt=prompts[i],
                backward_prompt=mask_summary(last_masks[i]),
                feature=self.feature,
                stats={
                    "frames": n,
                    "clip_batch": b,  # clips tracked in lockstep; the times below are the batch's / b
                    "encode_s": (t1 - t0) / b,
                    "forward_s": (t2 - t1) / b,
                    "backward_s": (t3 - t2) / b,
                    "peak_maskmem_frames": max(f.peak_maskmem_frames, r.peak_maskmem_frames),
                    "peak_ptr_frames": max(f.peak_ptr_frames, r.peak_ptr_frames),
                },
            ))  # fmt: skip
        return results

    def _resolve_prompt(self, prompt: Prompt | None, source: str, feats0: FrameFeatures, hw: tuple[int, int]) -> Prompt:
        if prompt is not None:
            return prompt
        if source == "center":
            return center_prompt(*hw)
        if source not in ("auto", "manifest"):
            raise ValueError(f"prompt_source must be manifest, auto or center, got {source!r}")
        if source == "manifest":
            logger.info("no manifest prompt for this clip: using the auto prompt")
        found, _ = auto_prompt(
            self.model, features=feats0, frame_hw=hw, grid=self.auto_grid, mask_threshold=self.mask_threshold
        )
        return found

    def _run_pass(
        self, enc: list[FrameFeatures], prompts: list[Prompt], start: int, reverse: bool, frame_hw: tuple[int, int]
    ) -> list[_PassOutput]:
        """One direction for B clips in lockstep, prompted on `start`, then every frame towards
        the clip end it faces. One state serves all B: every entry holds B rows, and since the
        clips share their length and frame index, memory attention selects the same frames
        for every row (its per-row result is that of a one-clip state)."""
        n, b = len(enc), len(prompts)
        outs = [_PassOutput([None] * n, [None] * n, [None] * n) for _ in range(b)]
        state: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        order = range(start, -1, -1) if reverse else range(start, n)
        for t in order:
            if t == start:
                entry, capture = self._prompted_step(enc[t], t, prompts, state, n, frame_hw)
                state["cond_frame_outputs"][t] = entry
            else:
                entry, capture = self._tracked_step(enc[t], t, state, n, reverse)
                state["non_cond_frame_outputs"][t] = entry
            self._record(outs, t, capture, frame_hw)
            peak_mem, peak_ptr = _count(state, "maskmem_features"), _count(state, "obj_ptr")
            for out in outs:
                out.peak_maskmem_frames = max(out.peak_maskmem_frames, peak_mem)
                out.peak_ptr_frames = max(out.peak_ptr_frames, peak_ptr)
            self._prune(state, next_frame=t - 1 if reverse else t + 1, reverse=reverse)
        return outs

    def _prompted_step(
        self, feat: FrameFeatures, t: int, prompts: list[Prompt], state: dict, n: int, frame_hw: tuple[int, int]
    ) -> tuple[dict, dict]:
        """The prompted frame, as stock does it: add_new_* (SAM heads, no memory encoder), then
        propagate_in_video_preflight re-encodes the memory from the low-res mask upsampled to
        image_size, treating it as a click mask (binarised when the config says so).

        SAM2 takes one prompt kind per call (a mask goes through `_use_mask_as_output`, points
        through the prompt encoder, whose token count and multimask choice depend on the number
        of points), so the B clips' prompts run in groups of one kind and point count; the
        memory encoder then runs on all B rows at once.
        """
        inputs = [p.model_inputs(frame_hw, self.model.image_size, self.model.device) for p in prompts]
        kinds: dict[tuple, list[int]] = {}
        for i, (points, mask) in enumerate(inputs):
            kinds.setdefault(("mask",) if mask is not None else ("points", int(points["point_labels"].shape[1])), []).append(i)
        parts, rows_done = [], []
        for rows in kinds.values():
            sub = feat if len(rows) == len(prompts) else feat.rows(rows)
            points = inputs[rows[0]][0]
            if points is not None and len(rows) > 1:
                points = {k: torch.cat([inputs[i][0][k] for i in rows]) for k in ("point_coords", "point_labels")}
            mask = inputs[rows[0]][1]
            if mask is not None and len(rows) > 1:
                mask = torch.cat([inputs[i][1] for i in rows])
            # add_new_* runs with reverse=False on an initial conditioning frame
            _, sam, pix_feat = self._step(sub, t, True, points, mask, state, n, False, False)
            parts.append((sam[3], sam[6], sam[5], pix_feat))  # low-res mask, presence logit, pointer, feature
            rows_done += rows
        low_res, logits, obj_ptr, pix_feat = (_in_rows([p[k] for p in parts], rows_done) for k in range(4))
        high_res = F.interpolate(
            low_res, size=(self.model.image_size, self.model.image_size), mode="bilinear", align_corners=False
        )
        maskmem, pos = self.model._encode_new_memory(
            current_vision_feats=feat.vision_feats,
            feat_sizes=feat.feat_sizes,
            pred_masks_high_res=high_res,
            object_score_logits=logits,
            is_mask_from_pts=True,
        )
        current_out = {"maskmem_features": maskmem, "maskmem_pos_enc": pos, "obj_ptr": obj_ptr}
        return self._entry(current_out), self._capture(feat, current_out, low_res, logits, pix_feat)

    def _tracked_step(self, feat: FrameFeatures, t: int, state: dict, n: int, reverse: bool) -> tuple[dict, dict]:
        current_out, sam, pix_feat = self._step(feat, t, False, None, None, state, n, reverse, True)
        return self._entry(current_out), self._capture(feat, current_out, sam[3], sam[6], pix_feat)

    def _step(
        self,
        feat: FrameFeatures,
        t: int,
        is_init: bool,
        point_inputs: dict | None,
        mask_inputs: torch.Tensor | None,
        state: dict,
        n: int,
        reverse: bool,
        run_mem_encoder: bool,
    ) -> tuple[dict, tuple, torch.Tensor]:
        """SAM2Base.track_step split open: `_track_step` also returns pix_feat (the
        memory-conditioned feature, or the raw one on a mask-prompted frame), which
        track_step discards. Every tensor has the B rows of `feat`."""
        current_out, sam, _, pix_feat = self.model._track_step(
            t, is_init, feat.vision_feats, feat.vision_pos, feat.feat_sizes,
            point_inputs, mask_inputs, state, n, reverse, None,
        )  # fmt: skip
        _, _, _, low_res, high_res, obj_ptr, logits = sam
        current_out.update(pred_masks=low_res, pred_masks_high_res=high_res, obj_ptr=obj_ptr, object_score_logits=logits)
        if run_mem_encoder:
            self.model._encode_memory_in_output(
                feat.vision_feats, feat.feat_sizes, point_inputs, True, high_res, logits, current_out
            )
        return current_out, sam, pix_feat

    def _entry(self, current_out: dict) -> dict:
        """What memory attention reads later: memory (bf16-rounded, as stock stores it) and pointer.

        Stock stores maskmem_features as bfloat16 whatever the device. On CPU (no autocast)
        memory attention's weights are float32: a memory made only of bf16 frames (no object
        pointer) fails there with a dtype mismatch. So the bf16-rounded values are kept in the
        module dtype on CPU (the same numbers stock's torch.cat promotes to float32), and in
        bf16 under CUDA autocast (as stock).
        """
        maskmem = current_out["maskmem_features"].to(torch.bfloat16)
        if not torch.is_autocast_enabled(maskmem.device.type):
            maskmem = maskmem.to(self.model.maskmem_tpos_enc.dtype)
        return {
            "maskmem_features": maskmem,
            "maskmem_pos_enc": current_out["maskmem_pos_enc"],
            "obj_ptr": current_out["obj_ptr"],
        }

    def _capture(
        self, feat: FrameFeatures, current_out: dict, low_res: torch.Tensor, logits: torch.Tensor, pix_feat: torch.Tensor
    ) -> dict:
        """The per-frame outputs to keep, B rows each: the configured feature [B, C, Hf, Wf],
        low-res mask logits [B, 1, h, w], presence logit [B, 1]."""
        if self.feature == "maskmem":
            value = current_out["maskmem_features"].to(torch.bfloat16)
        elif self.feature == "memory_attention":
            value = pix_feat
        else:
            value = feat.backbone_maps()
        return {"feature": value, "low_res": low_res, "logit": logits}

    def _record(self, outs: list[_PassOutput], t: int, capture: dict, frame_hw: tuple[int, int]) -> None:
        """Move frame t's features (float32) and masks (bool, frame resolution) to the host now."""
        feats = _to_host(capture["feature"].float())
        mask = F.interpolate(capture["low_res"].float(), size=frame_hw, mode="bilinear", align_corners=False)
        masks = _to_host(mask[:, 0] > self.mask_threshold)
        presence = torch.sigmoid(capture["logit"].float())
        for i, out in enumerate(outs):
            out.feats[t] = feats[i]
            out.masks[t] = masks[i]
            out.presence[t] = presence[i].reshape(())

    def _prune(self, state: dict, next_frame: int, reverse: bool) -> None:
        """Drop what memory attention can no longer read when tracking `next_frame` and beyond.

        Pointers: SAM2 reads those of the last max_obj_ptrs_in_encoder - 1 frames. Memories: the
        frame just before, plus num_maskmem - 2 frames on the stride-r lattice
        (r = memory_temporal_stride_for_eval) before that; later frames only move that window on.
        """
        m = self.model
        ptr_reach = m.max_obj_ptrs_in_encoder - 1 if m.use_obj_ptrs_in_encoder else 0
        sign = -1 if reverse else 1
        non_cond = state["non_cond_frame_outputs"]
        for u, entry in list(non_cond.items()):
            keep = {"obj_ptr"} if (next_frame - u) * sign <= ptr_reach else set()
            if self._memory_needed(u, next_frame, reverse):
                keep |= {"maskmem_features", "maskmem_pos_enc"}
            if not keep:
                del non_cond[u]
            elif keep != set(entry):
                non_cond[u] = {k: entry[k] for k in keep if k in entry}

    def _memory_needed(self, u: int, next_frame: int, reverse: bool) -> bool:
        """Whether frame u's memory is read when tracking next_frame or any frame after it
        (mirrors the frame selection of SAM2Base._prepare_memory_conditioned_features)."""
        m, r = self.model, self.model.memory_temporal_stride_for_eval
        if m.num_maskmem < 2:
            return False
        if u == (next_frame + 1 if reverse else next_frame - 1):
            return True
        if m.num_maskmem < 3 or u % r:
            return False
        if reverse:
            return u <= -(-(next_frame + 2) // r) * r + (m.num_maskmem - 3) * r
        return u >= ((next_frame - 2) // r) * r - (m.num_maskmem - 3) * r


def _check_frames(frames: torch.Tensor, where: str = "") -> None:
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{where}frames must be uint8 [F, H, W, 3] with F >= 1, got {tuple(frames.shape)} {frames.dtype}")


def _in_rows(parts: list[torch.Tensor], rows: list[int]) -> torch.Tensor:
    """Per-group results (concatenated in the order of `rows`) back in clip order [B, ...]."""
    if len(parts) == 1:
        return parts[0]
    merged = torch.cat(parts)  # promotes a group in another dtype (exact: bf16 -> fp32)
    inverse = torch.empty(len(rows), dtype=torch.long)
    inverse[torch.tensor(rows)] = torch.arange(len(rows))
    return merged.index_select(0, inverse.to(merged.device))


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """A CPU copy of x. From a GPU: an asynchronous copy into pinned memory, so the tracking
    loop never waits on it (the tracker synchronises before reading results)."""
    if x.device.type != "cuda":
        return x.clone()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    return host


def _count(state: dict, key: str) -> int:
    """Frames in a tracking state holding `key` (conditioning and non-conditioning)."""
    return sum(key in out for outs in state.values() for out in outs.values())
