"""The held-out clips as evaluation reads them: real frames, caption and first-frame prompt.

Frames are decoded from the clip's source video with stages/media/decode.py at the video settings of the
store's encodings column (the settings the student trained at), so samples, real clips and the FVD
see the same frame count and size. The prompt is the clip's manifest prompt mapped into those frame
pixels, as the teacher column used it at extraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.config.loader import ConfigError, from_dict
from stages.media.corpus import ClipEntry, load_prompt_mask
from stages.media.decode import ClipError, decode_clip
from stages.config.extract import TeacherConfig, VideoConfig
from stages.store import FeatureStore, StoreError
from stages.evaluate.runs import EvaluateError
from stages.teacher.prompts import Prompt, manifest_prompt


@dataclass
class HeldOutClip:
    key: str
    caption: str
    frames: np.ndarray  # uint8 [F, H, W, 3], decoded at the store's video settings
    prompt: Prompt | None  # the manifest prompt on frame 0 in frame pixels; None: the teacher's own rule


def store_settings(store: FeatureStore, encodings_column: str | None = None, teacher_column: str | None = None) -> tuple[VideoConfig, dict, dict | None]:
    """(video settings, encoders config, teacher config or None) of the store's columns (the runs' own
    columns when they name them: lora/sam2videox.json)."""
    try:
        enc = store.column(encodings_column or "encodings")
        video = from_dict(VideoConfig, enc.producer_config["video"], source=f"{enc.dirname}/column.json")
        teacher = None
        # the SAM2 video teacher tracks samples: the runs' column when it is one ("teacher-<hash>"), else the
        # store's; a run distilled from another kind of teacher column still gets SAM2's masks
        if teacher_column and teacher_column.split("-", 1)[0] != "teacher":
            teacher_column = None
        if teacher_column or "teacher" in {c.name for c in store.columns()}:
            teacher = store.column(teacher_column or "teacher").producer_config["teacher"]
    except StoreError as exc:
        raise EvaluateError(f"store {store.url}: {exc}") from None
    return video, enc.producer_config["encoders"], teacher


def teacher_config(raw: dict) -> TeacherConfig:
    """The teacher column's keyed settings as a TeacherConfig (compute_dtype is derived, not a setting)."""
    try:
        return from_dict(TeacherConfig, {k: v for k, v in raw.items() if k != "compute_dtype"}, source="teacher/column.json")
    except ConfigError as exc:
        raise EvaluateError(f"the store's teacher column config cannot rebuild its SAM2: {exc}") from None


def load_clips(store: FeatureStore, keys: list[str], video: VideoConfig, prompt_source: str = "manifest") -> list[HeldOutClip]:
    """Decode the held-out clips; EvaluateError naming the clip when the store lacks it or its video is unreadable."""
    try:
        snapshot = store.require_snapshot()
    except StoreError as exc:
        raise EvaluateError(f"store {store.url}: {exc}") from None
    known = {row["key"]: row for row in snapshot.clips}
    missing = [k for k in keys if k not in known]
    if missing:
        raise EvaluateError(f"store {store.url} does not hold the held-out clip(s) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}: evaluate on the store the runs trained on")
    out = []
    for key in keys:
        entry = ClipEntry.from_json(known[key])
        try:
            clip = decode_clip(entry.url, video, store.storage_options, start=entry.start, end=entry.end)
        except ClipError as exc:
            raise EvaluateError(f"held-out clip '{key}': {exc}") from None
        prompt = None
        if prompt_source == "manifest" and entry.prompt:
            options = store.storage_options
            prompt = manifest_prompt(clip.map_prompt(entry.prompt, lambda url: load_prompt_mask(url, options)))
        out.append(HeldOutClip(key, entry.caption, clip.frames, prompt))
    return out
