"""Teacher statistics (`sam2videox inspect STORE --teacher-stats`): what the bidirectional teacher
fuses, checked on the stored clips before any GPU day is spent on distillation.

Per teacher column (a column whose attrs carry "lgf" and whose arrays include fwd, bwd, lgf), over its
committed clips, with the column's own LGF settings (kernel k, tau, offsets), every relation a
distribution over the k*k window of one token pair (t, t+o):
- kl_fwd_bwd: mean KL(P_fwd || P_bwd), the relations of each direction alone (from dequantised
  fwd/bwd). Near 0 means the backward pass adds nothing to fuse.
- kl_fwd_bwd_masks_agree: the same over the token pairs whose neighbourhood (the k x k window, at t
  and at t+o) has the same subject mask in both passes (mask vs mask_bwd coverage, to 2/255);
  None for columns without mask_bwd. A feature that only reads the frame and the pass's
  own mask (maskmem) coincides there; one that carries the pass's past (memory_attention) need not.
- feature_diff_fwd_bwd (and _masks_agree): mean |f_fwd - f_bwd| / |f_fwd| per token, the same
  question asked of the features rather than of their relations.
- kl_fused_fwd: mean KL(P_fused || P_fwd), P_fused the stored `lgf` target; fused_differs: the
  fraction of relations with per-token KL(P_fused || P_fwd) > threshold (default 0.01 nats).
- quality (mask IoU between the passes, object scores, mask areas): distributions (min, median,
  mean, max) of the per-clip `record["quality"]` values; "n/a" for stores written before it.
  object_score: the record's forward object score (every store has it).
- other_columns: for each other teacher column with an `lgf` of the same shape, mean
  KL(P_this || P_other) and KL(P_other || P_this) of the stored fused targets over shared clips.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from stages.store import Column, FeatureStore, StoreError
from stages.store.schema import CLIP, QUALITY, TEACHER, TEACHER_COLUMN, TEACHER_RECORD
from stages.core.lgf import lgf_probs, valid_neighbours

log = logging.getLogger(__name__)

AGREE_TOLERANCE = 2  # of 255: token coverages this close count as the same mask (resampling rounding)
DEFAULT_THRESHOLD = 0.01  # nats: per-token KL(P_fused || P_fwd) above which the fused relation "differs"


def is_teacher_column(column: Column) -> bool:
    return "lgf" in column.attrs and TEACHER.lgf in column.schema  # attrs "lgf": the LGF settings it was fused with


def relation_kl(p: torch.Tensor, q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-relation KL(P || Q) [..., h, w] of distributions over the window axis [..., h, w, K];
    out-of-image neighbours (valid False) are left out, 0 log 0 = 0, Q floored at 1e-12."""
    p, q = p.double() * valid, q.double().clamp_min(1e-12)
    return torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.log()), torch.zeros_like(p)).sum(-1)


def _pair_frames(frames: int, offsets: list[int]) -> tuple[list[int], list[int]]:
    """(t, t+o) frame indices of the T' relation rows, in the order stages.core.lgf concatenates them."""
    first = [t for o in offsets for t in range(frames - o)]
    return first, [t + o for o in offsets for t in range(frames - o)]


