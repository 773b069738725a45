"""`sam2videox evaluate`: runs (and the base model) compared on the held-out clips, one report.

    held-out clips (runs.py)  ->  samples per model (sampling.py)  ->  per sample: video metrics and
    the teacher's masks -> structure metrics (tracking.py)  ->  per model: means over clips, FVD
    against the real clips, VBench (when its env exists), training-time validation  ->  report

Every model samples the same clips from the same first frames, captions and seeds. The report's
protocol says what was measured how: backbone, frames, resolution, number of videos, seeds, steps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.store import FeatureStore, StoreError
from stages.evaluate.clips import load_clips, store_settings, teacher_config
from stages.evaluate.runs import EvaluateError, heldout_keys, resolve_runs
from stages.evaluate.sampling import BASE, Model, SamplingSettings, sample_models, write_grids
from stages.families.sampling import resolve_sampling

log = logging.getLogger(__name__)


@dataclass
class EvaluateOptions:
    store: str
    out: Path
    runs: list[Path] = field(default_factory=list)  # run folders, or folders of run folders
    base: bool = False  # also sample the base model (no LoRA)
    clips: int | None = None  # evaluate on the first N held-out clips (sorted by key); None: all
    seed: int = 0
    steps: int | None = None  # sampling steps (None: stages/families/sampling.py's default for the device)
    device: str | None = None
    dtype: str | None = None
    guidance: float = 6.0
    fvd_backbone: str = "tiny"  # "tiny", a VideoMAE folder/hub id, or a StyleGAN-V I3D TorchScript file
    vbench: bool = True
    holdout: float | None = None  # explicit split: stages.store.holdout's rule at this fraction
    holdout_keys: list[str] = field(default_factory=list)  # explicit split: these clip keys
    student: str | None = None  # base model's student when there are no runs (else the runs')


@dataclass
class EvaluateResult:
    rows: dict[str, dict[str, float | None]]
    protocol: dict[str, Any]
    paths: dict[str, Any]
    seconds: dict[str, float]


def evaluate(opts: EvaluateOptions) -> EvaluateResult:
    """Sample, measure, report. EvaluateError (one line) for bad input, before any model is built."""
    t_start = time.perf_counter()
    runs = resolve_runs(opts.runs)
    if opts.clips is not None and opts.clips < 1:
        raise EvaluateError(f"--clips must be >= 1, got {opts.clips}")
    if not runs and not opts.base:
        raise EvaluateError("nothing to evaluate: give --runs RUN ... and/or --base")
    try:
        sampling = resolve_sampling(opts.device, opts.dtype, opts.steps)
    except ValueError as exc:
        raise EvaluateError(str(exc)) from None
    store = FeatureStore(opts.store)
    enc_cols = {r.info.get("encodings_column") for r in runs} or {None}
    teacher_cols = {r.info.get("teacher_column") for r in runs if r.info.get("teacher_column")} or {None}
    if len(enc_cols) > 1 or len(teacher_cols) > 1:
        raise EvaluateError(f"the runs trained on different store columns ({', '.join(sorted(map(str, enc_cols | teacher_cols)))}): "
                            f"evaluate runs of one store together")
    video, encoders, teacher_raw = store_settings(store, next(iter(enc_cols)), next(iter(teacher_cols)))
    try:
        snapshot_rows = store.require_snapshot().clips  # in snapshot order, with the content hashes that group copies
    except StoreError as exc:
        raise EvaluateError(f"store {opts.store}: {exc}") from None
    keys, split = heldout_keys(runs, snapshot_rows, opts.holdout, opts.holdout_keys)
    if not keys:
        raise EvaluateError(f"no held-out clips in {opts.store} for these runs (their holdout.json lists none, or --holdout 0): "
                            f"train with data.holdout > 0 or data.holdout_keys")
    if opts.clips is not None:
        keys = keys[: opts.clips]
    teacher = teacher_config(teacher_raw) if teacher_raw is not None else None
    clips = load_clips(store, keys, video, teacher.prompt if teacher else "manifest")
    students = {r.student_model for r in runs}
    base_student = opts.student or (sorted(students)[0] if students else None)
    if opts.base and base_student is None:
        raise EvaluateError("--base without runs needs --student MODEL (the base student to sample)")
    if opts.base and len(students) > 1 and opts.student is None:
        raise EvaluateError(f"the runs use different students ({', '.join(sorted(students))}): name the base with --student")
    tasks = {r.student_task for r in runs}
    base_task = sorted(tasks)[0] if tasks else "i2v"
    models = ([Model(BASE, base_student, None, base_task)] if opts.base else []) + [
        Model(r.name, r.student_model, r.lora_dir, r.student_task) for r in runs
    ]

    from stages.evaluate.metrics.fvd import build_fvd_backbone

    try:  # before sampling: a backbone that cannot load is bad input, not a late failure
        backbone = build_fvd_backbone(opts.fvd_backbone, sampling.device)
    except ValueError as exc:
        raise EvaluateError(f"--fvd-backbone: {exc}") from None

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {"setup": time.perf_counter() - t_start}
    settings = SamplingSettings(sampling, opts.guidance, opts.seed, encoders["max_text_len"], video.fps)
    t0 = time.perf_counter()
    samples, per_model = sample_models(models, clips, encoders["model"], settings, out / "samples")
    seconds["sampling"] = time.perf_counter() - t0
    grids = write_grids(clips, samples, out / "grids", video.fps)

    t0 = time.perf_counter()
    tracker = None
    if teacher is not None:  # built once, after sampling (its pipelines are released by then)
        from stages.evaluate.tracking import build_teacher

        tracker = build_teacher(teacher, teacher.device)
    rows = {m.name: _sample_metrics(samples[m.name], clips, teacher, tracker) for m in models}
    seconds["metrics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fvd_protocol = _add_fvd(rows, samples, clips, backbone)
    seconds["fvd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vbench = (_add_vbench(rows, out / "samples", clips, [m.name for m in models], out / "vbench", str(sampling.device))
              if opts.vbench else {"skipped": "--no-vbench"})
    seconds["vbench"] = time.perf_counter() - t0

    for run in runs:
        rows[run.name].update(_validation(run.path))
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    rows = {name: {k: row.get(k) for k in columns} for name, row in rows.items()}  # None: not measurable for that model
    protocol = {
        "store": opts.store,
        "clips": keys,
        "split": split,
        "videos_per_model": len(clips),
        "frames": int(video.num_frames),
        "resolution": [int(video.height), int(video.width)],
        "fps": float(video.fps),
        "seeds": [opts.seed + i for i in range(len(clips))],
        "sampling_steps": sampling.steps,
        "guidance": opts.guidance,
        "device": str(sampling.device),
        "dtype": str(sampling.dtype).removeprefix("torch."),
        "models": {m.name: {"student": m.student, "lora": str(m.lora_dir) if m.lora_dir else None} for m in models},
        "teacher": {"model": teacher.model, "checkpoint": teacher.checkpoint, "image_size": teacher.image_size, "prompt": teacher.prompt}
        if teacher else None,
        "fvd": fvd_protocol,
        "validation": ("val/* columns: each run's last held-out validation (split=val rows of its metrics.jsonl, "
                       "stages/distill/validation.py); none for the base model or runs trained with eval.every=0"),
        "vbench": vbench,
        "sampling_seconds": per_model,
    }
    from stages.evaluate.report import write_report

    paths = write_report(rows, protocol, out)
    seconds["total"] = time.perf_counter() - t_start
    (out / "timing.json").write_text(json.dumps(seconds, indent=1))
    return EvaluateResult(rows, protocol, {"report": paths, "grids": [str(g) for g in grids], "samples": str(out / "samples")}, seconds)


def _mean(dicts: list[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in dicts[0]:
        values = [d[k] for d in dicts if d.get(k) is not None and np.isfinite(d[k])]
        out[k] = float(np.mean(values)) if values else None
    return out


def _sample_metrics(samples: dict[str, np.ndarray], clips, teacher, tracker) -> dict[str, float | None]:
    """Means over the clips of the weight-free video metrics and (with a teacher) the structure metrics."""
    from stages.evaluate.metrics.video import video_metrics

    per_clip = []
    for clip in clips:
        frames = samples[clip.key]
        m = dict(video_metrics(frames))
        if tracker is not None:
            from stages.evaluate.metrics.structure import structure_metrics
            from stages.evaluate.tracking import track_subject

            masks, _ = track_subject(tracker, frames, clip.prompt, teacher.prompt)
            m.update(structure_metrics(masks, frames))
        per_clip.append(m)
    return _mean(per_clip)


def _add_fvd(rows, samples, clips, backbone) -> dict:
    """FVD of each model's samples against the real held-out clips, one backbone for all; the protocol.

    A Frechet distance needs two videos a side at least: with one held-out clip the column is None and
    the protocol says why.
    """
    from stages.evaluate.metrics.fvd import fvd

    if len(clips) < 2:
        for name in samples:
            rows[name]["fvd"] = None
        return {**backbone.protocol(), "skipped": f"FVD needs >= 2 videos a side; {len(clips)} held-out clip(s) evaluated"}
    real = [c.frames for c in clips]
    protocol: dict = {}
    for name, by_clip in samples.items():
        value, protocol = fvd(real, [by_clip[c.key] for c in clips], backbone)
        rows[name]["fvd"] = float(value)
    return protocol


def _add_vbench(rows, samples_dir: Path, clips, names: list[str], out_dir: Path, device: str) -> dict:
    """VBench scores per model (vbench_<dimension> columns) through the adapter's own env; {"skipped": why} otherwise."""
    from stages.evaluate.metrics import vbench_adapter

    reason = vbench_adapter.skip_reason()
    if reason:
        return {"skipped": reason}
    prompts = {f"{c.key}.mp4": c.caption for c in clips}
    dimensions: set[str] = set()
    for name in names:
        result = vbench_adapter.run_vbench(samples_dir / name, prompts, out_dir, name=name.replace("/", "_"), device=device)
        if result is None:
            return {"skipped": f"VBench run failed for {name} (see the log)"}
        rows[name].update({f"vbench_{k}": float(v) for k, v in result.scores.items()})
        dimensions |= set(result.dimensions or result.scores)
    return {"dimensions": sorted(dimensions), "mode": "custom_input", "env": str(vbench_adapter.DEFAULT_ENV)}


def _validation(run: Path) -> dict[str, float]:
    """The run's last held-out validation (stages/distill/validation.py: metrics.jsonl rows with "split": "val",
    written at the run's last step): its terms as val/<term> columns. {} for a run trained without validation."""
    path = run / "metrics.jsonl"
    last = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line (killed run): the rows before it stand
            if isinstance(row, dict) and row.get("split") == "val" and isinstance(row.get("terms"), dict):
                last = row
    if last is None:
        return {}
    return {f"val/{k}": float(v) for k, v in last["terms"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
