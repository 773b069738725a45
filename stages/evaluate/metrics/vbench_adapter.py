"""VBench (github.com/Vchitect/VBench, the `vbench` package) and VBench-I2V on generated samples, in their own venv.

Why a subprocess: vbench pins old transformers/numpy that clash with the diffusers stack of this
project, so it lives in `.venv-vbench` (`make vbench-env`) and is driven through its Python API in
that interpreter. Two calls, each its own subprocess so one failing keeps the other's scores:

- T2V quality dimensions (`CUSTOM_DIMENSIONS`): `VBench(device, None, out).evaluate(videos_path=DIR,
  name=NAME, prompt_list={file: caption}, dimension_list=DIMS, local=True, mode="custom_input")`.
  custom_input lists DIR with os.listdir (not recursive): a sample in a sub-folder would be dropped
  without a word, hence the flat staging below.
- I2V dimensions (`i2v_subject`, `i2v_background`): `VBenchI2V(device, SUITE, out).evaluate(
  videos_path=DIR, name=NAME_i2v, dimension_list=DIMS, local=True)` in VBench's standard mode, with
  SUITE a full-info JSON the adapter writes in VBench-I2V's own format: one entry per sample,
  {"prompt_en": <flat name>, "dimension": DIMS, "image_name": <absolute path of its first frame>}.
  Standard mode finds the video `<prompt_en>-0.mp4` (VBench's `$prompt-$index.mp4` naming, one
  sample per held-out clip) and vbench2_beta_i2v.utils.load_i2v_dimension_info pairs it with
  os.path.join(image_root, image_name), which is image_name itself when absolute. This works on
  vbench 0.1.5 (whose VBenchI2V has no custom-input mode) and on later VBench (which reads
  "image_name" first). The first frame is used as given: VBench-I2V's "resolution" (which
  aspect-ratio crop of its image suite to read) only picks files under its suite folder, so it does
  not apply; the first frames should be the frames the samples were conditioned on, at their size.
- `camera_motion` is never run: vbench2_beta_i2v/camera_motion.py reads the camera instruction it
  scores ("camera pans left", ...) from the video's file name, which held-out samples do not carry.

Sample names: VBench needs flat file names, so a clip key is staged as `flat_name(key)`: "%" -> "%25"
and "/" -> "%2F" (percent-encoding; `key_from_flat` = urllib's unquote reverses it exactly). "/" ->
"__" would not be reversible: the sample generator's twin keys already contain "__". Staged files
are symlinks under OUT/<name>_staged/: videos/<flat>-0.mp4 and first_frames/<flat>.png.

Results: VBench writes `OUT/NAME_eval_results.json` = {dimension: [aggregate, [{"video_path": p,
"video_results": s, ...}, ...]]} (compute_<dimension> returns (aggregate, per-video list); json
writes the tuple as a list; dynamic_degree's per-video results are booleans; camera_motion returns a
third item, per-type means, in the middle). `parse_results` reads that back, and puts per-video
imaging_quality on VBench's aggregate scale: vbench/imaging_quality.py divides only the aggregate
by 100 and leaves each video's MUSIQ score on 0-100.

Weights: vbench's `local=True` reads checkpoints from VBENCH_CACHE_DIR (default ~/.cache/vbench) and
would otherwise download them (wget / torch.hub), which is impossible here; so every dimension's files
are checked first (`REQUIRED_WEIGHTS` under VBENCH_CACHE_DIR, `REQUIRED_TORCH_HUB` under torch's hub
dir: DINO's hubconf loads its weights through torch.hub.load_state_dict_from_url whatever path VBench
passes), and a missing env or file skips with a one-line reason instead of failing the evaluation.
DreamSim (i2v_background) reads ./models of its working directory; the I2V call runs in
VBENCH_CACHE_DIR/dreamsim, so its files are VBENCH_CACHE_DIR/dreamsim/models/*.

Every score is "higher is better" on [0, 1] (VBench's leaderboard prints them x100 as %). What each
column is, and the aggregates computed from them with VBench's own normalisation and weights
(scripts/constant.py, cal_final_score.py, cal_i2v_final_score.py), is in `DEFINITIONS`; `SCOPE_NOTE`
says why none of them is the paper's single "VBench 95.51%" figure.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger(__name__)

# VBench's README: the dimensions custom_input supports (the others need its prompt suite's metadata).
CUSTOM_DIMENSIONS = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree", "aesthetic_quality", "imaging_quality")
# Opt-in: custom_input runs it, but VBench's suite scores it on static videos only (see DEFINITIONS).
EXTRA_DIMENSIONS = ("temporal_flickering",)
I2V_DIMENSIONS = ("i2v_subject", "i2v_background", "camera_motion")
I2V_RUNNABLE = ("i2v_subject", "i2v_background")
CAMERA_MOTION_SKIP = ("VBench camera_motion skipped: VBench-I2V reads the camera instruction it scores ('camera pans left', ...) "
                      "from the video's file name, and held-out samples carry none")
DEFAULT_ENV = Path(".venv-vbench")
VIDEO_INDEX = "-0"  # VBench's `$prompt-$index.mp4`: one sample per held-out clip, index 0

_DINO = ("dino_model/facebookresearch_dino_main", "dino_model/dino_vitbase16_pretrain.pth")
_DREAMSIM = tuple(f"dreamsim/models/{f}" for f in ("dino_vitb16_pretrain.pth", "dino_vitb16_lora", "open_clip_vitb16_pretrain.pth.tar",
                                                    "open_clip_vitb16_lora", "clip_vitb16_pretrain.pth.tar", "clip_vitb16_lora"))
# Files vbench's init_submodules(local=True) (and DreamSim's download_weights) look for, relative to VBENCH_CACHE_DIR.
REQUIRED_WEIGHTS: dict[str, tuple[str, ...]] = {
    "subject_consistency": _DINO,
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "temporal_flickering": (),
    "i2v_subject": _DINO,
    "i2v_background": _DREAMSIM,
}
# Files torch.hub.load_state_dict_from_url reads instead of downloading, relative to torch.hub.get_dir().
REQUIRED_TORCH_HUB: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("checkpoints/dino_vitbase16_pretrain.pth",),
    "i2v_subject": ("checkpoints/dino_vitbase16_pretrain.pth",),
}

# VBench's scripts/constant.py, keyed by dimension name: (min, max) of its min-max normalisation, weight.
NORMALIZE = {
    "subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0), "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975), "dynamic_degree": (0.0, 1.0), "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0), "i2v_subject": (0.1462, 1.0), "i2v_background": (0.2615, 1.0), "camera_motion": (0.0, 1.0),
}
WEIGHT = {d: 1.0 for d in NORMALIZE} | {"dynamic_degree": 0.5, "camera_motion": 0.1}
# The lists its scores average over: QUALITY_LIST (T2V), I2V_QUALITY_LIST and I2V_LIST minus camera_motion.
T2V_QUALITY = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness", "aesthetic_quality",
               "imaging_quality", "dynamic_degree")
I2V_QUALITY = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree", "aesthetic_quality", "imaging_quality")
I2V_NO_CAMERA = ("i2v_subject", "i2v_background")
AGGREGATES = ("quality_score", "i2v_quality_score", "i2v_score_no_camera", "i2v_total_score_no_camera")

# Per-video factor onto the aggregate's scale (vbench/imaging_quality.py: average_score / 100 only).
PER_VIDEO_SCALE = {"imaging_quality": 0.01}

_NORM = "; ".join(f"{d} ({NORMALIZE[d][0]:g}, {NORMALIZE[d][1]:g}) w {WEIGHT[d]:g}" for d in NORMALIZE)
DEFINITIONS: dict[str, str] = {
    "subject_consistency": "VBench custom-input subject_consistency: per sample, the mean over frames t>0 of (cos(DINO ViT-B/16 of "
                           "frame t, frame t-1) + cos(frame t, frame 0)) / 2; the column is VBench's aggregate over the model's "
                           "samples (weighted by frame pairs, = the mean over samples at a fixed frame count); [0, 1]; a still video scores 1",
    "background_consistency": "VBench custom-input background_consistency: subject_consistency's formula on CLIP ViT-B/32 image "
                              "features; VBench's aggregate over the model's samples; [0, 1]; a still video scores 1",
    "motion_smoothness": "VBench custom-input motion_smoothness: per sample, how well AMT-S interpolation predicts the odd frames "
                         "from their neighbours, (255 - mean abs error) / 255; mean over the model's samples; [0, 1]; a still "
                         "video scores 1, so read it beside dynamic_degree",
    "dynamic_degree": "VBench custom-input dynamic_degree: per sample 1 when VBench's RAFT optical-flow rule calls it dynamic, "
                      "else 0; mean over the model's samples (the share that move); [0, 1]; more motion, not better "
                      "quality by itself",
    "aesthetic_quality": "VBench custom-input aesthetic_quality: per sample, the mean over frames of the LAION aesthetic "
                         "predictor (CLIP ViT-L/14 + linear head) / 10; mean over the model's samples; [0, 1]",
    "imaging_quality": "VBench custom-input imaging_quality: per sample, the mean over frames of MUSIQ (SPAQ) / 100, frames "
                       "downscaled to a longer side <= 512 (VBench's default); mean over the model's samples; [0, 1] (VBench "
                       "divides only its aggregate by 100; the per-video scores here are divided the same way)",
    "temporal_flickering": "VBench temporal_flickering on all samples (opt-in): per sample, (255 - mean abs difference of "
                           "consecutive frames) / 255; mean over the model's samples; [0, 1]; VBench's suite scores it on "
                           "static videos only: on moving samples it penalises motion itself",
    "i2v_subject": "VBench-I2V i2v_subject: per sample, 0.4 max_t cos(DINO(first frame), DINO(frame t)) + 0.3 mean_t "
                   "cos(frame t, t-1) + 0.3 min_t cos(frame t, t-1) (DINO ViT-B/16, resize 256, centre crop 224), the first "
                   "frame being the held-out clip's frame the sample was conditioned on; mean over the model's samples; [0, 1]",
    "i2v_background": "VBench-I2V i2v_background: i2v_subject's formula on DreamSim (ensemble) embeddings at 224 x 224; mean "
                      "over the model's samples; [0, 1]",
    "camera_motion": "VBench-I2V camera_motion: share of samples whose CoTracker-predicted camera motion matches the camera "
                     "instruction in the video's file name; not run here (held-out samples carry no instruction)",
    "quality_score": "VBench's (T2V) Quality Score (scripts/cal_final_score.py) over " + ", ".join(T2V_QUALITY) + ": "
                     "sum_d w_d (s_d - min_d) / (max_d - min_d) / sum_d w_d with scripts/constant.py's (min, max) and "
                     "weights; only when temporal_flickering was run (on all samples, unlike VBench's suite); can leave "
                     "[0, 1] when a score passes VBench's bounds",
    "i2v_quality_score": "VBench-I2V's Quality Score (scripts/cal_i2v_final_score.py) over " + ", ".join(I2V_QUALITY) + ": "
                         "sum_d w_d (s_d - min_d) / (max_d - min_d) / sum_d w_d with scripts/constant.py's (min, max) and "
                         "weights (dynamic_degree 0.5, others 1); on the held-out samples, not VBench-I2V's image suite; can "
                         "leave [0, 1] when a score passes VBench's bounds",
    "i2v_score_no_camera": "VBench-I2V's I2V Score without its camera_motion term (weight 0.1 of 2.1, not measurable here): the "
                           "same normalised weighted mean over i2v_subject and i2v_background",
    "i2v_total_score_no_camera": "(i2v_quality_score + i2v_score_no_camera) / 2: VBench-I2V's Total Score formula (quality and "
                                 "I2V weighted 1:1) with camera_motion left out",
}
SCOPE_NOTE = ("VBench columns are VBench's own per-dimension scores on this run's held-out samples (custom input; VBench-I2V "
              "against the held-out first frames), on [0, 1] where VBench's leaderboard prints x100 as %. None of them, and no "
              "aggregate here, is the paper's single 'VBench 95.51%' figure: the paper does not say which VBench score that "
              "is, and VBench's leaderboard Total / Quality Scores are min-max-normalised weighted means over VBench's own "
              "prompt and image suites, which these samples are not. Normalisation (min, max) and weight per dimension "
              f"(VBench scripts/constant.py): {_NORM}.")
DIRECTIONS = {d: "higher" for d in CUSTOM_DIMENSIONS + EXTRA_DIMENSIONS + I2V_DIMENSIONS + AGGREGATES}
# A still video scores best on these (formulas above): report them beside motion, never as best on their own.
MOTION_CONFOUNDED = frozenset({"subject_consistency", "background_consistency", "motion_smoothness", "temporal_flickering",
                               "i2v_subject", "i2v_background", *AGGREGATES})
KNOWN_DIMENSIONS = CUSTOM_DIMENSIONS + EXTRA_DIMENSIONS + I2V_DIMENSIONS

# Runs inside .venv-vbench: arguments come in a JSON file (no shell quoting of captions).
_RUNNER = """
import json, sys
args = json.load(open(sys.argv[1]))
if args["suite"] == "i2v":
    from vbench2_beta_i2v import VBenchI2V
    VBenchI2V(args["device"], args["full_info"], args["out"]).evaluate(
        videos_path=args["videos"], name=args["name"], dimension_list=args["dimensions"], local=True)
