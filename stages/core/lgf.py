"""Local Gram Flow: how local features move together between frames (docs/method.md).

For features X [B, T, h, w, C], each vector L2-normalised,
    G_t(p, d) = < x_t(p), x_{t+o}(p + d) >   for d in a k x k window, o in `offsets`,
neighbours outside the image masked out, and P_t(p, .) = softmax_d(G_t(p, .) / tau).
Frame pairs of all offsets are concatenated on the time axis: offsets [1] give T-1 pairs,
[1, 2] give (T-1) + (T-2). Everything here runs in fp32 at least (fp64 inputs stay fp64).

Used by stage one (the fused teacher target) and stage two (the student's relations and the KL).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

Fusion = Literal["gram", "probs", "feature", "forward", "backward"]
# the fusion a single-stack column (the image teacher) records: with one stack x, fuse(x, x, ...) is
# lgf_probs(x) for every fusion mode (gram: 0.5 (G + G) = G exactly; probs: 0.5 (P + P) = P; feature:
# 0.5 (x + x) = x; forward / backward: x), so there is nothing to fuse and the run's fusion is moot
SINGLE_STACK = "single"
_MASKED = -1e4  # logit of an out-of-image neighbour: exp() underflows to 0, no NaN when a row is all masked


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 (the LGF softmax needs the range); fp64 stays fp64 for exact gradient checks."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def neighbour_offsets(kernel: int) -> list[tuple[int, int]]:
    """The k*k (dy, dx) offsets of the window, row-major: index j of the last LGF axis."""
    r = kernel // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def valid_neighbours(h: int, w: int, kernel: int, device: torch.device | None = None) -> torch.Tensor:
    """Bool [h, w, k*k]: True where p + d lies inside the h x w grid."""
    ys = torch.arange(h, device=device).view(h, 1, 1)
    xs = torch.arange(w, device=device).view(1, w, 1)
    d = torch.tensor(neighbour_offsets(kernel), device=device)
    ny, nx = ys + d[:, 0].view(1, 1, -1), xs + d[:, 1].view(1, 1, -1)
    return (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)


def local_gram(x: torch.Tensor, kernel: int, offsets: Sequence[int] = (1,), normalize: bool = True) -> torch.Tensor:
    """Local cross-frame correlations G [B, T', h, w, k*k] of features x [B, T, h, w, C].

    Out-of-image neighbours read zero-padding (G = 0); mask them with `valid_neighbours`.
    Loops over the k*k shifts rather than unfolding, so peak memory stays O(B T h w C).
    """
    if x.dim() != 5:
        raise ValueError(f"local_gram expects [B, T, h, w, C], got {tuple(x.shape)}")
    x = _at_least_fp32(x)
    if normalize:
        x = F.normalize(x, dim=-1, eps=1e-6)
    r = kernel // 2
    h, w = x.shape[2], x.shape[3]
    pairs = []
    for o in offsets:
        if o >= x.shape[1]:
            raise ValueError(f"frame offset {o} needs more than {x.shape[1]} frames")
        cur, nxt = x[:, :-o], x[:, o:]
        nxt = F.pad(nxt, (0, 0, r, r, r, r))  # pad w and h by r: [B, T-o, h+2r, w+2r, C]
        sims = [(cur * nxt[:, :, r + dy : r + dy + h, r + dx : r + dx + w]).sum(-1) for dy, dx in neighbour_offsets(kernel)]
        pairs.append(torch.stack(sims, dim=-1))
    return torch.cat(pairs, dim=1)


def masked_log_softmax(gram: torch.Tensor, tau: float, valid: torch.Tensor) -> torch.Tensor:
    """log P over the window axis, out-of-image neighbours at (effectively) -inf."""
    logits = (_at_least_fp32(gram) / tau).masked_fill(~valid, _MASKED)
    return torch.log_softmax(logits, dim=-1)


def lgf_probs(x: torch.Tensor, kernel: int, tau: float, offsets: Sequence[int] = (1,)) -> torch.Tensor:
    """P [B, T', h, w, k*k] of features x [B, T, h, w, C]; masked entries are exactly 0."""
    valid = valid_neighbours(x.shape[2], x.shape[3], kernel, x.device)
    return masked_log_softmax(local_gram(x, kernel, offsets), tau, valid).exp() * valid


def fuse(
    fwd: torch.Tensor,
    bwd: torch.Tensor,
    kernel: int,
    tau: float,
    offsets: Sequence[int] = (1,),
    fusion: Fusion = "gram",
) -> torch.Tensor:
    """The teacher target P [B, T', h, w, k*k] from forward and backward features [B, T, h, w, C].

    gram: average the two Gram tensors, then softmax (the default: no cross-terms between passes).
    probs: average after the softmax. feature: average raw features first (the ablated variant,
    whose Gram has cross-terms <f_fwd, f_bwd>). forward / backward: one direction only.
    """
    valid = valid_neighbours(fwd.shape[2], fwd.shape[3], kernel, fwd.device)
    if fusion == "gram":
        gram = 0.5 * (local_gram(fwd, kernel, offsets) + local_gram(bwd, kernel, offsets))
        return masked_log_softmax(gram, tau, valid).exp() * valid
    if fusion == "probs":
        return 0.5 * (lgf_probs(fwd, kernel, tau, offsets) + lgf_probs(bwd, kernel, tau, offsets))
    if fusion == "feature":
        return lgf_probs(0.5 * (_at_least_fp32(fwd) + _at_least_fp32(bwd)), kernel, tau, offsets)
    if fusion == "forward":
        return lgf_probs(fwd, kernel, tau, offsets)
    if fusion == "backward":
        return lgf_probs(bwd, kernel, tau, offsets)
    raise ValueError(f"unknown fusion '{fusion}'; valid: gram, probs, feature, forward, backward")


def lgf_kl(teacher_probs: torch.Tensor, student: torch.Tensor, kernel: int, tau: float, offsets: Sequence[int] = (1,)) -> torch.Tensor:
    """L_feat = mean over (b, t, p) of KL(P_teacher(p, .) || P_student(p, .)), in fp32.

    teacher_probs: [B, T', h, w, k*k] (a `fuse` output, or the stored `lgf` array);
    student: projected student features [B, T, h, w, C].
    """
    valid = valid_neighbours(student.shape[2], student.shape[3], kernel, student.device)
    log_q = masked_log_softmax(local_gram(student, kernel, offsets), tau, valid)
    p = _at_least_fp32(teacher_probs) * valid
    log_p = torch.where(p > 0, p, torch.ones_like(p)).log()  # 0 * log 0 = 0
    return (p * (log_p - log_q)).sum(-1).mean()
