"""The project's own SAM2 teacher tracking the subject through generated samples.

The teacher is rebuilt from the store's teacher column config (model, checkpoint, image size, seed,
mask threshold: the same network that produced the training targets) and prompted on the sample's
frame 0 with the held-out clip's first-frame prompt: a sample starts from that clip's first frame,
so the subject is where the prompt says. The forward-pass masks are what the structure metrics read.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from stages.config.extract import TeacherConfig
from stages.core.devices import resolve_device, resolve_dtype
from stages.teacher.prompts import Prompt
from stages.teacher.sam2_model import build_sam2
from stages.teacher.tracker import BidirectionalTracker

log = logging.getLogger(__name__)


def build_teacher(t: TeacherConfig, device: str | torch.device = "cpu") -> BidirectionalTracker:
    """The teacher column's SAM2 (random weights seeded as extraction seeded them when it had no checkpoint)."""
    dev = resolve_device(str(device))
    model = build_sam2(t.model, t.checkpoint, t.image_size, device=dev, seed=t.seed if t.checkpoint is None else None)
    return BidirectionalTracker(model, feature=t.feature, image_batch=t.image_batch, dtype=resolve_dtype(t.dtype, dev),
                                mask_threshold=t.mask_threshold)


def track_subject(tracker: BidirectionalTracker, frames: np.ndarray, prompt: Prompt | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [F, H, W, 3] -> (bool masks [F, H, W], float32 presence [F]) of the forward pass from frame 0."""
    result = tracker.track(torch.from_numpy(np.ascontiguousarray(frames)), prompt, source)
    return result.masks_fwd.numpy().astype(bool), result.presence_fwd.numpy().astype(np.float32)
