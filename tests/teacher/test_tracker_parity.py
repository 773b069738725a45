"""BidirectionalTracker == the stock SAM2VideoPredictor used the documented way, for every feature kind.

Stock side (same model object, random tiny weights, seed 5: it keeps a non-empty subject):
frames written as a JPEG folder (<int>.jpg), `init_state(video_path=folder)`,
`add_new_points_or_box` / `add_new_mask` on frame 0, `propagate_in_video`; then a FRESH state,
`add_new_mask` on the last frame with the forward mask (`logits > 0`), and
`propagate_in_video(reverse=True, start_frame_idx=last)`. Stock never returns features, so they
are observed, not replaced: maskmem is read from its state (`output_dict_per_obj`), the
memory-conditioned feature is the 4th return value of `_track_step` and the backbone feature
comes from `_get_image_feature`, both through pass-through wrappers set on the instance.
Our tracker gets the JPEGs decoded back to uint8 (identical pixels); the frames are 64 x 64 =
image_size, so no resizing happens on either side (a non-square test uses per-frame uniform
colours, which both resamplers keep exact).

About the CPU bf16 fault (platform.md): stock stores maskmem_features as bfloat16. Memory
attention concatenates them with the float32 object pointers; torch.cat promotes to float32,
so a fresh-state reverse pass (the documented way) runs on CPU. It fails only when the memory
holds no object pointer (then everything is bf16 and meets float32 weights): e.g. a reverse pass
in the forward pass's state, or a config without object pointers. The stock parity runs need no
fix; `test_cpu_bf16_fault_without_object_pointers` shows the fault and compares against stock
with the cast platform.md names (memory inputs cast to the module dtype), the only change.
Tolerances: maskmem is stored in bf16 by both sides, so a value within float noise of a bf16
rounding boundary can land one bf16 step away; everything else must agree to 1e-4 of its scale.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.teacher.prompts import Prompt
from stages.teacher.sam2_model import build_sam2
from stages.teacher.tracker import FEATURE_KINDS, BidirectionalTracker

S = 64
N = 9
PROMPTS = {
    "points": Prompt("manifest", points=[[25.0, 30.0]], labels=[1]),
    "box": Prompt("manifest", box=[10.0, 12.0, 40.0, 50.0]),
    "mask": Prompt("manifest", mask=np.mgrid[:S, :S][1] < 30),
}


def write_clip(folder: Path, n: int, h: int = S, w: int = S, uniform: bool = False) -> torch.Tensor:
    """A disc moving right over a colour ramp (or uniform per-frame colours) as <t>.jpg; returns
    the JPEGs decoded back to uint8 [n, h, w, 3], the exact pixels stock will read."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:h, :w]
    for t in range(n):
        if uniform:
            img = np.broadcast_to(np.array([40 + 15 * t, 200 - 9 * t, 90 + 5 * t], np.float32), (h, w, 3)).copy()
        else:
            img = np.stack([xx * 3.0, yy * 3.0, np.full_like(xx, 80)], -1).astype(np.float32)
            img[(xx - 18 - 2 * t) ** 2 + (yy - 30) ** 2 < 110] = (250, 40, 40)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{t}.jpg")
    return torch.from_numpy(np.stack([np.array(Image.open(folder / f"{t}.jpg").convert("RGB")) for t in range(n)]))


@contextlib.contextmanager
def observed(net, rec: dict):
    """Pass-through wrappers on the instance that record what stock computes, then removed."""
    track_step, image_feature, forward_image = net._track_step, net._get_image_feature, net.forward_image

    def _track_step(*args, **kwargs):
        out = track_step(*args, **kwargs)
        rec["memory_attention"][args[0]] = out[3][0].float().clone()
        return out

    def _get_image_feature(state, frame_idx, batch_size):
        out = image_feature(state, frame_idx, batch_size)
        h, w = out[4][-1]
        rec["backbone"][frame_idx] = out[2][-1][:, 0].T.reshape(-1, h, w).float().clone()
        return out

    def _forward_image(images):
        rec["encoded_frames"] += images.shape[0]
        return forward_image(images)

    net._track_step, net._get_image_feature, net.forward_image = _track_step, _get_image_feature, _forward_image
    try:
        yield
    finally:
        del net._track_step, net._get_image_feature, net.forward_image


