"""`sam2videox evaluate`: runs (and the base model) compared on the held-out clips, one report.

    held-out clips (runs.py)  ->  samples per model, clip and seed (sampling.py)  ->  per sample: the
    registry's video metrics and, on the judge's masks (judge.py), its structure metrics  ->  per
    model: means with intervals, paired differences to the reference (scoring.py, stats.py); FVD against
    the real clips, VBench (when its env exists), training-time validation  ->  report.py

Every model samples the same clips from the same first frames, captions and seeds, so differences are
paired. The report's protocol says what was measured how: backbone, frames, resolution, number of
videos, seeds, steps, judge.
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
from stages.evaluate.runs import EMA_SUFFIX, EvaluateError, heldout_keys, resolve_runs
from stages.evaluate.judge import Judge, JudgeConfig, JudgeError, resolve_judge
from stages.evaluate.sampling import BASE, Model, SamplingSettings, sample_models, write_grids
from stages.evaluate.scoring import Video, measure_videos, summarise
from stages.families.registry import student_for
from stages.families.sampling import resolve_sampling

log = logging.getLogger(__name__)


@dataclass
class EvaluateOptions:
    store: str
    out: Path
    runs: list[Path] = field(default_factory=list)  # run folders, or folders of run folders
    base: bool = False  # also sample the base model (no LoRA)
    clips: int | None = None  # evaluate on the first N held-out clips (sorted by key); None: all
    seed: int = 0  # first sampling seed
    seeds: int = 1  # samples per clip and model, with seeds seed .. seed + seeds - 1 (paired across models)
    reference: str | None = None  # the row every other model is compared to (default: base when --base, else none)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    steps: int | None = None  # sampling steps (None: stages/families/sampling.py's default for the device)
    device: str | None = None
    dtype: str | None = None
    guidance: float = 6.0
    fvd_backbone: str = "tiny"  # tiny | videomae:PATH | i3d:PATH | stylegan-v:PATH | PATH (metrics/fvd.py)
    fvd_min_videos: int = 32  # below this many videos a side FVD is "n/a (N=..)" (metrics/fvd.py MIN_VIDEOS)
    vbench: bool = True
    holdout: float | None = None  # explicit split: stages.store.holdout's rule at this fraction
    holdout_keys: list[str] = field(default_factory=list)  # explicit split: these clip keys
    student: str | None = None  # base model's student when there are no runs (else the runs')
    ema: bool = False  # also each run's EMA weights (lora_ema/, train.ema.decay) as a row "<run>-ema"


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
    if len(enc_cols) > 1:
        raise EvaluateError(f"the runs trained on different encodings columns ({', '.join(sorted(map(str, enc_cols)))}): "
                            f"evaluate runs of one store together")
    # runs may differ in their teacher column (an ablation against DINOv2 or another SAM2 feature on the same
    # store); the SAM2 settings that prompt the clips and pick the judge come from the one most runs used
    video, encoders, teacher_raw = store_settings(store, next(iter(enc_cols)), _common_teacher_column(runs))
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
    if opts.ema:  # each run's EMA row beside its raw one (same student, task and held-out clips)
        models += [Model(r.name + EMA_SUFFIX, r.student_model, r.ema_dir, r.student_task) for r in runs]

    names = [m.name for m in models]
    reference = opts.reference or (BASE if opts.base else None)
    if reference is not None and reference not in names:
        raise EvaluateError(f"--reference {reference}: not one of the models evaluated ({', '.join(names)})")
    if opts.seeds < 1:
        raise EvaluateError(f"--seeds must be >= 1, got {opts.seeds}")
    judge_plan = _plan_judge(opts.judge, teacher)

    from stages.evaluate.metrics.fvd import build_fvd_backbone

    try:  # before sampling: a backbone that cannot load is bad input, not a late failure
        backbone = build_fvd_backbone(opts.fvd_backbone, sampling.device)
    except ValueError as exc:
        raise EvaluateError(f"--fvd-backbone: {exc}") from None

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {"setup": time.perf_counter() - t_start}
    seeds = tuple(opts.seed + j for j in range(opts.seeds))
    settings = SamplingSettings(sampling, opts.guidance, seeds, encoders["max_text_len"], video.fps)
    t0 = time.perf_counter()
    samples, per_model = sample_models(models, clips, encoders["model"], settings, out / "samples")
    seconds["sampling"] = time.perf_counter() - t0
    grids = write_grids(clips, samples, out / "grids", video.fps, seeds[0])

    t0 = time.perf_counter()
    judge = None
    if judge_plan is not None:  # built once, after sampling (its pipelines are released by then)
        try:
            judge = Judge(opts.judge, judge_plan)
        except JudgeError as exc:
            raise EvaluateError(str(exc)) from None
    rows = measure_videos(_videos(models, clips, samples, video.fps), judge)
    summary = summarise(rows, names, reference)
    seconds["metrics"] = time.perf_counter() - t0

    corpus: dict[str, dict[str, Any]] = {n: {} for n in names}
    t0 = time.perf_counter()
    fvd_protocol = _add_fvd(corpus, samples, clips, backbone, opts.fvd_min_videos)
    seconds["fvd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vbench = (_add_vbench(corpus, out / "samples", clips, models, seeds[0], out / "vbench", str(sampling.device))
              if opts.vbench else {"skipped": "--no-vbench"})
    seconds["vbench"] = time.perf_counter() - t0

    for run in runs:
        corpus[run.name].update(_validation(run.path))
    protocol = {
        "store": opts.store,
        "clips": keys,
        "split": split,
        "videos_per_model": len(clips) * len(seeds),
        "clips_per_model": len(clips),
        "frames": int(video.num_frames),
        "resolution": [int(video.height), int(video.width)],
        "fps": float(video.fps),
        # a mixed-size store: each clip is sampled at its own bucket (frames and resolution above are then unused)
        **({"buckets": [list(b) for b in video.bucket_shapes()]} if video.buckets is not None else {}),
        "seeds": list(seeds),
        "reference": reference,
        "sampling_steps": sampling.steps,
        "guidance": opts.guidance,
        "device": str(sampling.device),
        "dtype": str(sampling.dtype).removeprefix("torch."),
        "models": {m.name: {"student": m.student, "lora": str(m.lora_dir) if m.lora_dir else None, "task": m.task} for m in models},
        "teacher": {"model": teacher.model, "checkpoint": teacher.checkpoint, "image_size": teacher.image_size, "prompt": teacher.prompt}
        if teacher else None,
        "judge": ({**judge_plan.describe(), "prompt": _judge_prompt_rule(opts.judge)} if judge_plan
                  else {"skipped": "no teacher column to choose a judge from: pass --judge-model (structure metrics left out)"}),
        "fvd": fvd_protocol,
        "validation": ("val/* columns: each run's last held-out validation (split=val rows of its metrics.jsonl, "
                       "stages/distill/validation.py); none for the base model or runs trained with eval.every=0"),
        "vbench": vbench,
        "sampling_seconds": per_model,
    }
    from stages.evaluate.report import flat_rows, write_report

    warnings = list(judge_plan.warnings) if judge_plan else []
    paths = write_report(summary, corpus, protocol, out, _corpus_definitions(fvd_protocol, vbench), warnings)
    seconds["total"] = time.perf_counter() - t_start
    (out / "timing.json").write_text(json.dumps(seconds, indent=1))
    return EvaluateResult(flat_rows(summary, corpus), protocol, {"report": paths, "grids": [str(g) for g in grids], "samples": str(out / "samples")}, seconds)


def _common_teacher_column(runs) -> str | None:
    """The SAM2 teacher column (teacher-<hash>) most runs trained against (ties: the first by name), else None."""
    used = [r.info.get("teacher_column") for r in runs]
    sam2 = sorted(c for c in used if c and c.split("-", 1)[0] == "teacher")
    return max(dict.fromkeys(sam2), key=sam2.count) if sam2 else None


def _plan_judge(cfg: JudgeConfig, teacher) -> Any:
    """The resolved judge, or None when there is nothing to choose it from (no teacher, judge model auto)."""
    if cfg.model == "auto" and teacher is None:
        return None
    try:
        return resolve_judge(cfg, teacher)
    except JudgeError as exc:
        raise EvaluateError(str(exc)) from None


def _judge_prompt_rule(cfg: JudgeConfig) -> str:
    return (f"image-to-video samples: the held-out clip's manifest prompt on frame 0 when the store has one; "
            f"otherwise (and every text-to-video sample) found on the sample's own frame 0 by {cfg.prompt}")


def _videos(models: list[Model], clips, samples, fps: float = 8.0) -> list[Video]:
    """Every sample as a Video for scoring: image-to-video samples keep the clip's frame-0 prompt (they start
    from that frame); text-to-video ones are prompted on their own frame 0 by the judge."""
    by_key = {c.key: c for c in clips}
    out = []
    for m in models:
        from_first_frame = student_for(m.student).starts_from_first_frame(m.task)
        for (key, seed), frames in samples[m.name].items():
            clip = by_key[key]
            out.append(Video(m.name, key, seed, frames, clip.caption, clip.prompt if from_first_frame else None, fps=fps))
    return out


def _corpus_definitions(fvd_protocol: dict, vbench: dict) -> dict[str, str]:
    out = {"fvd": f"Frechet video distance to the real held-out clips ({fvd_protocol.get('protocol', fvd_protocol.get('backbone'))}); "
                  f"lower is closer; not comparable across protocols, frame counts or N"}
    out.update(vbench.get("definitions", {}) if isinstance(vbench, dict) else {})
    out.update({"val/diff": "the run's last held-out validation L_diff at fixed timesteps and noise (lower is better)",
                "val/lgf": "held-out LGF loss between projected student tokens and the teacher's LGF (lower is better)"})
    return out


def _add_fvd(corpus, samples, clips, backbone, min_videos: int) -> dict:
    """FVD of each model's samples (every clip and seed) against the real held-out clips, one backbone for all,
    with its bootstrap interval; "n/a (N=..)" below min_videos a side (metrics/fvd.py). Returns the protocol."""
    from stages.evaluate.metrics.fvd import fvd, fvd_cell

    real = [c.frames for c in clips]
    protocol: dict = {}
    for name, by_sample in samples.items():
        result = fvd(real, list(by_sample.values()), backbone, min_videos=min_videos)
        protocol = result.protocol
        corpus[name]["fvd"] = fvd_cell(result)
    return protocol


def _add_vbench(corpus, samples_dir: Path, clips, models: list[Model], seed: int, out_dir: Path, device: str) -> dict:
    """VBench per model (vbench_<dimension> columns, at the first seed) through the adapter's own env: the
    custom-input dimensions, and VBench-I2V against the held-out first frames for models that start from
    them. {"skipped": why} when it cannot run; notes, definitions and the scope note otherwise."""
    from stages.evaluate.metrics import vbench_adapter
    from stages.evaluate.sampling import sample_name

    reason = vbench_adapter.skip_reason()
    if reason:
        return {"skipped": reason}
    prompts = {sample_name(c.key, seed): c.caption for c in clips}
    first_frames = vbench_adapter.write_first_frames({sample_name(c.key, seed): c.frames[0] for c in clips}, out_dir / "first_frames")
    notes: list[str] = []
    dimensions: set[str] = set()
    for m in models:
        i2v = student_for(m.student).starts_from_first_frame(m.task)
        result = vbench_adapter.evaluate_vbench(samples_dir / m.name, prompts, out_dir, name=m.name, device=device,
                                                first_frames_dir=first_frames if i2v else None,
                                                i2v_dimensions=vbench_adapter.I2V_DIMENSIONS if i2v else ())
        corpus[m.name].update({f"vbench_{k}": float(v) for k, v in result.scores.items()})
        dimensions |= set(result.scores)
        notes += [f"{m.name}: {n}" for n in result.notes]
    columns = [f"vbench_{d}" for d in sorted(dimensions)]
    return {"dimensions": sorted(dimensions), "mode": "custom_input + VBench-I2V (first frames)", "env": str(vbench_adapter.DEFAULT_ENV),
            "notes": notes, "definitions": vbench_adapter.definitions(columns), "scope": vbench_adapter.SCOPE_NOTE}


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
