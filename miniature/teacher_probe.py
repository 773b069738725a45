"""Held-out J&F of a tiny SAM2 teacher on the miniature world's `probe` part.

The checkpoint is loaded the way a user's is (stages.teacher.sam2_model.build_sam2 with
checkpoint=..., strict, weights only), the subject is tracked with the project's own
BidirectionalTracker from the frame-0 box (the manifest prompt the sample corpus carries), and
both passes are scored against the true masks: the forward pass (box on frame 0, tracked 0 ->
F-1) and the backward pass (prompted on frame F-1 by the forward pass's own mask, tracked back
to 0), so a teacher that loses the subject forward also shows it backward. Every frame of a
clip is scored (the forward pass predicts frame 0 from a box, so it is not given away).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from miniature.world import WORLD, Part, World, render
from stages.evaluate.metrics.vos import VosScore, clip_scores, mean_scores
from stages.teacher.prompts import Prompt
from stages.teacher.sam2_model import build_sam2
from stages.teacher.tracker import BidirectionalTracker

logger = logging.getLogger(__name__)

IMAGE_SIZE = 128  # the miniature teacher's input size (frames 128x192 are resized to 128x128)


@dataclass(frozen=True)
class ProbeResult:
    forward: VosScore
    backward: VosScore
    clips: int
    seconds: float

    def to_record(self) -> dict[str, Any]:
        return {"forward": self.forward.to_record(), "backward": self.backward.to_record(), "clips": self.clips, "seconds": self.seconds}


def probe(
    checkpoint: str | None,
    part: Part = WORLD.probe,
    clips: int | None = None,
    batch: int = 6,
    seed: int = 0,
    world: World = WORLD,
) -> ProbeResult:
    """Forward and backward J&F of the tiny teacher at `checkpoint` (None: random weights, `seed`)
    over the first `clips` clips of `part` (default: all of them), `batch` clips tracked in lockstep."""
    t0 = time.perf_counter()
    model = build_sam2("tiny", checkpoint=checkpoint, image_size=IMAGE_SIZE, seed=None if checkpoint else seed)
    tracker = BidirectionalTracker(model, feature="maskmem")
    n = part.clips if clips is None else min(clips, part.clips)
    fwd: list[VosScore] = []
    bwd: list[VosScore] = []
    for start in range(0, n, batch):
        rendered = [render(part, i, world) for i in range(start, min(start + batch, n))]
        results = tracker.track_batch(
            [torch.from_numpy(c.frames) for c in rendered],
            [Prompt(source="manifest", box=[float(v) for v in c.box]) for c in rendered],
            ["manifest"] * len(rendered),
        )
        for c, r in zip(rendered, results):
            fwd.append(clip_scores(r.masks_fwd.numpy(), c.masks))
            bwd.append(clip_scores(r.masks_bwd.numpy(), c.masks))
    out = ProbeResult(mean_scores(fwd), mean_scores(bwd), n, time.perf_counter() - t0)
    logger.info("probe %s: J&F forward %.3f backward %.3f over %d clips", checkpoint or "random", out.forward.jf, out.backward.jf, n)
    return out
