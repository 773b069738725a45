"""The judge: a SAM2 other than the teacher, tracking the subject through the videos being scored.

Why not the teacher: the structure metrics read masks; masks from the network that made the training
targets would score a student for agreeing with its own teacher. So the judge is, by default, a
different size of SAM2 (tiny <-> small, base+ <-> large) with its official checkpoint found beside the
teacher's; with a random-weight teacher (tests, demo) it is the same config with another seed. The
report names the judge and warns when it equals the teacher or has random weights.

Prompt (where the subject is on frame 0 of each video):
- a sample that started from a held-out clip's first frame (image-to-video) is prompted with that
  clip's manifest prompt when the store has one: the subject is where the prompt says;
- otherwise (text-to-video samples, videos scored from a folder, stores without manifest prompts) the
  judge finds the subject on the video's own frame 0: "auto" (SAM2's best mask over a point grid) or
  "grounded" (Grounding DINO's best box for the caption), never the real clip's box.
The forward-pass masks are what the structure metrics read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from stages.config.extract import GroundingConfig, TeacherConfig
from stages.core.devices import resolve_device, resolve_dtype
from stages.teacher.prompts import Prompt
from stages.teacher.tracker import BidirectionalTracker

log = logging.getLogger(__name__)

# the other size of each released SAM2 config, and its official checkpoint file name
OTHER_SIZE = {"t": "s", "s": "t", "b+": "l", "l": "b+"}
SIZE_FILES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


class JudgeError(ValueError):
    """A judge that cannot be built (unknown config, checkpoint missing or not loading): one line."""


@dataclass
class JudgeConfig:
    """`evaluate.judge` / `score`'s judge (CLI: --judge-model, --judge-checkpoint, --judge-prompt)."""

    model: str = "auto"  # SAM2 config name (sam2.1_hiera_{t,s,b+,l}, sam2_hiera_*), "tiny", or auto: the teacher's other size
    checkpoint: str | None = "auto"  # official {"model": state_dict} file; auto: the judge size's file beside the teacher's
    image_size: int | None = None  # None: the teacher's (1024 for released configs, 64 for tiny)
    prompt: Literal["auto", "grounded", "center"] = "auto"  # subject on a video's own frame 0 (module docstring)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)  # the detector of prompt=grounded
    seed: int | None = None  # random weights only (no checkpoint); None: the teacher's seed + 1 (another init)
    mask_threshold: float = 0.0
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


@dataclass(frozen=True)
class ResolvedJudge:
    model: str
    checkpoint: str | None
    image_size: int | None
    seed: int | None  # None with a checkpoint
    warnings: tuple[str, ...]

    def describe(self) -> dict:
        return {"model": self.model, "checkpoint": self.checkpoint, "image_size": self.image_size, "seed": self.seed,
                "warnings": list(self.warnings)}


def _size(model: str) -> tuple[str, str] | None:
    """'sam2.1_hiera_b+' -> ('sam2.1_hiera_', 'b+'); None for names without a released size suffix."""
    for size in sorted(OTHER_SIZE, key=len, reverse=True):
        if model.endswith("_" + size):
            return model[: -len(size)], size
    return None


def resolve_judge(cfg: JudgeConfig, teacher: TeacherConfig | None) -> ResolvedJudge:
    """Which SAM2 judges: cfg's choices with "auto" filled in from the teacher (module docstring)."""
    model, checkpoint = cfg.model, cfg.checkpoint
    if model == "auto":
        if teacher is None:
            raise JudgeError("the judge needs --judge-model (and --judge-checkpoint): there is no teacher to pick another size of")
        parts = _size(teacher.model)
        model = parts[0] + OTHER_SIZE[parts[1]] if parts else teacher.model
    if checkpoint == "auto":
        checkpoint = None
        if teacher is not None and teacher.checkpoint is not None:
            parts = _size(model)
            name = f"{parts[0].removesuffix('_hiera_')}_hiera_{SIZE_FILES[parts[1]]}.pt" if parts else None
            sibling = str(Path(teacher.checkpoint).with_name(name)) if name else None
            if sibling is None or not Path(sibling).is_file():
                raise JudgeError(f"judge {model}: no checkpoint {sibling or '(unknown file name)'} beside the teacher's "
                                 f"{teacher.checkpoint}: pass --judge-checkpoint FILE (or --judge-model {teacher.model} to judge with the teacher)")
            checkpoint = sibling
    warnings = []
    image_size = cfg.image_size if cfg.image_size is not None else (teacher.image_size if teacher else None)
    seed = None if checkpoint else (cfg.seed if cfg.seed is not None else (teacher.seed + 1 if teacher else 0))
    if teacher is not None and model == teacher.model and checkpoint == teacher.checkpoint and (checkpoint or seed == teacher.seed):
        warnings.append("the judge is the teacher: structure scores reward agreeing with the training targets")
    if checkpoint is None:
        warnings.append("the judge has random weights: its masks say nothing about real subjects (a plumbing check only)")
    return ResolvedJudge(model, checkpoint, image_size, seed, tuple(warnings))


class Judge:
    """A built judge: `masks(frames, prompt, caption)` -> bool [F, H, W] of the forward pass from frame 0."""

    def __init__(self, cfg: JudgeConfig, resolved: ResolvedJudge):
        from stages.teacher.sam2_model import build_sam2

        self.cfg, self.resolved = cfg, resolved
        dev = resolve_device(cfg.device)
        try:
            model = build_sam2(resolved.model, resolved.checkpoint, resolved.image_size, device=dev, seed=resolved.seed)
        except Exception as exc:  # an unknown config or a checkpoint that does not load: one line naming it
            where = resolved.checkpoint or resolved.model
            raise JudgeError(f"judge {where}: cannot build SAM2 {resolved.model} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.tracker = BidirectionalTracker(model, feature="maskmem", dtype=resolve_dtype(cfg.dtype, dev), mask_threshold=cfg.mask_threshold)
        self.detector = None
        if cfg.prompt == "grounded":
            from stages.teacher.grounding import GroundingDetector

            self.detector = GroundingDetector(cfg.grounding, dev)

    def masks(self, frames: np.ndarray, prompt: Prompt | None = None, caption: str = "") -> np.ndarray:
        """uint8 [F, H, W, 3] -> bool [F, H, W]; prompt None: found on this video's own frame 0 (cfg.prompt)."""
        source = self.cfg.prompt
        if prompt is None and self.detector is not None:
            prompt = self.detector.prompts([frames[0]], [caption])[0]
            if isinstance(prompt, Exception):
                raise prompt
        elif prompt is not None:
            source = prompt.source
        result = self.tracker.track(torch.from_numpy(np.ascontiguousarray(frames)), prompt, source)
        return result.masks_fwd.numpy().astype(bool)
