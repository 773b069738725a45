"""Which subject SAM2 tracks: a prompt from the manifest, the frame centre, or SAM2's own best mask.

All coordinates are pixels of the decoded frames handed to the tracker ([H, W] after the
decoder's resize/crop; the decoder maps manifest coordinates already). `Prompt.model_inputs`
turns a prompt into SAM2's input format exactly as `SAM2VideoPredictor.add_new_points_or_box`
and `add_new_mask` do, so our tracker and the stock API see the same prompt tensors.

`auto_prompt` never imports SAM2's automatic mask generator or image predictor (they pull in
torchvision, which cannot be installed next to the CPU torch): it runs SAM2's prompt encoder and
mask decoder on a small grid of point prompts over image features the tracker already computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from stages.teacher.sam2_model import FrameFeatures, SAM2VideoPredictor, encode_frames

logger = logging.getLogger(__name__)

PromptSource = Literal["manifest", "auto", "center", "grounded"]
_SOURCES = ("manifest", "auto", "center", "grounded")
_SPEC_KEYS = {"box", "points", "labels", "mask"}


@dataclass
class Prompt:
    """One subject prompt on one frame: a box, points (+labels), a box with points, or a mask.

    source: where it came from ("manifest" | "auto" | "center" | "grounded").
    box: [x0, y0, x1, y1] pixels. points: [[x, y], ...] pixels, labels: 1 positive / 0 negative.
    A box and points together are one prompt (SAM2 takes the box as two leading corner points,
    as `add_new_points_or_box(points=..., box=...)` does). mask: bool np.ndarray [H, W] at frame
    resolution, never combined with the others. score: auto_prompt's or the detector's score, else None.
    phrase, label: the text query a grounded box was found with and the query tokens the detector
    matched to it (stages/teacher/grounding.py), else None.
    """

    source: PromptSource
    box: list[float] | None = None
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    mask: np.ndarray | None = None
    score: float | None = None
    phrase: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {self.source!r}")
        given = [k for k in ("box", "points", "mask") if getattr(self, k) is not None]
        if not given or (self.mask is not None and len(given) > 1):
            raise ValueError(f"a Prompt needs a box and/or points, or a mask alone; got {given or 'none'}")
        if self.points is not None and (self.labels is None or len(self.labels) != len(self.points)):
            raise ValueError("labels: one label per point is required")
        if self.points is None and self.labels is not None:
            raise ValueError("labels: given without points")
        if self.mask is not None and (self.mask.dtype != np.bool_ or self.mask.ndim != 2):
            raise ValueError(f"mask must be a bool [H, W] array, got {self.mask.dtype} {self.mask.shape}")

    @property
    def kind(self) -> Literal["box", "points", "box+points", "mask"]:
        if self.mask is not None:
            return "mask"
        if self.box is not None:
            return "box+points" if self.points is not None else "box"
        return "points"

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary; a mask is summarised by shape, bbox [x0, y0, x1, y1] and area."""
        rec: dict[str, Any] = {"source": self.source, "kind": self.kind, "score": self.score}
        if self.phrase is not None:
            rec["phrase"] = self.phrase
        if self.label is not None:
            rec["label"] = self.label
        if self.box is not None:
            rec["box"] = [float(v) for v in self.box]
        if self.points is not None:
            rec["points"] = [[float(x), float(y)] for x, y in self.points]
            rec["labels"] = [int(v) for v in self.labels or []]
        if self.mask is not None:
            rec.update(mask_summary(self.mask))
        return rec

    def model_inputs(
        self, frame_hw: tuple[int, int], image_size: int, device: torch.device
    ) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor | None]:
        """(point_inputs, mask_inputs) in SAM2's format, as the stock add_new_* methods build them.

        Points/box: pixels divided by (W, H) then scaled by image_size; a box becomes two points
        labelled 2 and 3. Mask: float [1, 1, S, S], resized (bilinear, antialiased, >= 0.5)
        when the frame is not S x S.
        """
        h, w = frame_hw
        if self.mask is not None:
            if self.mask.shape != (h, w):
                raise ValueError(f"mask shape {self.mask.shape} differs from the frames' {(h, w)}")
            mask = torch.from_numpy(self.mask)[None, None].float().to(device)
            if (h, w) != (image_size, image_size):
                mask = F.interpolate(mask, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
                mask = (mask >= 0.5).float()
            return None, mask
        coords = torch.tensor(self.points or [], dtype=torch.float32).reshape(1, -1, 2)
        labels = torch.tensor([self.labels or []], dtype=torch.int32).reshape(1, -1)
        if self.box is not None:  # the box goes first, as corner points labelled 2 and 3
            coords = torch.cat([torch.tensor(self.box, dtype=torch.float32).reshape(1, 2, 2), coords], 1)
            labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labels], 1)
        coords = coords / torch.tensor([w, h]) * image_size
        return {"point_coords": coords.to(device), "point_labels": labels.to(device)}, None


