"""The teacher column's per-clip quality record: hand-made tracks give the scalars by hand, and the
real producer writes it with exactly the keys data.filter and `inspect --teacher-stats` read."""

from __future__ import annotations

import json

import pytest
import torch

from stages.teacher.prompts import Prompt
from stages.extract.columns.teacher import QUALITY_KEYS, teacher_quality
from stages.teacher.tracker import TrackResult


def track(masks_fwd: torch.Tensor, masks_bwd: torch.Tensor, presence_fwd, presence_bwd) -> TrackResult:
    frames = masks_fwd.shape[0]
    return TrackResult(
        fwd=torch.zeros(frames, 4, 2, 2),
        bwd=torch.zeros(frames, 4, 2, 2),
        masks_fwd=masks_fwd,
        masks_bwd=masks_bwd,
        presence_fwd=torch.tensor(presence_fwd, dtype=torch.float32),
        presence_bwd=torch.tensor(presence_bwd, dtype=torch.float32),
        object_score=float(sum(presence_fwd) / frames),
        prompt=Prompt("manifest", box=[0, 0, 2, 2]),
        backward_prompt={"mask_area": 4},
        feature="maskmem",
    )


def test_quality_of_a_hand_made_track():
    """3 frames of 4x4 (16 pixels). fwd: 4, 8, 0 pixels; bwd: 4 (same), 4 (inside fwd's 8), 0.
    IoU per frame: 1, 4/8, 1 (both empty) -> mean 5/6."""
    fwd = torch.zeros(3, 4, 4, dtype=torch.bool)
    bwd = torch.zeros(3, 4, 4, dtype=torch.bool)
    fwd[0, :2, :2] = True
    bwd[0, :2, :2] = True
    fwd[1, :2, :] = True
    bwd[1, :1, :] = True
    q = teacher_quality(track(fwd, bwd, [0.9, 0.8, 0.1], [0.7, 0.6, 0.5]))
    assert tuple(q) == QUALITY_KEYS
    assert q["object_score_fwd"] == pytest.approx(0.6)
    assert q["object_score_bwd"] == pytest.approx(0.6)
    assert q["presence_min"] == pytest.approx(0.1)
    assert q["area_fwd_min"] == 0.0 and q["area_bwd_min"] == 0.0
    assert q["area_fwd_mean"] == pytest.approx((4 + 8 + 0) / 48)
    assert q["area_bwd_mean"] == pytest.approx((4 + 4 + 0) / 48)
    assert q["iou_fwd_bwd"] == pytest.approx(5 / 6)
    assert all(type(v) is float for v in q.values())
    json.dumps(q)  # goes into the JSON commit record


def test_disjoint_masks_have_iou_zero_and_full_masks_area_one():
    fwd = torch.zeros(2, 2, 2, dtype=torch.bool)
    fwd[:, 0] = True
    q = teacher_quality(track(fwd, ~fwd, [1.0, 1.0], [1.0, 1.0]))
    assert q["iou_fwd_bwd"] == 0.0 and q["area_fwd_min"] == 0.5 and q["area_bwd_mean"] == 0.5
    full = torch.ones(2, 2, 2, dtype=torch.bool)
    q = teacher_quality(track(full, full, [1.0, 1.0], [1.0, 1.0]))
    assert q["iou_fwd_bwd"] == 1.0 and q["area_fwd_min"] == 1.0 and q["presence_min"] == 1.0
