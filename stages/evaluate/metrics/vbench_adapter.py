"""VBench (github.com/Vchitect/VBench, the `vbench` package) on generated samples, in its own venv.

Why a subprocess: vbench pins old transformers/numpy that clash with the diffusers stack of this
project, so it lives in `.venv-vbench` (`make vbench-env`) and is driven through its Python API in
that interpreter: `VBench(device, None, out).evaluate(videos_path=DIR, name=NAME, prompt_list={file:
caption}, dimension_list=DIMS, local=True, mode="custom_input")`. VBench writes
`OUT/NAME_eval_results.json` = {dimension: [aggregate score, [{"video_path": p, "video_results": s}, ...]]}
(its compute_<dimension> functions return (all_results, video_results); json writes the tuple as a
list; dynamic_degree's per-video results are booleans). `parse_results` reads that back.

Weights: vbench's `local=True` reads checkpoints from VBENCH_CACHE_DIR (default ~/.cache/vbench) and
would otherwise download them, which is impossible here; so every dimension's files are checked first
(`REQUIRED_WEIGHTS`), and a missing env or file skips VBench with a one-line reason instead of failing
the evaluation. All custom-input dimensions are "higher is better" (VBench normalises them so).
I2V dimensions (i2v_subject, i2v_background, camera_motion) live in the separate `vbench2_beta_i2v`
module of the VBench repo and need its image suite; they are added only when that module imports in
the env and `i2v=True` is asked for.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CUSTOM_DIMENSIONS = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree", "aesthetic_quality", "imaging_quality")
I2V_DIMENSIONS = ("i2v_subject", "i2v_background", "camera_motion")
DEFAULT_ENV = Path(".venv-vbench")
# Files vbench's init_submodules(local=True) loads per dimension, relative to VBENCH_CACHE_DIR.
REQUIRED_WEIGHTS: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino_model/facebookresearch_dino_main", "dino_model/dino_vitbase16_pretrain.pth"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
}
DIRECTIONS = {d: "higher" for d in CUSTOM_DIMENSIONS + I2V_DIMENSIONS}

# Runs inside .venv-vbench: arguments come in a JSON file (no shell quoting of captions).
_RUNNER = """
import json, sys
args = json.load(open(sys.argv[1]))
from vbench import VBench
VBench(args["device"], None, args["out"]).evaluate(
    videos_path=args["videos"], name=args["name"], prompt_list=args["prompts"],
    dimension_list=args["dimensions"], local=True, mode="custom_input")
"""


@dataclass
class VBenchResult:
    scores: dict[str, float]  # dimension -> aggregate score over all videos (higher is better)
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)  # video file name -> dimension -> score
    results_path: Path | None = None
    dimensions: tuple[str, ...] = ()


def cache_dir() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))


def env_python(env: Path) -> Path:
    return Path(env) / "bin" / "python"


def skip_reason(env: Path = DEFAULT_ENV, dimensions: tuple[str, ...] = CUSTOM_DIMENSIONS, weights: Path | None = None) -> str | None:
    """Why VBench cannot run now (one line), or None when the env and every needed weight file exist."""
    py = env_python(env)
    if not py.is_file():
        return f"VBench skipped: no virtual environment at {env} (run `make vbench-env`)"
    weights = Path(weights) if weights is not None else cache_dir()
    for dim in dimensions:
        if dim not in REQUIRED_WEIGHTS and dim not in I2V_DIMENSIONS:
            return f"VBench skipped: unknown dimension {dim!r} (known: {', '.join(CUSTOM_DIMENSIONS + I2V_DIMENSIONS)})"
        for rel in REQUIRED_WEIGHTS.get(dim, ()):
            if not (weights / rel).exists():
                return f"VBench skipped: {dim} needs {weights / rel}, which is absent (VBench weights cannot be downloaded here)"
    return None


def _i2v_available(env: Path) -> bool:
    probe = subprocess.run([str(env_python(env)), "-c", "import vbench2_beta_i2v"], capture_output=True)
    return probe.returncode == 0


def parse_results(path: Path) -> VBenchResult:
    """Read VBench's NAME_eval_results.json (format in the module docstring) -> VBenchResult."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"VBench results {path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"VBench results {path}: expected an object of dimensions, got {type(raw).__name__}")
    scores: dict[str, float] = {}
    per_video: dict[str, dict[str, float]] = {}
    for dim, entry in raw.items():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
            raise ValueError(f"VBench results {path}: dimension {dim!r} is not [aggregate, per-video list]")
        try:
            scores[dim] = float(entry[0])
        except (TypeError, ValueError):
            raise ValueError(f"VBench results {path}: dimension {dim!r} has a non-numeric aggregate {entry[0]!r}") from None
        for item in entry[1]:
            if not isinstance(item, dict) or "video_path" not in item or "video_results" not in item:
                raise ValueError(f"VBench results {path}: dimension {dim!r} has a per-video entry without video_path/video_results")
            value = float(item["video_results"])  # bool (dynamic_degree) -> 0.0 / 1.0
            if math.isfinite(value):
                per_video.setdefault(Path(item["video_path"]).name, {})[dim] = value
    return VBenchResult(scores, per_video, path, tuple(raw))


def run_vbench(videos_dir: Path, prompts: dict[str, str], out_dir: Path, name: str = "samples",
               env: Path = DEFAULT_ENV, dimensions: tuple[str, ...] = CUSTOM_DIMENSIONS, i2v: bool = False,
               device: str = "cuda", timeout_s: float | None = None) -> VBenchResult | None:
    """Score the mp4s in videos_dir with VBench; None (logged) when skipped.

    prompts: file name -> caption for EVERY video in videos_dir (vbench asserts that); results and
    vbench's own full_info JSON go to out_dir. Written against vbench 0.1.5's source (`make vbench-env`
    pins it); not run in this project's tests, which have no VBench weights.
    """
    reason = skip_reason(env, dimensions)
    if reason:
        log.warning(reason)
        return None
    dims = list(dimensions) + (list(I2V_DIMENSIONS) if i2v and _i2v_available(env) else [])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args_path = out_dir / f"{name}_vbench_args.json"
    args_path.write_text(json.dumps({"device": device, "out": str(out_dir), "videos": str(videos_dir), "name": name, "prompts": prompts, "dimensions": dims}))
    try:
        proc = subprocess.run([str(env_python(env)), "-c", _RUNNER, str(args_path)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("VBench skipped: its run took longer than %s s", timeout_s)
        return None
    results = out_dir / f"{name}_eval_results.json"
    if proc.returncode != 0 or not results.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        log.warning("VBench skipped: its run failed (exit %d): %s", proc.returncode, tail[0])
        return None
    return parse_results(results)