else:
    from vbench import VBench
    VBench(args["device"], None, args["out"]).evaluate(
        videos_path=args["videos"], name=args["name"], prompt_list=args["prompts"],
        dimension_list=args["dimensions"], local=True, mode="custom_input")
"""


@dataclass
class VBenchResult:
    scores: dict[str, float]  # dimension or aggregate (AGGREGATES) -> score, VBench's scale (DEFINITIONS)
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)  # sample -> dimension -> score (see parse_results)
    results_path: Path | None = None  # the first results JSON read
    dimensions: tuple[str, ...] = ()  # the dimensions VBench scored
    notes: list[str] = field(default_factory=list)  # one line per thing skipped or renamed
    results_paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Staged:
    """Flat inputs for VBench: videos/<flat>-0.mp4 for every sample, first_frames/<flat>.png where one exists."""
    videos_dir: Path
    frames_dir: Path | None
    keys: dict[str, str]  # staged video file name -> clip key
    with_frames: tuple[str, ...]  # clip keys that have a first frame
    prompts: dict[str, str]  # staged video file name -> caption
    notes: tuple[str, ...]


def flat_name(key: str) -> str:
    """Clip key -> a flat file stem: '%' -> '%25', '/' -> '%2F' (reversed exactly by key_from_flat)."""
    return key.replace("%", "%25").replace("/", "%2F")


def key_from_flat(name: str) -> str:
    """flat_name's inverse (flat_name leaves '%' only as the start of an escape, so unquote is exact)."""
    return unquote(name)


