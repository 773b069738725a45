"""Samples for the comparison: every model generates from the same first frames, captions and seeds.

One stock pipeline per (student model, task), without a LoRA: the family's pipeline of the task
(Student.build_pipeline), sampled by Student.sample from the held-out clip's first frame and caption
(image-to-video tasks: CogVideoX I2V, Wan 2.1 I2V, Wan 2.2 TI2V) or its caption alone at the clip's size
(text-to-video: CogVideoX T2V, Wan 2.1 T2V). Each run's LoRA is loaded into it, sampled from, and unloaded again, so the VAE
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
from stages.families.registry import student_for
from stages.families.sampling import Sampling

log = logging.getLogger(__name__)

BASE = "base"


@dataclass(frozen=True)
class Model:
    name: str  # report row: a run's name, or "base"
    student: str  # student model (folder, hub id or "tiny")
    lora_dir: Path | None  # None: the base model
    task: str = "i2v"  # the run's student.task: image-to-video ones from the clip's first frame and caption


@dataclass(frozen=True)
class SamplingSettings:
    sampling: Sampling  # device, dtype, steps
    guidance: float
    seeds: tuple[int, ...]  # every clip is sampled once per seed, by every model (paired comparisons)
    max_text_len: int
    fps: float


def sample_name(key: str, seed: int) -> str:
    """The file stem of one sample: flat (a key's '/' becomes '__', as VBench wants flat names) plus its seed."""
    return f"{key.replace('/', '__')}__seed{seed}"


def sample_models(models: list[Model], clips: list[HeldOutClip], encoders_model: str, settings: SamplingSettings,
                  out_dir: Path) -> tuple[dict[str, dict[tuple[str, int], np.ndarray]], dict[str, float]]:
    """Sample every model on every clip and seed -> ({model: {(clip key, seed): uint8 [F, H, W, 3]}}, {model: seconds}).

    Writes out_dir/<model>/<sample_name(key, seed)>.mp4.
    """
    s = settings.sampling
    samples: dict[str, dict[tuple[str, int], np.ndarray]] = {}
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
                for seed in settings.seeds:
                    frames = sample(pipe, clip, s.steps, settings.guidance, seed, settings.max_text_len)
                    samples[model.name][clip.key, seed] = frames
                    path = out_dir / model.name / f"{sample_name(clip.key, seed)}.mp4"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_mp4(path, frames, settings.fps)
            seconds[model.name] = time.perf_counter() - t0
            log.info("sampled %s on %d clips x %d seeds in %.1f s", model.name, len(clips), len(settings.seeds), seconds[model.name])
        finally:
            if model.lora_dir is not None:
                pipe.unload_lora_weights()
    return samples, seconds


def _build(student: str, task: str, encoders_model: str, s: Sampling) -> tuple[object, Callable]:
    """(the stock pipeline of `student`'s task without a LoRA, a function (pipe, clip, steps, guidance, seed, text len)
    -> frames): the family samples from the held-out clip's first frame (uint8 [H, W, 3]) and caption at its size."""
    family = student_for(student)
    pipe = family.build_pipeline(student, encoders_model, None, task, s.device, s.dtype)

    def sample(p, clip: HeldOutClip, steps: int, guidance: float, seed: int, max_text_len: int):
        frames, height, width = clip.frames.shape[:3]
        return family.sample(p, task, clip.frames[0], clip.caption or "", frames, height, width, steps, guidance, seed, max_text_len)

    return pipe, sample


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


def write_grids(clips: list[HeldOutClip], samples: dict[str, dict[tuple[str, int], np.ndarray]], out_dir: Path, fps: float,
                seed: int) -> list[Path]:
    """out_dir/<flat clip key>.mp4 per clip: real | base | runs side by side (samples' model order), at one seed."""
    paths = []
    for clip in clips:
        path = out_dir / f"{clip.key.replace('/', '__')}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, grid_video(clip.frames, {name: by_clip[clip.key, seed] for name, by_clip in samples.items()}), fps)
        paths.append(path)
    return paths
