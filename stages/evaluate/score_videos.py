"""`sam2videox score --videos DIR`: the evaluation's metrics, judge and report on videos made elsewhere.

Layout of DIR (one sub-folder per method, the same file names in each: a name is one paired sample):

    DIR/<method>/<name>.mp4         the method's video for sample <name> (any container PyAV reads)
    DIR/<method>/<name>.npz         optional ground-truth masks ("masks": bool [F, H, W]): measured on
                                    them instead of asking the judge (the sample corpus's twins ship these)
    DIR/<name>.txt                  optional caption (the grounded judge's query, VBench's prompt)
    DIR/<name>.png                  optional first frame (VBench's image-to-video dimensions)
    DIR/real/<name>.mp4             optional real videos: FVD of each method against them

Names are paired across methods (same clip, seed 0), so each method's paired difference to the
reference method (--reference, default the first method in name order) has an interval over names.
A video that cannot be decoded is written to the report's ledger with its reason and its name is left
out of every method (the pairing stays intact); the CLI then exits 2 naming the file, unless
--skip-unreadable.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.evaluate.judge import Judge, JudgeConfig, JudgeError, resolve_judge
from stages.evaluate.runs import EvaluateError
from stages.evaluate.scoring import Video, measure_videos, summarise
from stages.media.video import VideoReadError, read_video

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
REAL = "real"


@dataclass
class ScoreOptions:
    videos: Path  # DIR as the module docstring lays it out
    out: Path  # report.md/.json/.png
    reference: str | None = None  # the method every other is compared to (default: the first in name order)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    use_masks: bool = True  # measure on <name>.npz ground-truth masks where present (False: always the judge)
    fvd_backbone: str = "tiny"  # tiny | videomae:PATH | i3d:PATH | stylegan-v:PATH | PATH (metrics/fvd.py)
    fvd_min_videos: int = 32  # below this many videos a side FVD is "n/a (N=..)"
    vbench: bool = True


@dataclass
class ScoreResult:
    methods: list[str]
    names: list[str]
    ledger: list[dict]  # {"file", "reason"} per video left out
    paths: dict[str, Path]


def discover(root: Path) -> tuple[list[str], list[str], dict[str, dict[str, Path]]]:
    """(methods, sample names, {method: {name: video path}}); EvaluateError (one line) for a bad layout."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluateError(f"--videos {root}: not a folder")
    methods = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != REAL and _videos_in(p))
    if not methods:
        raise EvaluateError(f"--videos {root}: no method sub-folders with videos ({', '.join(VIDEO_SUFFIXES)}) in it")
    files = {m: _videos_in(root / m) for m in methods}
    names = sorted(files[methods[0]])
    for m in methods[1:]:
        if set(files[m]) != set(names):
            only_first = sorted(set(names) - set(files[m]))[:3]
            only_other = sorted(set(files[m]) - set(names))[:3]
            raise EvaluateError(f"--videos {root}: method folders {methods[0]} and {m} hold different file names "
                                f"(only in {methods[0]}: {', '.join(only_first) or '-'}; only in {m}: {', '.join(only_other) or '-'}): "
                                f"each method needs the same names to pair them")
    return methods, names, files


def _videos_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}


def _masks(path: Path, frames: np.ndarray) -> np.ndarray | None:
    """Ground-truth masks beside a video (<name>.npz with "masks" bool [F, H, W] matching the frames), else None."""
    side = path.with_suffix(".npz")
    if not side.is_file():
        return None
    try:
        with np.load(side, allow_pickle=False) as z:
            masks = z["masks"].astype(bool)
    except (OSError, KeyError, ValueError) as exc:
        raise EvaluateError(f"{side}: not a masks sidecar (needs an array 'masks' bool [F, H, W]: {type(exc).__name__})") from None
    if masks.shape != frames.shape[:3]:
        raise EvaluateError(f"{side}: masks {list(masks.shape)} do not match the video's frames {list(frames.shape[:3])}")
    return masks


def _read(files: dict[str, dict[str, Path]], names: list[str], use_masks: bool) -> tuple[dict, list[dict]]:
    """{(method, name): (frames, masks)} for every name whose videos all decode; the ledger of the rest."""
    loaded, ledger, bad = {}, [], set()
    for method, by_name in files.items():
        for name in names:
            try:
                frames, fps = read_video(by_name[name])
            except VideoReadError as exc:
                ledger.append({"file": str(by_name[name]), "method": method, "name": name, "reason": str(exc)})
                bad.add(name)
                continue
            loaded[method, name] = (frames, _masks(by_name[name], frames) if use_masks else None, fps)
    return {k: v for k, v in loaded.items() if k[1] not in bad}, ledger