def video_file(key: str) -> str:
    """The staged video's file name: VBench's `$prompt-$index.mp4` with prompt = flat name, index 0."""
    return f"{flat_name(key)}{VIDEO_INDEX}.mp4"


def key_from_video_file(name: str) -> str:
    """video_file's inverse: strip '.mp4' and the '-0' the adapter added (once), then unescape."""
    stem = Path(name).name.removesuffix(".mp4")
    if not stem.endswith(VIDEO_INDEX):
        raise ValueError(f"VBench video {name!r} was not staged by the adapter (no {VIDEO_INDEX} index)")
    return key_from_flat(stem.removesuffix(VIDEO_INDEX))


def cache_dir() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, TORCH_HOME defaulting to $XDG_CACHE_HOME/torch."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    return Path(home) / "hub"


def env_python(env: Path) -> Path:
    return Path(env) / "bin" / "python"


def skip_reason(env: Path = DEFAULT_ENV, dimensions: tuple[str, ...] = CUSTOM_DIMENSIONS, weights: Path | None = None,
                hub: Path | None = None) -> str | None:
    """Why VBench cannot run `dimensions` now (one line), or None when the env and every needed weight file exist."""
    py = env_python(env)
    if not py.is_file():
        return f"VBench skipped: no virtual environment at {env} (run `make vbench-env`)"
    weights = Path(weights) if weights is not None else cache_dir()
    hub = Path(hub) if hub is not None else torch_hub_dir()
    for dim in dimensions:
        if dim not in REQUIRED_WEIGHTS:
            known = ", ".join(d for d in KNOWN_DIMENSIONS if d in REQUIRED_WEIGHTS)
            return f"VBench skipped: unknown or unrunnable dimension {dim!r} (runnable: {known})"
        for path in [weights / rel for rel in REQUIRED_WEIGHTS[dim]] + [hub / rel for rel in REQUIRED_TORCH_HUB.get(dim, ())]:
            if not path.exists():
                return f"VBench skipped: {dim} needs {path}, which is absent (VBench weights cannot be downloaded here)"
    return None


