"""Sample one video from a distill run: the run's family builds the stock pipeline of its task, loads the run's
LoRA, and samples from a stored clip's first frame (image-to-video tasks) and caption (the `generate` command).

No family is named here: the run's sam2videox.json says the student (model, family, task), and the family
(stages/families/) answers which pipeline and how to call it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.config.extract import VideoConfig
from stages.config.loader import from_dict
from stages.families.registry import student_for
from stages.families.sampling import Sampling
from stages.media.corpus import ClipEntry
from stages.media.decode import decode_clip
from stages.store import FeatureStore


@dataclass(frozen=True)
class Generated:
    """One sample and what made it."""

    frames: np.ndarray  # uint8 [F, H, W, 3]
    fps: float
    key: str  # the clip whose first frame / caption conditioned it
    caption: str | None
    steps: int  # what the scheduler really stepped through
    task: str  # the run's student.task
    pipeline: str  # the stock pipeline's class name


def generate_from_run(run: Path, store: str, key: str, sampling: Sampling, guidance: float, seed: int,
                      dynamic_cfg: bool = False, lora: bool = True) -> Generated:
    """Sample the run's student (+ its LoRA unless lora=False) on clip `key` (a key, or @N) of `store`.

    Raises StoreError (the store or the key) and ValueError (the run folder, a family's refusal) with one line."""
    info_path = Path(run) / "lora" / "sam2videox.json"
    try:
        info = json.loads(info_path.read_text())
        student_cfg = info["config"]["student"]
        column_name = info["encodings_column"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{info_path}: not an exported distill run ({exc})") from None
    fstore = FeatureStore(store)
    column = fstore.column(column_name)
    video = from_dict(VideoConfig, column.producer_config["video"], source=f"{column.dirname}/column.json")
    snapshot = fstore.require_snapshot()
    entry = ClipEntry.from_json(snapshot.clips[snapshot.find(key)])
    encoders = column.producer_config["encoders"]
    task = student_cfg.get("task") or "i2v"
    family = student_for(student_cfg["model"], student_cfg.get("family"))
    decoded = decode_clip(entry.url, video, fstore.storage_options, start=entry.start, end=entry.end)
    first = decoded.frames[0]  # uint8 [H, W, 3]
    size = decoded.frames.shape[:3]  # (F, H, W): the clip's bucket in a mixed-size store, else the store's size
    pipe = family.build_pipeline(student_cfg["model"], encoders["model"], Path(run) / "lora" if lora else None, task,
                                 sampling.device, sampling.dtype)
    frames = family.sample(pipe, task, first, entry.caption or "", *size,
                           sampling.steps, guidance, seed, encoders["max_text_len"], dynamic_cfg)
    return Generated(frames, video.fps, entry.key, entry.caption, len(pipe.scheduler.timesteps), task, type(pipe).__name__)
