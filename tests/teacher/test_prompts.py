"""Prompts: validation, records, SAM2 input format (checked against the stock predictor), auto prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stages.teacher.prompts import Prompt, _grid_candidates, auto_prompt, center_prompt, manifest_prompt
from stages.teacher.sam2_model import encode_frames


def _blob_frame(h: int, w: int) -> np.ndarray:
    """A red disc on a colour ramp: something SAM2 can call a subject."""
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 80)], -1).astype(np.float32)
    img[(xx - w * 0.4) ** 2 + (yy - h * 0.5) ** 2 < (min(h, w) * 0.2) ** 2] = (250, 40, 40)
    return img.astype(np.uint8)


def test_manifest_specs():
    assert manifest_prompt({"box": [1, 2, 30, 40]}).box == [1.0, 2.0, 30.0, 40.0]
    p = manifest_prompt({"points": [[3, 4], [5, 6]], "labels": [1, 0]})
    assert (p.kind, p.points, p.labels) == ("points", [[3.0, 4.0], [5.0, 6.0]], [1, 0])
    assert manifest_prompt({"points": [[3, 4]]}).labels == [1]  # default: positive
    both = manifest_prompt({"box": [0, 0, 9, 9], "points": [[4, 4]], "labels": [0]})
    assert both.kind == "box+points"
    assert manifest_prompt({"box": [0, 0, 9, 9], "points": [], "labels": []}).kind == "box"  # decoder dropped them
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 1
    m = manifest_prompt({"mask": mask})
    assert m.kind == "mask" and m.mask.dtype == np.bool_ and m.mask.sum() == 12 and m.source == "manifest"


@pytest.mark.parametrize("spec, key", [
    ({"box": [5, 5, 1, 9]}, "box"), ({"box": [1, 2, 3]}, "box"), ({"box": "abc"}, "box"),
    ({"points": [[1, 2, 3]]}, "points"), ({"points": []}, "points"), ({"points": [[1, np.nan]]}, "points"),
    ({"points": [[1, 2]], "labels": [1, 1]}, "labels"), ({"points": [[1, 2]], "labels": [2]}, "labels"),
    ({"labels": [1]}, "labels"), ({"mask": np.zeros(5)}, "mask"), ({"mask": np.zeros((4, 4))}, "mask"),
    ({"mask": np.full((4, 4), 3)}, "mask"), ({"mask": np.ones((4, 4)), "box": [0, 0, 2, 2]}, "mask"),
    ({"bbox": [0, 0, 1, 1]}, "bbox"), ({}, "box"),
])  # fmt: skip
def test_bad_manifest_spec_names_the_key(spec, key):
    with pytest.raises(ValueError, match=f"'?{key}'?"):
        manifest_prompt(spec)


def test_prompt_invariants_and_json_record():
    with pytest.raises(ValueError, match="mask alone"):
        Prompt("manifest", box=[0, 0, 1, 1], mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="labels"):
        Prompt("manifest", points=[[1, 1]])
    with pytest.raises(ValueError, match="source"):
        Prompt("user", box=[0, 0, 1, 1])
    mask = np.zeros((6, 9), bool)
    mask[1:4, 2:8] = True
    rec = json.loads(json.dumps(Prompt("auto", mask=mask, score=0.5).to_record()))
    assert rec == {"source": "auto", "kind": "mask", "score": 0.5, "mask_shape": [6, 9], "mask_area": 18,
                   "mask_bbox": [2, 1, 8, 4]}  # fmt: skip
    assert json.dumps(manifest_prompt({"box": [0, 0, 9, 9], "points": [[4, 4]]}).to_record())


def test_center_prompt_is_one_positive_click_at_the_centre():
    p = center_prompt(480, 720)
    assert (p.source, p.kind, p.points, p.labels) == ("center", "points", [[360.0, 240.0]], [1])


@pytest.mark.parametrize("kind", ["points", "box", "box+points", "mask"])
def test_model_inputs_equal_stock_add_new(net, tmp_path, kind):
    """Non-square 48x80 frames: our prompt tensors equal what add_new_* stored in the stock state."""
    h, w = 48, 80
    Image.fromarray(_blob_frame(h, w)).save(tmp_path / "0.jpg")
    mask = np.zeros((h, w), bool)
    mask[10:31, 17:50] = True
    prompt = {
        "points": Prompt("manifest", points=[[20.5, 11.0], [60, 40]], labels=[1, 0]),
        "box": Prompt("manifest", box=[5, 7, 70, 41]),
        "box+points": Prompt("manifest", box=[5, 7, 70, 41], points=[[33, 22]], labels=[0]),
        "mask": Prompt("manifest", mask=mask),
    }[kind]
    state = net.init_state(str(tmp_path))
    if kind == "mask":
        net.add_new_mask(state, 0, 1, mask)
    else:
        net.add_new_points_or_box(state, 0, 1, points=prompt.points, labels=prompt.labels, box=prompt.box)
    points, mask_in = prompt.model_inputs((h, w), net.image_size, torch.device("cpu"))
    if kind == "mask":
        assert points is None and torch.equal(mask_in, state["mask_inputs_per_obj"][0][0])
        assert mask_in.shape == (1, 1, 64, 64)
    else:
        stock = state["point_inputs_per_obj"][0][0]
        assert mask_in is None
        assert torch.equal(points["point_coords"], stock["point_coords"])
        assert torch.equal(points["point_labels"], stock["point_labels"])
    with pytest.raises(ValueError, match="differs"):
        Prompt("manifest", mask=mask).model_inputs((h + 1, w), 64, torch.device("cpu"))


def test_auto_prompt_picks_best_qualifying_mask_from_given_features(net):
    frame = torch.from_numpy(_blob_frame(48, 80))
    feats = encode_frames(net, frame[None], batch=1)[0]
    prompt, score = auto_prompt(net, features=feats, frame_hw=(48, 80))
    assert prompt.source == "auto" and prompt.kind == "mask" and prompt.mask.shape == (48, 80)
    area = prompt.mask.mean()
    assert 0.01 <= area <= 0.9 and prompt.score == score and 0 < score <= 1
    low_res, scores = _grid_candidates(net, feats, 4)
    assert scores.shape == (48,) and low_res.shape == (48, 16, 16)  # 16 clicks x 3 masks
    frac = (low_res > 0).flatten(1).float().mean(1)
    ok = (frac >= 0.01) & (frac <= 0.9)
    assert score == pytest.approx(float(scores[ok].max()))
    again, score2 = auto_prompt(net, frame=frame)  # encodes itself: same answer
    assert score2 == pytest.approx(score) and np.array_equal(again.mask, prompt.mask)


def test_auto_prompt_falls_back_to_centre_click(net):
    frame = torch.from_numpy(_blob_frame(48, 80))
    prompt, score = auto_prompt(net, frame=frame, min_area=0.99, max_area=1.0)
    assert (prompt.source, prompt.kind, prompt.points, score) == ("auto", "points", [[40.0, 24.0]], 0.0)
    with pytest.raises(ValueError, match="exactly one"):
        auto_prompt(net)