def stage_samples(videos_dir: Path, prompts: dict[str, str], stage_dir: Path, first_frames_dir: Path | None = None) -> Staged:
    """Symlink videos_dir/<key>.mp4 (and first_frames_dir/<key>.png) for every key of prompts (clip key -> caption)
    into stage_dir under flat names; a sample without its video is left out with a note, one without a first frame
    is left out of the I2V dimensions only."""
    videos_dir, stage_dir = Path(videos_dir).resolve(), Path(stage_dir)
    out_videos = stage_dir / "videos"
    out_frames = stage_dir / "first_frames" if first_frames_dir is not None else None
    for d in (out_videos, out_frames):
        if d is not None:  # emptied: custom_input asserts a caption for every video the folder holds
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
    keys, captions, with_frames, notes = {}, {}, [], []
    seen: dict[str, str] = {}
    for key, caption in prompts.items():
        if flat_name(key) in seen:  # only if two keys differ yet escape alike, which flat_name rules out
            raise ValueError(f"VBench: clip keys {seen[flat_name(key)]!r} and {key!r} stage to one file name")
        seen[flat_name(key)] = key
        src = videos_dir / f"{key}.mp4"
        if not src.is_file():
            notes.append(f"VBench: sample {key!r} has no video at {src}; left out")
            continue
        name = video_file(key)
        _link(src, out_videos / name)
        keys[name], captions[name] = key, caption
        if out_frames is not None:
            frame = Path(first_frames_dir).resolve() / f"{key}.png"
            if frame.is_file():
                _link(frame, out_frames / f"{flat_name(key)}.png")
                with_frames.append(key)
            else:
                notes.append(f"VBench-I2V: sample {key!r} has no first frame at {frame}; left out of the I2V dimensions")
    nested = [k for k in keys.values() if flat_name(k) != k]
    if nested:
        notes.append(f"VBench: {len(nested)} clip key(s) with '/' or '%' staged under flat names ('/' -> '%2F', '%' -> '%25'), "
                     f"e.g. {nested[0]!r} -> {flat_name(nested[0])!r}; results are mapped back to the clip keys")
    return Staged(out_videos, out_frames, keys, tuple(with_frames), captions, tuple(notes))


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src)


