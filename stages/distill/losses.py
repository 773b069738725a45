"""Stage two's feature losses: L_feat (LGF) and the REPA / mask baselines (L_diff is each family's:
stages/families/<family>/objective.py or family.py).


One transformer forward per step: the family builds the inputs and scores L_diff from the output
(Student.prepare_inputs / loss_from_output); `feature_losses` scores the features a FeatureTap took
from block L. All losses are computed in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from stages.core.lgf import SINGLE_STACK, fuse, lgf_kl, lgf_probs

# ----------------------------------------------------------------------------------------- L_feat and baselines


def lgf_loss(
    projected: torch.Tensor, teacher_probs: torch.Tensor, kernel: int, tau: float, offsets: Sequence[int] = (1,)
) -> torch.Tensor:
    """L_feat: mean KL(P_teacher || P_student) of projected student features [B, T, h, w, C]
    against teacher LGF probabilities [B, T', h, w, k*k] (stages.core.lgf.lgf_kl, fp32)."""
    return lgf_kl(teacher_probs, projected, kernel, tau, offsets)


def lgf_key(cfg: Any) -> tuple[int, float, tuple[int, ...], str]:
    """(kernel, tau, offsets, fusion) of an LGF config object or its dict form (column attrs)."""
    get = cfg.get if isinstance(cfg, Mapping) else lambda k: getattr(cfg, k)
    return int(get("kernel")), float(get("tau")), tuple(int(o) for o in get("offsets")), str(get("fusion"))


def single_stack(column_lgf: Any) -> bool:
    """A column of one feature stack (the image teacher) records fusion "single" (stages.core.lgf.SINGLE_STACK)."""
    return column_lgf is not None and lgf_key(column_lgf)[3] == SINGLE_STACK


def stored_lgf_fits(column_lgf: Any, run_lgf: Any) -> bool:
    """Whether the column's stored `lgf` is this run's target: same (kernel, tau, offsets, fusion), or
    same (kernel, tau, offsets) for a single stack, where every fusion mode gives the same target."""
    if single_stack(column_lgf):
        return lgf_key(column_lgf)[:3] == lgf_key(run_lgf)[:3]
    return lgf_key(column_lgf) == lgf_key(run_lgf)


def teacher_target(batch: Mapping[str, torch.Tensor], run_lgf: Any, column_lgf: Any) -> torch.Tensor:
    """Teacher LGF probabilities [B, T', h, w, k*k] for this run's LGF settings, fp32.

    The stored `lgf` when the run's (kernel, tau, offsets, fusion) equal the column's; otherwise
    recomputed from the stored fwd/bwd features with stages.core.lgf.fuse (a sweep needs no re-extraction).
    A single-stack column (image teacher: `fwd` only) recomputes lgf_probs(fwd): on one stack every
    fusion mode is that (fuse(x, x, ...) == lgf_probs(x)), so the run's fusion is moot there.
    """
    kernel, tau, offsets, fusion = lgf_key(run_lgf)
    if column_lgf is not None and stored_lgf_fits(column_lgf, run_lgf) and batch.get("lgf") is not None:
        return batch["lgf"].float()
    if single_stack(column_lgf):
        return lgf_probs(batch["fwd"], kernel, tau, offsets)
    return fuse(batch["fwd"], batch["bwd"], kernel, tau, offsets, fusion)


def repa_teacher(batch: Mapping[str, torch.Tensor], mode: str = "fwd") -> torch.Tensor:
    """Teacher features [B, T, h, w, C] for REPA: the forward pass, or the mean of both passes."""
    if mode == "fwd":
        return batch["fwd"].float()
    if mode == "mean":
        if "bwd" not in batch:  # a single-stack column (image teacher; data.teacher_arrays reads no bwd): its one stack
            return batch["fwd"].float()
        return 0.5 * (batch["fwd"].float() + batch["bwd"].float())
    raise ValueError(f"unknown REPA teacher {mode!r}; valid: fwd, mean")


def repa_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity per token, averaged: -1 when aligned. Both [B, T, h, w, C]."""
    if projected.shape != teacher.shape:
        raise ValueError(f"REPA needs matching shapes: projected {tuple(projected.shape)} vs teacher {tuple(teacher.shape)}")
    return -F.cosine_similarity(projected.float(), teacher.float(), dim=-1, eps=1e-6).mean()


def mask_loss(
    logits: torch.Tensor, mask: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0, eps: float = 1.0
) -> torch.Tensor:
    """BCE + soft Dice of mask logits [B, T, h, w] against coverage `mask` uint8 0..255 [B, T, h, w].

    The target is the coverage fraction (mask / 255), so partly covered tokens are soft targets.
    Dice per sample: 1 - (2 sum(p y) + eps) / (sum p + sum y + eps), eps smoothing empty masks.
    """
    target = mask.float() / 255.0
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    dice = 1.0 - (2.0 * (prob * target).sum(1) + eps) / (prob.sum(1) + target.sum(1) + eps)
    return bce_weight * bce + dice_weight * dice.mean()


def weight_at(step: int, weight: float, warmup_steps: int = 0, cutoff_step: int | None = None) -> float:
    """Scheduled loss weight: linear ramp 0 -> weight over warmup_steps, then constant, 0 from cutoff_step."""
    if cutoff_step is not None and step >= cutoff_step:
        return 0.0
    if warmup_steps > 0 and step < warmup_steps:
        return weight * step / warmup_steps
    return weight


@dataclass
class FeatureLosses:
    """The feature terms of one step: unweighted values (fp32, on the graph) and their scheduled weights."""

    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor | float:
        """sum_i weight_i * term_i (0.0 when no term is active)."""
        return sum((self.weights[k] * v for k, v in self.terms.items()), 0.0)


def feature_losses(
    cfg: Any,
    step: int,
    projector: torch.nn.Module,
    features: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    column_lgf: Any = None,
    lgf_scale: float = 1.0,
) -> FeatureLosses:
    """Project tapped features [B, T, h, w, D] once and compute every feature loss active at `step`.

    cfg: a LossesConfig (stages/config/distill.py). A term whose scheduled weight is 0 is not computed.
    batch: needs fwd/bwd (+ lgf), and mask for the mask term. column_lgf: the teacher column's LGF settings.
    lgf_scale: multiplies the LGF weight (the agreement cutoff, stages/distill/cutoff.py; 0: the term is off).
    """
    out = FeatureLosses()
    configs = {"lgf": cfg.lgf, "repa": cfg.repa, "mask": cfg.mask}
    weights = {name: weight_at(step, c.weight, c.warmup_steps, c.cutoff_step) for name, c in configs.items()}
    weights["lgf"] *= lgf_scale
    if not any(weights.values()):
        return out
    projected = projector(features)
    if weights["lgf"]:
        target = teacher_target(batch, cfg.lgf, column_lgf)
        out.terms["lgf"] = lgf_loss(projected, target, cfg.lgf.kernel, cfg.lgf.tau, cfg.lgf.offsets)
    if weights["repa"]:
        out.terms["repa"] = repa_loss(projected, repa_teacher(batch, cfg.repa.teacher))
    if weights["mask"]:
        out.terms["mask"] = mask_loss(projector.mask_logits(projected), batch["mask"], cfg.mask.bce_weight, cfg.mask.dice_weight)
    out.weights = {k: weights[k] for k in out.terms}
    return out