def score(opts: ScoreOptions) -> ScoreResult:
    """Measure every method's videos, pair them by name, write the report. EvaluateError for bad input."""
    t0 = time.perf_counter()
    root = Path(opts.videos)
    methods, names, files = discover(root)
    reference = opts.reference or methods[0]
    if reference not in methods:
        raise EvaluateError(f"--reference {reference}: not a method folder of {root} ({', '.join(methods)})")
    from stages.evaluate.metrics.fvd import build_fvd_backbone

    try:
        backbone = build_fvd_backbone(opts.fvd_backbone, "cpu" if opts.judge.device == "auto" else opts.judge.device)
    except ValueError as exc:
        raise EvaluateError(f"--fvd-backbone: {exc}") from None
    loaded, ledger = _read(files, names, opts.use_masks)
    kept = [n for n in names if all((m, n) in loaded for m in methods)]
    if not kept:
        raise EvaluateError(f"--videos {root}: no sample name decodes in every method ({ledger[0]['reason'] if ledger else 'none found'})")
    captions = {n: _caption(root, n) for n in kept}
    videos = [Video(m, n, 0, loaded[m, n][0], captions[n], None, loaded[m, n][1], loaded[m, n][2]) for m in methods for n in kept]
    judge, plan = None, None
    if any(v.masks is None for v in videos):
        if opts.judge.model == "auto":
            raise EvaluateError(f"--videos {root}: videos without <name>.npz masks need a judge: pass --judge-model "
                                f"(a SAM2 config, e.g. sam2.1_hiera_s) and --judge-checkpoint")
        try:
            plan = resolve_judge(opts.judge, None)
            judge = Judge(opts.judge, plan)
        except JudgeError as exc:
            raise EvaluateError(str(exc)) from None
    rows = measure_videos(videos, judge)
    summary = summarise(rows, methods, reference)
    corpus: dict[str, dict[str, Any]] = {m: {} for m in methods}
    fvd_protocol = _fvd(corpus, root, methods, kept, loaded, backbone, opts.fvd_min_videos)
    masks_used = sum(v.masks is not None for v in videos)
    protocol = {
        "videos": str(root),
        "methods": methods,
        "names": kept,
        "reference": reference,
        "videos_per_method": len(kept),
        "structure_masks": (f"ground-truth <name>.npz masks for {masks_used} of {len(videos)} videos"
                            + (f"; the judge for the rest" if judge else "")),
        "judge": ({**plan.describe(), "prompt": f"found on each video's own frame 0 by {opts.judge.prompt}"} if plan
                  else {"skipped": "every video has ground-truth masks"}),
        "fvd": fvd_protocol,
        "vbench": {"skipped": "score runs VBench through `evaluate`'s adapter only with --vbench and its env"} if not opts.vbench
        else _vbench_note(),
        "ledger": ledger,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    from stages.evaluate.report import write_report

    warnings = list(plan.warnings) if plan else []
    if ledger:
        warnings.append(f"{len(ledger)} video(s) could not be read and their names were left out of every method (see protocol.ledger)")
    paths = write_report(summary, corpus, protocol, opts.out, warnings=warnings, title=f"Scores of {root.name}")
    (Path(opts.out) / "ledger.json").write_text(json.dumps(ledger, indent=1))
    return ScoreResult(methods, kept, ledger, paths)


def _caption(root: Path, name: str) -> str:
    side = root / f"{name}.txt"
    return side.read_text().strip() if side.is_file() else ""


def _fvd(corpus, root: Path, methods: list[str], names: list[str], loaded, backbone, min_videos: int) -> dict:
    """FVD of each method against DIR/real (same names) when that folder exists."""
    real_dir = root / REAL
    if not real_dir.is_dir():
        for m in methods:
            corpus[m]["fvd"] = {"value": None, "skipped": "n/a (no real/ folder)"}
        return {"skipped": f"no {real_dir} folder of real videos"}
    from stages.evaluate.metrics.fvd import fvd, fvd_cell

    real_files = _videos_in(real_dir)
    real = []
    for n in names:
        if n in real_files:
            try:
                real.append(read_video(real_files[n])[0])
            except VideoReadError as exc:
                log.warning("FVD: %s", exc)
    protocol: dict = {}
    for m in methods:
        result = fvd(real, [loaded[m, n][0] for n in names], backbone, min_videos=min_videos)
        protocol = result.protocol
        corpus[m]["fvd"] = fvd_cell(result)
    return protocol


def _vbench_note() -> dict:
    from stages.evaluate.metrics import vbench_adapter

    reason = vbench_adapter.skip_reason()
    return {"skipped": reason} if reason else {"note": "VBench on score folders: run `evaluate`'s adapter on DIR/<method>"}
