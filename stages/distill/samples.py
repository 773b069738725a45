"""Sample videos during training: the stock pipeline of the run's family and task around the student being trained.

Every `eval.sample_every` steps, for the first `eval.sample_clips` held-out clips: their first frame
(decoded from the corpus; image-to-video tasks) and caption condition the family's stock pipeline of the run's
task (Student.pipeline_around: e.g. CogVideoXImageToVideoPipeline, CogVideoXPipeline, WanPipeline,
WanImageToVideoPipeline), built around the trainer's own transformer with its current LoRA (no second copy of
the student, nothing exported),
with a fixed seed per clip, so successive samples differ only by training. Written to
<run>/samples/step-NNNNNN/<key>.mp4.

The VAE and text encoder are loaded only for this (the trainer never holds them) and released after, with the
CUDA cache emptied. Sampling through a sharded (FSDP) transformer needs every rank in each forward:
then every rank samples the same clips and rank 0 writes; otherwise rank 0 alone samples while the
others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from stages.config.loader import from_dict
from stages.config.extract import VideoConfig

log = logging.getLogger(__name__)


def sample_held_out(cfg: Any, data: Any, keys: list[str], model: torch.nn.Module, ctx: Any, sharded: bool,
                    rank: int, world: int, out: Path, step: int) -> list[Path]:
    """Write one sample per held-out clip (see the module docstring); returns the files rank 0 wrote.

    cfg: DistillConfig. data: TrainingData. model: the DistillModel (its .transformer is sampled).
    ctx: the trainer's LossContext (device, autocast dtype, scheduler).
    """
    written: list[Path] = []
    if sharded or rank == 0:
        written = _sample(cfg, data, keys[: cfg.eval.sample_clips], model, ctx, rank, out / "samples" / f"step-{step:06d}")
    if world > 1:
        dist.barrier()
    return written


def _sample(cfg: Any, data: Any, keys: list[str], model: torch.nn.Module, ctx: Any, rank: int, folder: Path) -> list[Path]:
    from stages.media.corpus import ClipEntry
    from stages.media.decode import decode_clip
    from stages.media.video import write_mp4
    from stages.families.registry import student_for
    from stages.families.sampling import CPU_STEPS, GPU_STEPS

    student, task = student_for(cfg.student.model, cfg.student.family), cfg.student.task
    column = data.encodings
    video = from_dict(VideoConfig, column.producer_config["video"], source=f"{column.dirname}/column.json")
    enc_cfg = column.producer_config["encoders"]
    snapshot = data.store.require_snapshot()
    device = ctx.device
    transformer = model.transformer
    pipe = student.pipeline_around(transformer, cfg.student.model, enc_cfg["model"], task, device, transformer.dtype, low_memory=True)
    pipe.set_progress_bar_config(disable=True)
    steps = cfg.eval.sample_steps or (GPU_STEPS if device.type == "cuda" else CPU_STEPS)
    was_training = model.training
    model.eval()
    written = []
    try:
        for key in keys:
            entry = ClipEntry.from_json(snapshot.clips[snapshot.find(key)])
            clip = decode_clip(entry.url, video, data.store.storage_options, start=entry.start, end=entry.end)
            first = clip.frames[0]  # uint8 [H, W, 3]
            size = clip.frames.shape[:3]  # (F, H, W): the clip's bucket in a mixed-size store, else the store's size
            autocast = torch.autocast("cuda", dtype=ctx.autocast_dtype) if ctx.autocast_dtype else contextlib.nullcontext()
            with autocast:
                frames = student.sample(pipe, task, first, entry.caption or "", *size,
                                        steps, cfg.eval.sample_guidance, cfg.eval.seed, enc_cfg["max_text_len"])
            if rank == 0:
                path = folder / f"{key}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_mp4(path, frames, video.fps)
                written.append(path)
    finally:
        model.train(was_training)
        if model.tap is not None and model.tap._features is not None:
            model.tap.pop()  # the last denoising forward's tokens: not the next training step's
        # the VAE and text encoder leave with the pipeline: the trainer's memory is what it was before
        del pipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if written:
        log.info("wrote %d held-out sample(s) to %s (%d steps)", len(written), folder, steps)
    return written