def stock_pass(net, folder: Path, n: int, prompt: Prompt, frame: int, reverse: bool) -> dict:
    rec = {"memory_attention": {}, "backbone": {}, "encoded_frames": 0}
    with observed(net, rec):
        state = net.init_state(video_path=str(folder))
        if prompt.mask is not None:
            net.add_new_mask(state, frame, 1, prompt.mask)
        else:
            net.add_new_points_or_box(state, frame, 1, points=prompt.points, labels=prompt.labels, box=prompt.box)
        it = net.propagate_in_video(state, start_frame_idx=frame, reverse=reverse)
        masks = {t: (logits[0, 0] > 0.0).cpu() for t, _, logits in it}
    outs = state["output_dict_per_obj"][0]
    merged = {**outs["non_cond_frame_outputs"], **outs["cond_frame_outputs"]}
    rec["stored_dtype"] = merged[frame]["maskmem_features"].dtype
    rec["maskmem"] = {t: o["maskmem_features"][0].float() for t, o in merged.items()}
    rec["masks"] = masks
    return {k: torch.stack([v[t] for t in range(n)]) if isinstance(v, dict) else v for k, v in rec.items()}


def stock_bidirectional(net, folder: Path, n: int, prompt: Prompt) -> dict:
    fwd = stock_pass(net, folder, n, prompt, 0, reverse=False)
    back = Prompt("manifest", mask=fwd["masks"][n - 1].numpy())
    return {"fwd": fwd, "bwd": stock_pass(net, folder, n, back, n - 1, reverse=True)}


def assert_feature_match(ours: torch.Tensor, ref: torch.Tensor, feature: str) -> None:
    assert ours.dtype == torch.float32 and ours.device.type == "cpu" and ours.shape == ref.shape
    scale = float(ref.abs().max())
    if feature == "maskmem":  # both sides round to bf16: at most one bf16 step apart, nearly all equal
        torch.testing.assert_close(ours, ref, rtol=2**-7, atol=1e-4 * scale)
        assert (ours == ref).float().mean() > 0.99
    else:
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * scale)


