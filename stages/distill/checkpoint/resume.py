"""What `distill --resume` may change: a resumed run's config against the one its checkpoint was written with.

Keys that only steer the optimiser's schedule or the bookkeeping (learning rates, steps, warm-up,
clipping, checkpoint cadence) are applied and logged. Everything that defines the model, the data
order or what a checkpoint holds (student, LoRA rank, tap, projector, batch size, accumulation,
seed, store and columns, strategy) is refused with the differing keys: resuming across such a
change would be a different experiment, silently.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# dotted prefixes a resumed run applies (a key matches when it equals one or lies under it)
APPLIED = (
    "optim.lr", "optim.projector_lr", "optim.warmup_steps", "optim.schedule", "optim.min_lr_ratio",
    "optim.grad_clip", "optim.weight_decay", "optim.betas", "optim.eps",
    "train.steps", "train.checkpoint_every", "train.keep_last", "train.log_every",
    "losses",  # weights, warm-ups and cut-offs of the feature losses (their targets are read per step)
    "diffusion.image_dropout", "train.caption_dropout",
    "parallel.memory_check", "parallel.gpu_memory_gb", "parallel.reshard_after_forward",
    "data.storage_options", "data.on_corrupt", "out",
    "student.device", "student.attention", "student.gradient_checkpointing", "student.checkpointing",  # same maths, other kernels
    "student.compile",
    "eval",  # validation cadence and clips: measured, never trained on
)

# what a checkpoint written before a key existed trained with: runs before the held-out split trained
# on every clip (so resuming one needs data.holdout=0; the split itself is refused when it changes)
LEGACY = {"data.holdout": 0.0, "data.holdout_keys": [], "data.allow_partial_columns": False,
          # keys added with EMA, selective checkpointing and the LGF cutoff (their defaults are the earlier behaviour)
          "train.ema.decay": None, "student.checkpointing": None, "losses.lgf.cutoff.patience": 0,
          "losses.lgf.cutoff.min_delta": 0.0, "losses.lgf.cutoff.metric": "lgf_projected", "losses.lgf.cutoff.factor": 0.0,
          # keys added with the speed switches (student.fp8 changes the numerics: a resume cannot switch it)
          "student.compile.enabled": False, "student.compile.backend": "inductor", "student.compile.mode": None, "student.fp8": False,
          "parallel.context": 1}  # before context parallelism: every rank held whole sequences


class ResumeMismatch(ValueError):
    """The run's config differs from its checkpoint's in keys a resume cannot apply."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and key != "storage_options":
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _applied(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in APPLIED)


def compare(saved: dict, current: dict, checkpoint: str) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, current)} of the changes a resume applies; raises ResumeMismatch for the others."""
    a, b = {**LEGACY, **flatten(saved)}, flatten(current)
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    refused = {k: v for k, v in changed.items() if not _applied(k)}
    if refused:
        lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ResumeMismatch(
            f"{checkpoint} was written with another config ({lines}); a resume can change only the schedule "
            f"and bookkeeping keys. Restore these values, or start a new run in another --out folder"
        )
    for key, (old, new) in changed.items():
        log.warning("resume: %s changed %r -> %r (applied from this step on)", key, old, new)
    return changed


def apply_optimizer_changes(optimizer, scheduler, cfg: Any) -> None:
    """After loading a checkpoint: the config's lr / betas / weight decay / eps into the restored param
    groups, and the scheduler's base rates, so the next steps follow the new schedule from here."""
    o = cfg.optim
    for group in optimizer.param_groups:
        base = (o.projector_lr or o.lr) if group.get("name") == "projector" else o.lr
        group["initial_lr"] = base
        group["betas"], group["weight_decay"], group["eps"] = tuple(o.betas), o.weight_decay, o.eps
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, factors):
        group["lr"] = base * factor