def write_first_frames(frames: dict, out_dir: Path) -> Path:
    """{clip key: uint8 [H, W, 3] first frame} -> out_dir/<key>.png ('/' = a sub-folder, like the samples); out_dir.

    These are what VBench-I2V compares each sample with: the frame the sample was conditioned on, at its size.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    for key, frame in frames.items():
        path = out_dir / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path)  # PNG: lossless, so VBench sees the conditioning pixels
    return out_dir


def i2v_suite(staged: Staged, dimensions: tuple[str, ...]) -> list[dict]:
    """VBench-I2V's full-info entries for the samples with a first frame (format in the module docstring)."""
    assert staged.frames_dir is not None
    by_key = {k: name for name, k in staged.keys.items()}
    return [{"prompt_en": flat_name(key), "dimension": list(dimensions), "caption": staged.prompts[by_key[key]],
             "image_name": str((staged.frames_dir / f"{flat_name(key)}.png").absolute())} for key in staged.with_frames]


def runner_args(suite: str, staged: Staged, out_dir: Path, name: str, dimensions: tuple[str, ...], device: str,
                full_info: Path | None = None) -> dict:
    """The JSON the runner reads: suite "t2v" (VBench custom_input, prompt_list by staged file) or "i2v" (VBenchI2V)."""
    args = {"suite": suite, "device": device, "out": str(Path(out_dir).absolute()), "videos": str(staged.videos_dir.absolute()),
            "name": name, "dimensions": list(dimensions)}
    if suite == "i2v":
        args["full_info"] = str(Path(full_info).absolute())
    else:
        args["prompts"] = dict(staged.prompts)
    return args


def parse_results(path: Path) -> VBenchResult:
    """Read VBench's NAME_eval_results.json (format in the module docstring) -> VBenchResult, per_video keyed by
    video file name, each score on its aggregate's scale (PER_VIDEO_SCALE)."""
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
        if not (isinstance(entry, list) and len(entry) in (2, 3) and isinstance(entry[-1], list)):
            raise ValueError(f"VBench results {path}: dimension {dim!r} is not [aggregate, per-video list]")
        try:
            scores[dim] = float(entry[0])
        except (TypeError, ValueError):
            raise ValueError(f"VBench results {path}: dimension {dim!r} has a non-numeric aggregate {entry[0]!r}") from None
        for item in entry[-1]:
            if not isinstance(item, dict) or "video_path" not in item or "video_results" not in item:
                raise ValueError(f"VBench results {path}: dimension {dim!r} has a per-video entry without video_path/video_results")
            value = float(item["video_results"]) * PER_VIDEO_SCALE.get(dim, 1.0)  # bool (dynamic_degree) -> 0.0 / 1.0
            if math.isfinite(value):
                per_video.setdefault(Path(item["video_path"]).name, {})[dim] = value
    return VBenchResult(scores, per_video, path, tuple(raw), results_paths=(path,))