def mask_summary(mask: np.ndarray) -> dict[str, Any]:
    """{"mask_shape", "mask_area", "mask_bbox"} of a bool [H, W] mask (bbox None when empty)."""
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
    return {"mask_shape": [int(s) for s in mask.shape], "mask_area": int(mask.sum()), "mask_bbox": bbox}


def center_prompt(h: int, w: int) -> Prompt:
    """One positive point at the frame centre (w/2, h/2).

    A point rather than a centred box: a single click makes SAM2 emit three candidate masks
    (whole / part / sub-part) and keep the one with the best predicted IoU, so the subject's
    extent is not dictated by an arbitrary box size.
    """
    return Prompt(source="center", points=[[w / 2.0, h / 2.0]], labels=[1])


def manifest_prompt(spec: dict[str, Any]) -> Prompt:
    """A Prompt from a (decoder-mapped) manifest entry, in frame pixels.

    Accepted: {"box": [x0,y0,x1,y1]}; {"points": [[x,y],..], "labels": [..]} (labels default to
    all positive); both together; or {"mask": bool/0-1 array [H, W]} alone. An empty points
    list next to a box is ignored (the decoder drops points outside the crop).
    Bad spec -> ValueError naming the key.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"prompt spec must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"prompt spec has unknown keys {unknown}; expected box and/or points(+labels), or mask")
    spec = dict(spec)
    if spec.get("box") is not None and spec.get("points") is not None and len(spec["points"]) == 0:
        spec.pop("points")
        spec.pop("labels", None)
    if spec.get("labels") is not None and spec.get("points") is None:
        raise ValueError("prompt spec has 'labels' without 'points'")
    given = [k for k in ("box", "points", "mask") if spec.get(k) is not None]
    if not given or ("mask" in given and len(given) > 1):
        raise ValueError(f"prompt spec needs 'box' and/or 'points', or 'mask' alone; got {given or 'none'}")
    if "mask" in given:
        return Prompt(source="manifest", mask=_mask(spec["mask"]))
    box = _box(spec["box"]) if "box" in given else None
    points = labels = None
    if "points" in given:
        points = _points(spec["points"])
        labels = _labels(spec.get("labels"), len(points))
    return Prompt(source="manifest", box=box, points=points, labels=labels)


def _box(value: Any) -> list[float]:
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError) as e:
        raise ValueError(f"'box' must be 4 numbers [x0, y0, x1, y1], got {value!r}") from e
    if len(box) != 4 or not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"'box' must be 4 finite numbers [x0, y0, x1, y1] with x1 > x0, y1 > y0, got {value!r}")
    return box


def _points(value: Any) -> list[list[float]]:
    try:
        pts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"'points' must be [[x, y], ...], got {value!r}") from e
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"'points' must be a non-empty list of finite [x, y] pairs, got {value!r}")
    return pts.tolist()


def _labels(value: Any, n: int) -> list[int]:
    if value is None:
        return [1] * n
    labels = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if labels is None or len(labels) != n or any(int(v) != v or int(v) not in (0, 1) for v in labels):
        raise ValueError(f"'labels' must be {n} values of 1 (positive) or 0 (negative), got {value!r}")
    return [int(v) for v in labels]


def _mask(value: Any) -> np.ndarray:
    mask = np.asarray(value)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"'mask' must be a 2-D [H, W] array, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("'mask' must be boolean or 0/1 valued")
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("'mask' is empty: it selects no pixel")
    return mask


@torch.inference_mode()
def auto_prompt(
    model: SAM2VideoPredictor,
    frame: torch.Tensor | None = None,
    features: FrameFeatures | None = None,
    *,
    frame_hw: tuple[int, int] | None = None,
    grid: int = 4,
    min_area: float = 0.01,
    max_area: float = 0.9,
    mask_threshold: float = 0.0,
) -> tuple[Prompt, float]:
    """The best-scoring subject on the first frame, as a mask Prompt at frame resolution.

    Give either `frame` (uint8 [H, W, 3], encoded here) or `features` (frame 0's image features
    as the tracker's batched encoder computed them: nothing is encoded twice) plus `frame_hw`.
    A grid x grid lattice of single positive clicks goes through SAM2's prompt encoder and mask
    decoder (three candidates per click, on the no-memory conditioned feature the tracker uses
    on a prompted frame). Score = predicted IoU x object presence probability; candidates
    covering less than `min_area` or more than `max_area` of the frame are ignored (empty
    masks and the background). Returns (prompt, score). When no candidate qualifies (e.g. an
    untrained model), falls back to the centre click (source "auto", score 0.0) and logs it.
    """
    if (frame is None) == (features is None):
        raise ValueError("give exactly one of frame or features")
    if frame is not None:
        frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
        features = encode_frames(model, frame[None], batch=1)[0]
    if frame_hw is None:
        raise ValueError("frame_hw (H, W) is required with features")
    low_res, scores = _grid_candidates(model, features, grid)
    area = (low_res > mask_threshold).flatten(1).float().mean(1)
    ok = (area >= min_area) & (area <= max_area)
    if not bool(ok.any()):
        logger.warning("auto prompt: no candidate mask with area in [%g, %g]; using the centre click", min_area, max_area)
        fallback = center_prompt(*frame_hw)
        return Prompt(source="auto", points=fallback.points, labels=fallback.labels, score=0.0), 0.0
    best = int(torch.where(ok, scores, torch.full_like(scores, -1.0)).argmax())
    mask = F.interpolate(low_res[best][None, None], size=frame_hw, mode="bilinear", align_corners=False)
    mask_np = (mask[0, 0] > mask_threshold).cpu().numpy()
    score = float(scores[best])
    return Prompt(source="auto", mask=mask_np, score=score), score


def _grid_candidates(model: SAM2VideoPredictor, feats: FrameFeatures, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate low-res mask logits [N, h, w] and scores [N] for grid*grid clicks x 3 masks."""
    n = grid * grid
    size = model.image_size
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * size / grid
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    coords = torch.stack([xs.flatten(), ys.flatten()], -1)[:, None].to(model.device)  # [n, 1, 2]
    labels = torch.ones(n, 1, dtype=torch.int32, device=model.device)
    # the prompted-frame feature: no memory, as on an initial conditioning frame
    pix = model._prepare_memory_conditioned_features(
        frame_idx=0,
        is_init_cond_frame=True,
        current_vision_feats=feats.vision_feats[-1:],
        current_vision_pos_embeds=feats.vision_pos[-1:],
        feat_sizes=feats.feat_sizes[-1:],
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=1,
    )
    high_res = [
        x.permute(1, 2, 0).reshape(1, x.shape[2], *s).expand(n, -1, -1, -1)
        for x, s in zip(feats.vision_feats[:-1], feats.feat_sizes[:-1])
    ]
    low_res, _, ious, _, _, _, obj_logits = model._forward_sam_heads(
        backbone_features=pix.expand(n, -1, -1, -1),
        point_inputs={"point_coords": coords, "point_labels": labels},
        high_res_features=high_res or None,
        multimask_output=True,
    )
    presence = torch.sigmoid(obj_logits.float()).expand_as(ious)  # [n, 3]
    scores = (ious.float() * presence).flatten()
    return low_res.flatten(0, 1).float(), scores