def masks_agree(mask: np.ndarray, mask_bwd: np.ndarray, kernel: int, offsets: list[int], tolerance: int = AGREE_TOLERANCE) -> torch.Tensor:
    """Bool [T', h, w]: relation (t, p) whose k x k neighbourhood at t and at t+o has the same mask
    coverage in both passes (to `tolerance` of 255). mask, mask_bwd: uint8 [T, h, w].

    Coverage, not the binarised mask: a token half covered in one pass and 60% in the other holds
    different masks, and so different memory-encoder inputs (a binarised comparison counts it as
    agreeing and lets boundary differences into the "masks agree" figures)."""
    gap = np.abs(mask.astype(np.int16) - mask_bwd.astype(np.int16))
    differ = torch.from_numpy((gap > tolerance).astype(np.float32))[:, None]
    near = F.max_pool2d(differ, kernel, 1, kernel // 2)[:, 0] > 0  # [T, h, w]: a differing token within the window
    first, second = _pair_frames(mask.shape[0], offsets)
    return ~(near[first] | near[second])


def _distribution(values: list[float]) -> dict | str:
    if not values:
        return "n/a"
    v = np.asarray(values, np.float64)
    return {"min": float(v.min()), "median": float(np.median(v)), "mean": float(v.mean()), "max": float(v.max()), "n": len(v)}


class _Mean:
    """A running token-weighted mean."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, values: torch.Tensor) -> None:
        self.total += float(values.double().sum())
        self.count += int(values.numel())

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


def teacher_stats(store: FeatureStore, column: str | None = None, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The statistics above for one teacher column (`column`: name or name-hash; default: the only
    column named "teacher", else the only teacher column). Raises StoreError naming what exists when
    the column is ambiguous or not a teacher's, ValueError for a threshold <= 0."""
    if threshold <= 0:
        raise ValueError(f"--threshold must be > 0, got {threshold}")
    teachers = [c for c in store.columns() if is_teacher_column(c)]
    if column is None:
        sam2 = [c for c in teachers if c.name == TEACHER_COLUMN]  # beside other teacher columns (image_teacher), the SAM2 one
        if len(sam2) != 1 and len(teachers) != 1:
            names = ", ".join(c.dirname for c in teachers) or "none"
            raise StoreError(f"{store.url}: --teacher-stats needs --column when there is not exactly one teacher column (found: {names})")
        col = sam2[0] if len(sam2) == 1 else teachers[0]
    else:
        col = store.column(column)
        if not is_teacher_column(col):
            raise StoreError(f"{store.url}: '{column}' is not a teacher column (teacher columns: {', '.join(c.dirname for c in teachers) or 'none'})")
    lgf = col.attrs["lgf"]
    kernel, tau, offsets = int(lgf["kernel"]), float(lgf["tau"]), list(lgf["offsets"])
    has_features = TEACHER.fwd in col.schema and TEACHER.bwd in col.schema
    has_bwd_mask = TEACHER.mask in col.schema and TEACHER.mask_bwd in col.schema
    others = [c for c in teachers if c.dirname != col.dirname and c.schema[TEACHER.lgf].shape == col.schema[TEACHER.lgf].shape]
    kl_fb, kl_fb_agree, agree_frac, diff, diff_agree, kl_ff, differs = (_Mean() for _ in range(7))
    cross = {o.dirname: (_Mean(), _Mean(), set()) for o in others}
    quality: dict[str, list[float]] = {k: [] for k in QUALITY.all}
    scores: list[float] = []
    clips, with_quality = 0, 0
    records = col.commit_records()
    other_shards = {o.dirname: o.committed_shards() for o in others}
    for shard in sorted(records):
        data = col.read_shard(shard)
        other_rows = {}
        for o in others:
            if shard in other_shards[o.dirname]:
                od = o.read_shard(shard)
                other_rows[o.dirname] = (o, od, {rec[CLIP.index]: r for r, rec in enumerate(od.records)})
        for row, rec in enumerate(data.records):
            clips += 1
            if TEACHER_RECORD.object_score in rec:
                scores.append(float(rec[TEACHER_RECORD.object_score]))
            if isinstance(rec.get(TEACHER_RECORD.quality), dict):
                with_quality += 1
                for k in QUALITY.all:
                    if rec[TEACHER_RECORD.quality].get(k) is not None:
                        quality[k].append(float(rec[TEACHER_RECORD.quality][k]))
            target = torch.from_numpy(col.read_row(data, TEACHER.lgf, row).astype(np.float32))  # [T', h, w, K]
            valid = valid_neighbours(target.shape[1], target.shape[2], kernel)
            if has_features:
                fwd = torch.from_numpy(col.read_dequantized(data, TEACHER.fwd, row).astype(np.float32))  # [T, h, w, C]
                bwd = torch.from_numpy(col.read_dequantized(data, TEACHER.bwd, row).astype(np.float32))
                p_fwd = lgf_probs(fwd[None], kernel, tau, offsets)[0]
                p_bwd = lgf_probs(bwd[None], kernel, tau, offsets)[0]
                kl = relation_kl(p_fwd, p_bwd, valid)  # [T', h, w]
                d = (fwd - bwd).norm(dim=-1) / fwd.norm(dim=-1).clamp_min(1e-12)  # [T, h, w]
                kl_fb.add(kl)
                diff.add(d)
                to_fused = relation_kl(target, p_fwd, valid)
                kl_ff.add(to_fused)
                differs.add((to_fused > threshold).float())
                if has_bwd_mask:
                    agree = masks_agree(col.read_row(data, TEACHER.mask, row), col.read_row(data, TEACHER.mask_bwd, row), kernel, offsets)
                    agree_frac.add(agree.float())
                    kl_fb_agree.add(kl[agree])
                    first, _ = _pair_frames(fwd.shape[0], offsets)
                    diff_agree.add(d[first][agree])
            for name, (o, od, rows) in other_rows.items():
                if rec[CLIP.index] in rows:
                    other = torch.from_numpy(o.read_row(od, TEACHER.lgf, rows[rec[CLIP.index]]).astype(np.float32))
                    cross[name][0].add(relation_kl(target, other, valid))
                    cross[name][1].add(relation_kl(other, target, valid))
                    cross[name][2].add(rec[CLIP.index])
    q = {k: _distribution(v) for k, v in quality.items()} if with_quality else "n/a"
    return {
        "column": col.dirname,
        # SAM2 columns name their feature; an image-only teacher (image_teacher) its model
        "feature": col.producer_config.get("teacher", {}).get("feature") or col.attrs.get("model"),
        "clips": clips,
        "lgf": {"kernel": kernel, "tau": tau, "offsets": offsets, "fusion": lgf.get("fusion")},
        "threshold": {"kl_fused_fwd": threshold},
        "kl_fwd_bwd": kl_fb.value,
        "kl_fwd_bwd_masks_agree": kl_fb_agree.value,
        "masks_agree_fraction": agree_frac.value,
        "feature_diff_fwd_bwd": diff.value,
        "feature_diff_fwd_bwd_masks_agree": diff_agree.value,
        "kl_fused_fwd": kl_ff.value,
        "fused_differs_fraction": differs.value,
        "object_score": _distribution(scores),
        "quality": q,
        "quality_clips": with_quality,
        "other_columns": [
            {"column": name, "clips": len(seen), "kl_this_other": a.value, "kl_other_this": b.value}
            for name, (a, b, seen) in cross.items()
        ],
    }


def format_stats(stats: dict) -> list[str]:
    """The plain-text lines of `inspect --teacher-stats`."""

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    def dist(d: dict | str) -> str:
        return d if isinstance(d, str) else f"min {d['min']:.3g}  median {d['median']:.3g}  mean {d['mean']:.3g}  max {d['max']:.3g}  (n={d['n']})"

    s, lgf = stats, stats["lgf"]
    agree = "n/a: no mask_bwd" if s["masks_agree_fraction"] is None else f"{100 * s['masks_agree_fraction']:.1f}% of relations"
    lines = [
        f"teacher stats of {s['column']} (feature {s['feature']}): {s['clips']} clips; "
        f"LGF k={lgf['kernel']} tau={lgf['tau']} offsets={lgf['offsets']} fusion={lgf['fusion']}",
        f"  KL(P_fwd || P_bwd)                  {num(s['kl_fwd_bwd'])}",
        f"    where the passes' masks agree     {num(s['kl_fwd_bwd_masks_agree'])}  ({agree})",
        f"  |f_fwd - f_bwd| / |f_fwd|           {num(s['feature_diff_fwd_bwd'])}  (masks agree: {num(s['feature_diff_fwd_bwd_masks_agree'])})",
        f"  KL(P_fused || P_fwd)                {num(s['kl_fused_fwd'])}",
        f"  fused differs from forward-only     {num(None if s['fused_differs_fraction'] is None else 100 * s['fused_differs_fraction'])}% "
        f"of relations (per-token KL > {s['threshold']['kl_fused_fwd']:g})",
        f"  object score (fwd, record)          {dist(s['object_score'])}",
    ]
    if isinstance(s["quality"], str):
        lines.append("  quality (mask IoU, scores, areas)  n/a (no per-clip quality records in this column)")
    else:
        for k, d in s["quality"].items():
            lines.append(f"  {k:34s}  {dist(d)}")
    for o in s["other_columns"]:
        lines.append(f"  vs {o['column']}: KL(this || other) {num(o['kl_this_other'])}, KL(other || this) {num(o['kl_other_this'])} over {o['clips']} clips")
    return lines