def aggregate_scores(scores: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """VBench's Quality / I2V / Total Scores (DEFINITIONS) computable from `scores` -> ({aggregate: value}, notes for
    those left out). An aggregate is computed only when every dimension it names is there."""
    out: dict[str, float] = {}
    notes: list[str] = []

    def weighted(name: str, dims: tuple[str, ...]) -> None:
        missing = [d for d in dims if not math.isfinite(scores.get(d, math.nan))]
        if missing:
            notes.append(f"VBench {name} not computed: it needs {', '.join(missing)}")
            return
        norm = sum(WEIGHT[d] * (scores[d] - NORMALIZE[d][0]) / (NORMALIZE[d][1] - NORMALIZE[d][0]) for d in dims)
        out[name] = norm / sum(WEIGHT[d] for d in dims)

    if "temporal_flickering" in scores:  # opt-in only: without it VBench's T2V Quality Score is not attempted
        weighted("quality_score", T2V_QUALITY)
    weighted("i2v_quality_score", I2V_QUALITY)
    weighted("i2v_score_no_camera", I2V_NO_CAMERA)
    if "i2v_quality_score" in out and "i2v_score_no_camera" in out:
        out["i2v_total_score_no_camera"] = (out["i2v_quality_score"] + out["i2v_score_no_camera"]) / 2
    return out, notes


def definitions(columns, prefix: str = "vbench_") -> dict[str, str]:
    """{prefix + name: definition} for the VBench dimensions / aggregates among `columns` (named with or without prefix)."""
    names = [c.removeprefix(prefix) for c in columns]
    return {prefix + n: DEFINITIONS[n] for n in names if n in DEFINITIONS}


def _run(args: dict, args_path: Path, env: Path, timeout_s: float | None, cwd: Path | None, label: str) -> tuple[Path | None, str | None]:
    """Run the runner on args; (results path, None) or (None, one-line reason). Paths absolute: cwd may move."""
    args_path.write_text(json.dumps(args))
    if cwd is not None:
        cwd.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([str(env_python(env).absolute()), "-c", _RUNNER, str(args_path.absolute())], capture_output=True, text=True,
                              timeout=timeout_s, cwd=cwd)
    except subprocess.TimeoutExpired:
        return None, f"{label} skipped: its run took longer than {timeout_s} s"
    except OSError as exc:  # the env's python went missing or cannot execute
        return None, f"{label} skipped: {env_python(env)} could not start ({exc.strerror or exc})"
    results = Path(args["out"]) / f"{args['name']}_eval_results.json"
    if proc.returncode != 0 or not results.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"{label} skipped: its run failed (exit {proc.returncode}): {tail[0]}"
    return results, None


def evaluate_vbench(videos_dir: Path, prompts: dict[str, str], out_dir: Path, name: str = "samples", *,
                    first_frames_dir: Path | None = None, env: Path = DEFAULT_ENV,
                    dimensions: tuple[str, ...] = CUSTOM_DIMENSIONS, i2v_dimensions: tuple[str, ...] = I2V_DIMENSIONS,
                    device: str = "cuda", timeout_s: float | None = None) -> VBenchResult:
    """Score one model's samples with VBench (custom input) and VBench-I2V; never raises for a VBench problem.

    prompts: clip key -> caption; the video is videos_dir/<key>.mp4 and its first frame
    first_frames_dir/<key>.png ('/' in a key = a sub-folder, as stages/evaluate/sampling.py writes them).
    Returns scores (dimensions and AGGREGATES), per_video keyed by clip key, and notes: one line per thing
    skipped (env, weights, camera_motion, a missing file, a failed run, an aggregate left out) or renamed;
    each note is also logged. Written against vbench 0.1.5's source (`make vbench-env` pins it).
    """
    out_dir = Path(out_dir)
    name = flat_name(name)
    i2v_dims = tuple(d for d in i2v_dimensions if d != "camera_motion")
    notes: list[str] = [CAMERA_MOTION_SKIP] if "camera_motion" in i2v_dimensions else []
    if i2v_dims and first_frames_dir is None:
        notes.append(f"VBench-I2V {', '.join(i2v_dims)} skipped: no folder of first frames given")
        i2v_dims = ()
    t2v_reason = skip_reason(env, tuple(dimensions)) if dimensions else None
    i2v_reason = skip_reason(env, i2v_dims) if i2v_dims else None
    notes += [r for r in (t2v_reason, i2v_reason) if r]
    run_t2v, run_i2v = bool(dimensions) and t2v_reason is None, bool(i2v_dims) and i2v_reason is None
    results: list[tuple[Path, Staged]] = []
    if run_t2v or run_i2v:
        staged = stage_samples(videos_dir, prompts, out_dir / f"{name}_staged", first_frames_dir if run_i2v else None)
        notes += staged.notes
        if not staged.keys:
            notes.append(f"VBench skipped: none of the {len(prompts)} sample(s) has its video under {videos_dir}")
            run_t2v = run_i2v = False
        if run_t2v:
            args = runner_args("t2v", staged, out_dir, name, tuple(dimensions), device)
            path, reason = _run(args, out_dir / f"{name}_vbench_args.json", env, timeout_s, None, "VBench")
            notes += [reason] if reason else []
            results += [(path, staged)] if path else []
        if run_i2v and not staged.with_frames:
            notes.append(f"VBench-I2V {', '.join(i2v_dims)} skipped: no sample has its first frame under {first_frames_dir}")
        if run_i2v and staged.with_frames:
            suite = out_dir / f"{name}_i2v_suite.json"
            suite.write_text(json.dumps(i2v_suite(staged, i2v_dims), indent=1))
            args = runner_args("i2v", staged, out_dir, f"{name}_i2v", i2v_dims, device, full_info=suite)
            # DreamSim reads ./models of the working directory (module docstring)
            path, reason = _run(args, out_dir / f"{name}_i2v_vbench_args.json", env, timeout_s, cache_dir() / "dreamsim", "VBench-I2V")
            notes += [reason] if reason else []
            results += [(path, staged)] if path else []
    parsed = []
    for path, staged_for in results:
        try:
            parsed.append((parse_results(path), staged_for))
        except ValueError as exc:  # a results file VBench wrote in another shape: its scores are left out, said why
            notes.append(str(exc))
    merged = merge_results(parsed)
    extra, agg_notes = aggregate_scores(merged.scores) if merged.scores else ({}, [])
    merged.scores.update(extra)
    merged.notes = list(dict.fromkeys(notes + agg_notes))  # the env reason once, not per suite
    for note in merged.notes:
        log.warning(note)
    return merged


def merge_results(parsed: list[tuple[VBenchResult, Staged]]) -> VBenchResult:
    """One result from the T2V and I2V runs, per_video re-keyed from staged file names to clip keys."""
    out = VBenchResult({}, {})
    for result, staged in parsed:
        out.scores.update(result.scores)
        out.dimensions += tuple(d for d in result.dimensions if d not in out.dimensions)
        out.results_paths += result.results_paths
        for file, by_dim in result.per_video.items():
            key = staged.keys.get(file, file)
            out.per_video.setdefault(key, {}).update(by_dim)
    out.results_path = out.results_paths[0] if out.results_paths else None
    return out


def run_vbench(videos_dir: Path, prompts: dict[str, str], out_dir: Path, name: str = "samples",
               env: Path = DEFAULT_ENV, dimensions: tuple[str, ...] = CUSTOM_DIMENSIONS,
               device: str = "cuda", timeout_s: float | None = None, first_frames_dir: Path | None = None) -> VBenchResult | None:
    """The former entry point: prompts keyed by video file name ('<key>.mp4'); None (logged) when nothing was
    scored. Same as evaluate_vbench (I2V dimensions when first_frames_dir is given)."""
    by_key = {k.removesuffix(".mp4"): v for k, v in prompts.items()}
    result = evaluate_vbench(videos_dir, by_key, out_dir, name, first_frames_dir=first_frames_dir, env=env,
                             dimensions=dimensions, i2v_dimensions=I2V_DIMENSIONS if first_frames_dir else (),
                             device=device, timeout_s=timeout_s)
    return result if result.scores else None
