"""Samples for the comparison: every model generates from the same first frames, captions and seeds.

One stock pipeline per student model, without a LoRA: CogVideoXImageToVideoPipeline (stages/families/sampling.py's
build_pipeline; first frame + caption) or, for a Wan 2.1 text-to-video student, WanPipeline (the caption
alone, at the clip's size). Each run's LoRA is loaded into it, sampled from, and unloaded again, so the VAE
and text encoder load once however many runs (ablations) there are. The base model is the same pipeline
with no LoRA loaded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stages.media.video import write_mp4
from stages.evaluate.clips import HeldOutClip
from stages.families.sampling import Sampling, build_pipeline, sample_image_video_wan, sample_text_video, sample_video

log = logging.getLogger(__name__)

BASE = "base"


@dataclass(frozen=True)
class Model:
    name: str  # report row: a run's name, or "base"
    student: str  # student model (folder, hub id or "tiny")
    lora_dir: Path | None  # None: the base model
    task: str = "i2v"  # i2v: from the clip's first frame and caption; t2v: the caption alone


@dataclass(frozen=True)
class SamplingSettings:
    sampling: Sampling  # device, dtype, steps
    guidance: float
    seed: int  # clip i of the held-out list is sampled with seed + i, by every model
    max_text_len: int
    fps: float


def clip_seeds(clips: list[HeldOutClip], seed: int) -> dict[str, int]:
    return {c.key: seed + i for i, c in enumerate(clips)}


def sample_models(models: list[Model], clips: list[HeldOutClip], encoders_model: str, settings: SamplingSettings,
                  out_dir: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Sample every model on every clip -> ({model: {clip key: uint8 [F, H, W, 3]}}, {model: seconds}).

    Writes out_dir/<model>/<clip key>.mp4 (a key's '/' becomes a sub-folder).
    """
    s = settings.sampling
    seeds = clip_seeds(clips, settings.seed)
    samples: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    pipes = {}
    for model in models:
        if (model.student, model.task) not in pipes:
            pipes[model.student, model.task] = _build(model.student, model.task, encoders_model, s)
        pipe, sample = pipes[model.student, model.task]
        if model.lora_dir is not None:
            pipe.load_lora_weights(str(model.lora_dir), adapter_name="evaluate")
        try:
            t0 = time.perf_counter()
            samples[model.name] = {}
            for clip in clips:
                frames = sample(pipe, clip, s.steps, settings.guidance, seeds[clip.key], settings.max_text_len)
                samples[model.name][clip.key] = frames
                path = out_dir / model.name / f"{clip.key}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_mp4(path, frames, settings.fps)
            seconds[model.name] = time.perf_counter() - t0
            log.info("sampled %s on %d clips in %.1f s", model.name, len(clips), seconds[model.name])
        finally:
            if model.lora_dir is not None:
                pipe.unload_lora_weights()
    return samples, seconds


def _build(student: str, task: str, encoders_model: str, s: Sampling) -> tuple[object, Callable]:
    """(the stock pipeline of `student` without a LoRA, a function (pipe, clip, steps, guidance, seed, text len) -> frames):
    CogVideoX I2V and Wan 2.1 I2V from the clip's first frame and caption, Wan 2.1 T2V from the caption at the clip's size."""
    from stages.families.registry import infer_family, student_for

    family = student_for(student, None)
    if hasattr(family, "sample"):  # a family that samples through its own stock pipelines (until Student has a sampling interface)
        pipe = family.build_pipeline(student, encoders_model, None, s.device, s.dtype, task)
        return pipe, lambda p, c, *a: family.sample(p, task, c.frames[0], c.caption or "", c.frames.shape[0], *a)
    if infer_family(student, None) != "wan":
        pipe = build_pipeline(student, encoders_model, None, s.device, s.dtype)
        return pipe, lambda p, c, *a: sample_video(p, c.frames[0], c.caption, c.frames.shape[0], *a)
    from stages.families.wan.family import build_wan_pipeline

    pipe = build_wan_pipeline(student, encoders_model, None, s.device, s.dtype, task=task)
    if task == "i2v":
        return pipe, lambda p, c, *a: sample_image_video_wan(p, c.frames[0], c.caption or "", c.frames.shape[0], *a)
    return pipe, lambda p, c, *a: sample_text_video(p, c.caption or "", *c.frames.shape[:3], *a)


def grid_video(real: np.ndarray, samples: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 [F, H, W, 3] real clip and samples -> [F, bar + H, W * (1 + models), 3]: real | base | runs, labelled."""
    from PIL import Image, ImageDraw

    names = ["real", *samples]
    panels = [real, *samples.values()]
    f = min(p.shape[0] for p in panels)
    row = np.concatenate([p[:f] for p in panels], axis=2)
    h, w = real.shape[1:3]
    bar = max(12, h // 12)
    img = Image.new("RGB", (row.shape[2], bar), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        draw.text((i * w + 3, max(0, (bar - 11) // 2)), name[: max(4, w // 6)], fill=(255, 255, 255))
    header = np.broadcast_to(np.asarray(img), (f, bar, row.shape[2], 3))
    return np.ascontiguousarray(np.concatenate([header, row], axis=1))


def write_grids(clips: list[HeldOutClip], samples: dict[str, dict[str, np.ndarray]], out_dir: Path, fps: float) -> list[Path]:
    """out_dir/<clip key>.mp4 per clip: real | base | runs side by side (samples' model order)."""
    paths = []
    for clip in clips:
        path = out_dir / f"{clip.key}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, grid_video(clip.frames, {name: by_clip[clip.key] for name, by_clip in samples.items()}), fps)
        paths.append(path)
    return paths
