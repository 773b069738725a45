"""Sample videos during training: the stock I2V pipeline around the student being trained.

Every `eval.sample_every` steps, for the first `eval.sample_clips` held-out clips: their first frame
(decoded from the corpus) and caption condition CogVideoXImageToVideoPipeline, built around the
trainer's own transformer with its current LoRA (no second copy of the student, nothing exported),
with a fixed seed per clip, so successive samples differ only by training. Written to
<run>/samples/step-NNNNNN/<key>.mp4.

The VAE and T5 are loaded only for this (the trainer never holds them) and released after, with the
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
    from diffusers import CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline

    from stages.media.corpus import ClipEntry
    from stages.media.decode import decode_clip
    from stages.media.video import write_mp4
    from stages.families.cogvideox.encoders import load_encoders
    from stages.families.sampling import CPU_STEPS, GPU_STEPS, sample_video

    from stages.families.registry import infer_family

    family = infer_family(cfg.student.model, getattr(cfg.student, "family", None))
    if family != "cogvideox":  # Wan samples go through `sam2videox generate` / `evaluate` (their stock pipelines)
        log.warning("eval.sample_every: in-training samples use CogVideoX's image-to-video pipeline; this run's student is %s: "
                    "skipped (sample its checkpoints with sam2videox generate or evaluate)", family)
        return []
    if cfg.student.task != "i2v":
        log.warning("eval.sample_every: sampling uses the image-to-video pipeline; this run trains task=%s: skipped", cfg.student.task)
        return []
    column = data.encodings
    video = from_dict(VideoConfig, column.producer_config["video"], source=f"{column.dirname}/column.json")
    enc_cfg = column.producer_config["encoders"]
    snapshot = data.store.require_snapshot()
    device = ctx.device
    transformer = model.transformer
    encoders = load_encoders(enc_cfg["model"], transformer.dtype, device, vae_slicing=True, vae_tiling=device.type == "cuda")
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=encoders.tokenizer, text_encoder=encoders.text_encoder, vae=encoders.vae, transformer=transformer,
        scheduler=CogVideoXDPMScheduler.from_config(ctx.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    steps = cfg.eval.sample_steps or (GPU_STEPS if device.type == "cuda" else CPU_STEPS)
    was_training = model.training
    model.eval()
    written = []
    try:
        for key in keys:
            entry = ClipEntry.from_json(snapshot.clips[snapshot.find(key)])
            first = decode_clip(entry.url, video, data.store.storage_options).frames[0]  # uint8 [H, W, 3]
            autocast = torch.autocast("cuda", dtype=ctx.autocast_dtype) if ctx.autocast_dtype else contextlib.nullcontext()
            with autocast:
                frames = sample_video(pipe, first, entry.caption, video.num_frames, steps, cfg.eval.sample_guidance,
                                      cfg.eval.seed, enc_cfg["max_text_len"])
            if rank == 0:
                path = folder / f"{key}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_mp4(path, frames, video.fps)
                written.append(path)
    finally:
        model.train(was_training)
        if model.tap is not None and model.tap._features is not None:
            model.tap.pop()  # the last denoising forward's tokens: not the next training step's
        # the VAE and T5 leave with the pipeline: the trainer's memory is what it was before
        del pipe, encoders
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if written:
        log.info("wrote %d held-out sample(s) to %s (%d steps)", len(written), folder, steps)
    return written