def assert_masks_match(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.bool and ours.shape == ref.shape
    assert (ours != ref).float().mean() <= 1e-3


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return folder, write_clip(folder, N)


@pytest.fixture(scope="module")
def stock_refs(net, clip):
    folder, _ = clip
    return {kind: stock_bidirectional(net, folder, N, p) for kind, p in PROMPTS.items()}


@pytest.mark.parametrize("feature", FEATURE_KINDS)
@pytest.mark.parametrize("kind", list(PROMPTS))
def test_features_and_masks_match_stock(net, clip, stock_refs, kind, feature):
    _, frames = clip
    ref = stock_refs[kind]
    assert ref["fwd"]["stored_dtype"] == torch.bfloat16  # what the bf16 rounding reproduces
    result = BidirectionalTracker(net, feature=feature, image_batch=4).track(frames, PROMPTS[kind])
    assert result.prompt is PROMPTS[kind]
    for direction, ours, masks in (("fwd", result.fwd, result.masks_fwd), ("bwd", result.bwd, result.masks_bwd)):
        assert_feature_match(ours, ref[direction][feature], feature)
        assert_masks_match(masks, ref[direction]["masks"])
        assert ref[direction]["masks"].any()  # a subject is tracked: the comparison is not of empties
    assert result.fwd.shape == (N, net.mem_dim if feature == "maskmem" else net.hidden_dim, S // 16, S // 16)
    assert result.backward_prompt_area == int(ref["fwd"]["masks"][-1].sum())


def test_image_encoder_runs_once_per_frame(net, clip, stock_refs):
    """Ours: N frames in ceil(N / image_batch) calls, the auto prompt included. Stock: 2N + 1."""
    _, frames = clip
    calls: list[int] = []
    forward_image = net.forward_image
    net.forward_image = lambda images: calls.append(images.shape[0]) or forward_image(images)
    try:
        result = BidirectionalTracker(net, image_batch=4).track(frames, None, "auto")
    finally:
        del net.forward_image
    assert result.prompt.source == "auto"
    assert sum(calls) == N and len(calls) == math.ceil(N / 4)
    ref = stock_refs["points"]
    assert ref["fwd"]["encoded_frames"] + ref["bwd"]["encoded_frames"] == 2 * N + 1


@pytest.mark.parametrize("overrides", [
    {},  # tiny: num_maskmem 3, 16 object pointers
    {"num_maskmem": 4, "memory_temporal_stride_for_eval": 2, "max_obj_ptrs_in_encoder": 5},
])  # fmt: skip
def test_state_stays_bounded_and_pruning_changes_nothing(tmp_path, overrides):
    """25 frames: our state holds <= num_maskmem + 1 memories and <= max_obj_ptrs + 1 pointers
    (stock holds all 25), and the dropped entries were never needed: features still equal stock."""
    n = 25
    model = build_sam2("tiny", seed=5, overrides=overrides)
    frames = write_clip(tmp_path, n)
    result = BidirectionalTracker(model, feature="maskmem", image_batch=8).track(frames, PROMPTS["points"])
    assert result.stats["peak_maskmem_frames"] <= model.num_maskmem + 1
    assert result.stats["peak_ptr_frames"] <= model.max_obj_ptrs_in_encoder + 1
    ref = stock_bidirectional(model, tmp_path, n, PROMPTS["points"])
    for direction, ours in (("fwd", result.fwd), ("bwd", result.bwd)):
        assert len(ref[direction]["maskmem"]) == n
        assert_feature_match(ours, ref[direction]["maskmem"], "maskmem")
    assert_masks_match(result.masks_bwd, ref["bwd"]["masks"])


def test_non_square_frames_prompt_and_masks_at_frame_resolution(net, tmp_path):
    """48x80 frames: prompts normalised by (W, H), the backward mask resized to image_size and
    masks upsampled to frame size, all as stock does (uniform frames resize identically)."""
    frames = write_clip(tmp_path, 5, h=48, w=80, uniform=True)
    prompt = Prompt("manifest", box=[8.0, 6.0, 50.0, 40.0])
    result = BidirectionalTracker(net, feature="memory_attention").track(frames, prompt)
    ref = stock_bidirectional(net, tmp_path, 5, prompt)
    assert result.masks_fwd.shape == (5, 48, 80)
    for direction, ours, masks in (("fwd", result.fwd, result.masks_fwd), ("bwd", result.bwd, result.masks_bwd)):
        assert_feature_match(ours, ref[direction]["memory_attention"], "memory_attention")
        assert_masks_match(masks, ref[direction]["masks"])


def test_cpu_bf16_fault_without_object_pointers(tmp_path):
    """A config without object pointers: stock's all-bf16 memory fails on CPU; ours runs and
    equals stock once stock's memory inputs are cast to the module dtype."""
    model = build_sam2("tiny", seed=5, overrides={
        "use_obj_ptrs_in_encoder": False, "fixed_no_obj_ptr": False, "pred_obj_scores": False,
        "pred_obj_scores_mlp": False,
    })  # fmt: skip
    frames = write_clip(tmp_path, 5)
    with pytest.raises(RuntimeError, match="same dtype"):
        stock_bidirectional(model, tmp_path, 5, PROMPTS["box"])
    result = BidirectionalTracker(model, feature="memory_attention").track(frames, PROMPTS["box"])
    attention = model.memory_attention.forward

    def cast_memory(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        dtype = model.memory_attention.norm.weight.dtype
        return attention(curr, memory.to(dtype), curr_pos, memory_pos.to(dtype), num_obj_ptr_tokens)

    model.memory_attention.forward = cast_memory
    try:
        ref = stock_bidirectional(model, tmp_path, 5, PROMPTS["box"])
    finally:
        del model.memory_attention.forward
    assert_feature_match(result.fwd, ref["fwd"]["memory_attention"], "memory_attention")
    assert_feature_match(result.bwd, ref["bwd"]["memory_attention"], "memory_attention")


def test_result_record_prompt_sources_and_input_checks(net, clip):
    _, frames = clip
    tracker = BidirectionalTracker(net, feature="backbone")
    result = tracker.track(frames[:3], None, "center")
    assert result.prompt.source == "center" and result.prompt.points == [[32.0, 32.0]]
    assert 0.0 <= result.object_score <= 1.0
    assert result.object_score == pytest.approx(float(result.presence_fwd.mean()))
    rec = json.loads(json.dumps(result.to_record()))
    assert rec["feature_shape"] == [3, 32, 4, 4] and rec["prompt"]["kind"] == "points"
    assert set(rec["stats"]) >= {"encode_s", "forward_s", "backward_s", "peak_maskmem_frames"}
    one = tracker.track(frames[:1], PROMPTS["box"])  # a single frame: both passes are the prompted frame
    assert one.fwd.shape == one.bwd.shape == (1, 32, 4, 4)
    assert tracker.track(frames[:2], None, "manifest").prompt.source == "auto"  # no manifest prompt
    with pytest.raises(ValueError, match="uint8"):
        tracker.track(frames.float(), PROMPTS["box"])
    with pytest.raises(ValueError, match="prompt_source"):
        tracker.track(frames[:2], None, "random")
    with pytest.raises(ValueError, match="feature"):
        BidirectionalTracker(net, feature="pixels")


# -- track_batch: B clips in lockstep == each clip tracked alone (which equals stock, above) -------


def assert_same_result(ours, ref, feature: str) -> None:
    """A batched result against the one-clip tracker's: features to 1e-4 (maskmem: one bf16
    step at most), masks, presence and the backward prompt."""
    for a, b in ((ours.fwd, ref.fwd), (ours.bwd, ref.bwd)):
        assert_feature_match(a, b, feature)
    assert_masks_match(ours.masks_fwd, ref.masks_fwd)
    assert_masks_match(ours.masks_bwd, ref.masks_bwd)
    torch.testing.assert_close(ours.presence_fwd, ref.presence_fwd, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.presence_bwd, ref.presence_bwd, rtol=0, atol=1e-4)
    assert ours.prompt.kind == ref.prompt.kind and ours.backward_prompt == ref.backward_prompt


@pytest.fixture(scope="module")
def clips(clip):
    """Three clips of one shape: the parity clip, mirrored, and played backwards."""
    _, frames = clip
    return [frames, frames.flip(2).contiguous(), frames.flip(0).contiguous()]


@pytest.mark.parametrize("feature", FEATURE_KINDS)
@pytest.mark.parametrize("kinds", [("points", "points", "points"), ("points", "box", "mask"), ("mask", "points", "mask")])
def test_track_batch_equals_one_clip_tracks(net, clip, clips, stock_refs, kinds, feature):
    """B=3 in lockstep, one prompt kind or mixed kinds (one SAM call per kind on the prompted
    frame): each clip's result equals tracking it alone, and clip 0 still equals stock."""
    tracker = BidirectionalTracker(net, feature=feature, image_batch=4)
    prompts = [PROMPTS[k] for k in kinds]
    batch = tracker.track_batch(clips, prompts, ["manifest"] * 3)
    for c, p, result in zip(clips, prompts, batch):
        assert result.prompt is p and result.stats["clip_batch"] == 3
        assert_same_result(result, tracker.track(c, p), feature)
    ref = stock_refs[kinds[0]]
    assert_feature_match(batch[0].fwd, ref["fwd"][feature], feature)
    assert_feature_match(batch[0].bwd, ref["bwd"][feature], feature)
    assert_masks_match(batch[0].masks_bwd, ref["bwd"]["masks"])


def test_track_batch_of_two_is_two_tracks(net, clips):
    """track_batch([a, b]) == [track(a), track(b)], prompts resolved per clip (auto / center),
    the image encoder once per frame across both clips, state bounded per clip as alone."""
    tracker = BidirectionalTracker(net, feature="memory_attention", image_batch=4)
    calls: list[int] = []
    forward_image = net.forward_image
    net.forward_image = lambda images: calls.append(images.shape[0]) or forward_image(images)
    try:
        batch = tracker.track_batch(clips[:2], [None, None], ["auto", "center"])
    finally:
        del net.forward_image
    assert sum(calls) == 2 * N and len(calls) == math.ceil(2 * N / 4)  # a call may span both clips
    alone = [tracker.track(clips[0], None, "auto"), tracker.track(clips[1], None, "center")]
    assert [r.prompt.source for r in batch] == ["auto", "center"]
    for ours, ref in zip(batch, alone):
        assert ours.prompt.to_record() == ref.prompt.to_record()
        assert_same_result(ours, ref, "memory_attention")
        assert ours.stats["peak_maskmem_frames"] == ref.stats["peak_maskmem_frames"] <= net.num_maskmem + 1
        assert ours.stats["peak_ptr_frames"] == ref.stats["peak_ptr_frames"]


def test_track_batch_groups_clips_of_other_shapes(net, clips, tmp_path):
    """Clips of other lengths or sizes run in their own lockstep groups; results keep input order."""
    other = write_clip(tmp_path, 5, h=48, w=80, uniform=True)
    frames = [clips[0], clips[1][:5], clips[2], other, clips[1][:5]]
    prompts = [PROMPTS["box"], PROMPTS["points"], PROMPTS["points"], Prompt("manifest", box=[8.0, 6.0, 50.0, 40.0]), PROMPTS["box"]]
    tracker = BidirectionalTracker(net, feature="maskmem", image_batch=8)
    batch = tracker.track_batch(frames, prompts, ["manifest"] * 5)
    assert [r.stats["clip_batch"] for r in batch] == [2, 2, 2, 1, 2]
    for f, p, result in zip(frames, prompts, batch):
        assert result.fwd.shape[0] == f.shape[0] and result.masks_fwd.shape[1:] == f.shape[1:3]
        assert_same_result(result, tracker.track(f, p), "maskmem")


def test_track_batch_input_checks(net, clips):
    tracker = BidirectionalTracker(net)
    with pytest.raises(ValueError, match="one prompt and one source per clip"):
        tracker.track_batch(clips[:2], [None], ["auto", "auto"])
    with pytest.raises(ValueError, match="clip 1: frames must be uint8"):
        tracker.track_batch([clips[0], clips[1].float()], [None, None], ["auto", "auto"])
    assert tracker.track_batch([], [], []) == []


def test_a_half_precision_dtype_autocasts_on_any_device_within_its_noise(net, clips):
    """dtype is autocast's dtype wherever the model is (the producer passes float32 on CPU): bf16 autocast on CPU
    runs the same SAM2 steps, so features stay within bf16 noise of float32 and the masks nearly equal."""
    ref = BidirectionalTracker(net, feature="memory_attention").track(clips[0], PROMPTS["box"])
    half = BidirectionalTracker(net, feature="memory_attention", dtype=torch.bfloat16).track(clips[0], PROMPTS["box"])
    assert half.fwd.dtype == torch.float32  # captures come back float32 whatever the compute dtype
    for a, b in ((half.fwd, ref.fwd), (half.bwd, ref.bwd)):
        rel = float((a - b).norm() / b.norm())
        assert 0 < rel < 0.03, rel  # > 0: bf16 really ran
    assert float((half.masks_fwd & ref.masks_fwd).sum() / (half.masks_fwd | ref.masks_fwd).sum().clamp(min=1)) > 0.95
