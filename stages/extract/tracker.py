"""Bidirectional SAM2 tracking of one subject through a clip, capturing per-frame teacher features.

Forward pass: prompted on frame 0, tracked 0 -> F-1. Backward pass: prompted on frame F-1 with
the mask the forward pass predicted there, tracked F-1 -> 0, in its own state (tracking in
reverse inside the forward state would overwrite the forward outputs). Both passes reproduce
what `SAM2VideoPredictor` computes when used the documented way (JPEG folder, `init_state`,
`add_new_points_or_box` / `add_new_mask`, `propagate_in_video`; a fresh state for the reverse
pass): tests/test_tracker_parity.py checks features and masks against it. Differences, by design:

- frames come in as a uint8 tensor (no JPEG round trip, no float32 copy of the whole clip);
- the image encoder runs once per frame, `image_batch` frames per call, and its output serves
  both passes (stock encodes one frame at a time and again for the reverse pass);
- the tracking state holds only what memory attention can read (the prompted frame, the last
  num_maskmem-1 memories, object pointers of the last max_obj_ptrs_in_encoder-1 frames), so it
  stays flat in clip length (stock keeps every frame's outputs);
- the features SAM2 never returns (memory-encoder output, memory-attention output, backbone)
  are captured per frame, moved to CPU float32 as they are produced.

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

from stages.extract.prompts import Prompt, auto_prompt, center_prompt, mask_summary
from stages.extract.sam2_model import FrameFeatures, SAM2VideoPredictor, encode_frames

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

    model: a built SAM2VideoPredictor (stages.extract.sam2_model.build_sam2), eval and frozen.
    feature: what to capture per frame: "maskmem" (memory-encoder output, mem_dim channels),
        "memory_attention" (the memory-conditioned feature SAM2's mask head reads, hidden_dim;
        on a prompted frame it is what SAM2 uses there: backbone + no-memory embedding for a
        click/box prompt, the raw backbone feature for a mask prompt, whose mask SAM2 takes as
        its output without memory attention), "backbone" (the stride-16 image feature, hidden_dim).
    image_batch: frames per image-encoder call.
    dtype: autocast dtype on CUDA (float32 disables autocast); CPU always runs float32.
    mask_threshold: logit threshold of the output masks (and of auto prompts).
    auto_grid: the auto prompt's click lattice is auto_grid x auto_grid.
    """

    def __init__(
        self,
        model: SAM2VideoPredictor,
        feature: FeatureKind = "maskmem",
        image_batch: int = 8,
        dtype: torch.dtype = torch.bfloat16,
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
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"frames must be uint8 [F, H, W, 3] with F >= 1, got {tuple(frames.shape)} {frames.dtype}")
        with torch.inference_mode(), self._autocast():
            return self._track(frames, prompt, prompt_source)

    # -- internals ---------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        device = self.model.device
        if device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def _track(self, frames: torch.Tensor, prompt: Prompt | None, prompt_source: str) -> TrackResult:
        n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
        t0 = time.perf_counter()
        enc = encode_frames(self.model, frames, self.image_batch)
        self._sync()
        t1 = time.perf_counter()
        prompt = self._resolve_prompt(prompt, prompt_source, enc[0], (h, w))
        fwd = self._run_pass(enc, prompt, start=0, reverse=False, frame_hw=(h, w))
        self._sync()
        t2 = time.perf_counter()
        last_mask = fwd.masks[n - 1].numpy()
        back_prompt = Prompt(source=prompt.source, mask=last_mask)
        if not last_mask.any():
            logger.warning("forward pass lost the subject on the last frame: backward pass prompted with an empty mask")
        bwd = self._run_pass(enc, back_prompt, start=n - 1, reverse=True, frame_hw=(h, w))
        self._sync()
        t3 = time.perf_counter()
        presence_fwd = torch.stack(fwd.presence).float().cpu()
        return TrackResult(
            fwd=torch.stack(fwd.feats),
            bwd=torch.stack(bwd.feats),
            masks_fwd=torch.stack(fwd.masks),
            masks_bwd=torch.stack(bwd.masks),
            presence_fwd=presence_fwd,
            presence_bwd=torch.stack(bwd.presence).float().cpu(),
            object_score=float(presence_fwd.mean()),
            prompt=prompt,
            backward_prompt=mask_summary(last_mask),
            feature=self.feature,
            stats={
                "frames": n,
                "encode_s": t1 - t0,
                "forward_s": t2 - t1,
                "backward_s": t3 - t2,
                "peak_maskmem_frames": max(fwd.peak_maskmem_frames, bwd.peak_maskmem_frames),
                "peak_ptr_frames": max(fwd.peak_ptr_frames, bwd.peak_ptr_frames),
            },
        )

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
        self, enc: list[FrameFeatures], prompt: Prompt, start: int, reverse: bool, frame_hw: tuple[int, int]
    ) -> _PassOutput:
        """One direction, prompted on `start`, then every frame towards the clip end it faces."""
        n = len(enc)
        out = _PassOutput([None] * n, [None] * n, [None] * n)
        state: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        order = range(start, -1, -1) if reverse else range(start, n)
        for t in order:
            if t == start:
                entry, capture = self._prompted_step(enc[t], t, prompt, state, n, frame_hw)
                state["cond_frame_outputs"][t] = entry
            else:
                entry, capture = self._tracked_step(enc[t], t, state, n, reverse)
                state["non_cond_frame_outputs"][t] = entry
            self._record(out, t, capture, frame_hw)
            out.peak_maskmem_frames = max(out.peak_maskmem_frames, _count(state, "maskmem_features"))
            out.peak_ptr_frames = max(out.peak_ptr_frames, _count(state, "obj_ptr"))
            self._prune(state, next_frame=t - 1 if reverse else t + 1, reverse=reverse)
        return out

    def _prompted_step(
        self, feat: FrameFeatures, t: int, prompt: Prompt, state: dict, n: int, frame_hw: tuple[int, int]
    ) -> tuple[dict, dict]:
        """The prompted frame, as stock does it: add_new_* (SAM heads, no memory encoder), then
        propagate_in_video_preflight re-encodes the memory from the low-res mask upsampled to
        image_size, treating it as a click mask (binarised when the config says so)."""
        point_inputs, mask_inputs = prompt.model_inputs(frame_hw, self.model.image_size, self.model.device)
        # add_new_* runs with reverse=False on an initial conditioning frame
        current_out, sam, pix_feat = self._step(feat, t, True, point_inputs, mask_inputs, state, n, False, False)
        low_res, logits = sam[3], sam[6]
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
        current_out["maskmem_features"], current_out["maskmem_pos_enc"] = maskmem, pos
        return self._entry(current_out), self._capture(feat, current_out, sam, pix_feat)

    def _tracked_step(self, feat: FrameFeatures, t: int, state: dict, n: int, reverse: bool) -> tuple[dict, dict]:
        current_out, sam, pix_feat = self._step(feat, t, False, None, None, state, n, reverse, True)
        return self._entry(current_out), self._capture(feat, current_out, sam, pix_feat)

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
        track_step discards."""
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

    def _capture(self, feat: FrameFeatures, current_out: dict, sam: tuple, pix_feat: torch.Tensor) -> dict:
        """The per-frame outputs to keep: the configured feature, mask logits, presence logit."""
        if self.feature == "maskmem":
            value = current_out["maskmem_features"].to(torch.bfloat16)[0]
        elif self.feature == "memory_attention":
            value = pix_feat[0]
        else:
            value = feat.backbone_map()
        return {"feature": value, "low_res": sam[3], "logit": sam[6]}

    def _record(self, out: _PassOutput, t: int, capture: dict, frame_hw: tuple[int, int]) -> None:
        """Move frame t's feature (float32) and mask (bool, frame resolution) to the host now."""
        out.feats[t] = _to_host(capture["feature"].float())
        mask = F.interpolate(capture["low_res"].float(), size=frame_hw, mode="bilinear", align_corners=False)
        out.masks[t] = _to_host(mask[0, 0] > self.mask_threshold)
        out.presence[t] = torch.sigmoid(capture["logit"].float()).reshape(())

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
