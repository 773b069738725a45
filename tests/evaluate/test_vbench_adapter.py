"""stages/evaluate/metrics/vbench_adapter.py: the skip paths (no env, no weights, camera_motion, missing files), the
flat reversible sample names, the staged inputs and VBench-I2V suite, reading VBench's results JSON in the format
vbench writes (VBench.evaluate -> save_json({dimension: compute_<dimension>(...)}), where compute_* returns
(aggregate, [{"video_path", "video_results"}, ...])), per-video scales, and VBench's normalised aggregates.

None of this needs the VBench env; the two tests at the end run VBench's own code when `.venv-vbench` exists
(`make vbench-env`) and are skipped otherwise."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.evaluate.metrics import vbench_adapter as vb

# One file as vbench writes it for two videos (dynamic_degree's per-video results are booleans; imaging_quality's
# per-video MUSIQ scores stay on 0-100 while its aggregate is divided by 100, as vbench/imaging_quality.py does).
RESULTS = {
    "subject_consistency": [0.96, [{"video_path": "/s/run_a/clip_000-0.mp4", "video_results": 0.97},
                                   {"video_path": "/s/run_a/clip_001-0.mp4", "video_results": 0.95}]],
    "dynamic_degree": [0.5, [{"video_path": "/s/run_a/clip_000-0.mp4", "video_results": True},
                             {"video_path": "/s/run_a/clip_001-0.mp4", "video_results": False}]],
    "imaging_quality": [0.61, [{"video_path": "/s/run_a/clip_000-0.mp4", "video_results": 60.0},
                               {"video_path": "/s/run_a/clip_001-0.mp4", "video_results": 62.0}]],
}
KEYS = ["clip_000", "src/clip_001", "clip_002__mask_hole", "clip_002/mask_hole", "100%", "a%2Fb", "w-3", "w-0"]
REPO = Path(__file__).resolve().parents[2]
VBENCH_ENV = REPO / ".venv-vbench"


def _fake_env(tmp_path: Path) -> Path:
    """A folder shaped like a venv whose python exists (this interpreter): the weights check comes next."""
    env = tmp_path / ".venv-vbench"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    return env


def _weights(root: Path, hub: Path, dims) -> None:
    for d in dims:
        for path in [root / r for r in vb.REQUIRED_WEIGHTS[d]] + [hub / r for r in vb.REQUIRED_TORCH_HUB.get(d, ())]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")


def _samples(tmp_path: Path, keys, frames=True) -> tuple[Path, Path]:
    """videos/<key>.mp4 and first_frames/<key>.png as stages/evaluate/sampling.py lays them out ('/' = sub-folder)."""
    videos, first = tmp_path / "samples", tmp_path / "first"
    for key in keys:
        for root, ext in ((videos, "mp4"), (first, "png")) if frames else ((videos, "mp4"),):
            (root / f"{key}.{ext}").parent.mkdir(parents=True, exist_ok=True)
            (root / f"{key}.{ext}").write_bytes(b"x")
    return videos, first


def test_missing_env_skips_with_a_clear_reason(tmp_path, caplog):
    reason = vb.skip_reason(tmp_path / "nope")
    assert reason.startswith("VBench skipped: no virtual environment at") and "make vbench-env" in reason
    with caplog.at_level(logging.WARNING):
        assert vb.run_vbench(tmp_path, {"a.mp4": "a cat"}, tmp_path / "out", env=tmp_path / "nope") is None
        result = vb.evaluate_vbench(tmp_path, {"a": "a cat"}, tmp_path / "out", first_frames_dir=tmp_path, env=tmp_path / "nope")
    assert "make vbench-env" in caplog.text
    assert result.scores == {} and sum("no virtual environment" in n for n in result.notes) == 1  # once, not per suite
    assert vb.CAMERA_MOTION_SKIP in result.notes
    assert not (tmp_path / "out").exists()  # nothing started


def test_missing_weights_skip_names_the_file(tmp_path, monkeypatch):
    env = _fake_env(tmp_path)
    weights, hub = tmp_path / "vbench-cache", tmp_path / "torch" / "hub"
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert vb.cache_dir() == weights and vb.torch_hub_dir() == hub
    reason = vb.skip_reason(env, ("background_consistency",))
    assert reason == f"VBench skipped: background_consistency needs {weights / 'clip_model/ViT-B-32.pt'}, which is absent (VBench weights cannot be downloaded here)"
    _weights(weights, hub, ("background_consistency",))
    assert vb.skip_reason(env, ("background_consistency",)) is None
    assert "subject_consistency needs" in vb.skip_reason(env)  # the default dimensions need more weights
    assert "unknown or unrunnable dimension 'color_wheel'" in vb.skip_reason(env, ("color_wheel",))
    assert "unknown or unrunnable dimension 'camera_motion'" in vb.skip_reason(env, ("camera_motion",))
    # DINO's hubconf loads its weights from torch's hub cache whatever path VBench passes: that file is checked too
    for rel in vb.REQUIRED_WEIGHTS["i2v_subject"]:
        (weights / rel).parent.mkdir(parents=True, exist_ok=True)
        (weights / rel).write_bytes(b"")
    assert vb.skip_reason(env, ("i2v_subject",)) == (f"VBench skipped: i2v_subject needs {hub / 'checkpoints/dino_vitbase16_pretrain.pth'}, "
                                                     "which is absent (VBench weights cannot be downloaded here)")
    assert "dreamsim/models/" in vb.skip_reason(env, ("i2v_background",))


def test_every_runnable_dimension_has_weights_a_direction_and_a_definition():
    assert set(vb.REQUIRED_WEIGHTS) == set(vb.CUSTOM_DIMENSIONS + vb.EXTRA_DIMENSIONS + vb.I2V_RUNNABLE)
    assert set(vb.DIRECTIONS) == set(vb.KNOWN_DIMENSIONS + vb.AGGREGATES) and set(vb.DIRECTIONS.values()) == {"higher"}
    assert set(vb.DEFINITIONS) == set(vb.DIRECTIONS)
    assert all(d in vb.NORMALIZE and d in vb.WEIGHT for d in vb.T2V_QUALITY + vb.I2V_QUALITY + vb.I2V_NO_CAMERA)
    assert vb.MOTION_CONFOUNDED <= set(vb.DIRECTIONS)


@pytest.mark.parametrize("key", KEYS)
def test_flat_names_are_flat_and_reversible(key):
    flat = vb.flat_name(key)
    assert "/" not in flat and vb.key_from_flat(flat) == key
    assert vb.key_from_video_file(f"/staged/videos/{vb.video_file(key)}") == key
    assert vb.video_file(key) == f"{flat}-0.mp4"  # VBench's `$prompt-$index.mp4`


def test_flat_names_never_collide():
    """'/' -> '__' would merge a nested key with the twin generator's '<key>__<break>' key; percent-escaping does not."""
    assert len({vb.flat_name(k) for k in KEYS}) == len(KEYS)
    assert vb.flat_name("clip_002/mask_hole") != vb.flat_name("clip_002__mask_hole")
    assert vb.flat_name("a/b") == "a%2Fb" and vb.flat_name("a%2Fb") == "a%252Fb"
    with pytest.raises(ValueError, match="not staged by the adapter"):
        vb.key_from_video_file("clip_000.mp4")


def test_staging_flattens_nested_keys_and_notes_what_is_left_out(tmp_path):
    videos, first = _samples(tmp_path, ["clip_000", "src/clip_001", "src/clip_002"])
    (first / "src" / "clip_002.png").unlink()
    prompts = {"clip_000": "a cat", "src/clip_001": "a dog", "src/clip_002": "a cow", "gone": "a ghost"}
    stage = tmp_path / "out" / "m_staged"
    (stage / "videos").mkdir(parents=True)
    (stage / "videos" / "stale-0.mp4").write_bytes(b"")  # a previous run's file: custom_input would want its caption
    staged = vb.stage_samples(videos, prompts, stage, first)
    assert sorted(p.name for p in staged.videos_dir.iterdir()) == ["clip_000-0.mp4", "src%2Fclip_001-0.mp4", "src%2Fclip_002-0.mp4"]
    assert (staged.videos_dir / "src%2Fclip_001-0.mp4").resolve() == (videos / "src" / "clip_001.mp4").resolve()
    assert sorted(p.name for p in staged.frames_dir.iterdir()) == ["clip_000.png", "src%2Fclip_001.png"]
    assert staged.keys == {"clip_000-0.mp4": "clip_000", "src%2Fclip_001-0.mp4": "src/clip_001", "src%2Fclip_002-0.mp4": "src/clip_002"}
    assert staged.prompts["src%2Fclip_001-0.mp4"] == "a dog" and staged.with_frames == ("clip_000", "src/clip_001")
    notes = " | ".join(staged.notes)
    assert "sample 'gone' has no video" in notes and "sample 'src/clip_002' has no first frame" in notes
    assert "'src/clip_001' -> 'src%2Fclip_001'" in notes
    assert all("\n" not in n for n in staged.notes)


def test_first_frames_are_written_losslessly_where_staging_finds_them(tmp_path):
    from PIL import Image

    frame = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    first = vb.write_first_frames({"clip_000": frame, "src/clip_001": frame[::-1]}, tmp_path / "first")
    assert np.array_equal(np.asarray(Image.open(first / "src" / "clip_001.png")), frame[::-1])
    videos, _ = _samples(tmp_path, ["clip_000", "src/clip_001"], frames=False)
    staged = vb.stage_samples(videos, {"clip_000": "a", "src/clip_001": "b"}, tmp_path / "stage", first)
    assert staged.with_frames == ("clip_000", "src/clip_001") and staged.notes[-1].startswith("VBench: 1 clip key(s)")


def test_i2v_suite_is_what_vbench_standard_mode_looks_up(tmp_path):
    """VBench's standard mode looks for `<prompt_en>-<i>.mp4` in the videos folder; VBench-I2V pairs it with
    os.path.join(image_root, image_name), which is image_name when absolute."""
    videos, first = _samples(tmp_path, ["clip_000", "src/clip_001"])
    staged = vb.stage_samples(videos, {"clip_000": "a cat", "src/clip_001": "a dog"}, tmp_path / "stage", first)
    suite = vb.i2v_suite(staged, vb.I2V_RUNNABLE)
    assert [e["prompt_en"] for e in suite] == ["clip_000", "src%2Fclip_001"]
    for entry in suite:
        assert entry["dimension"] == ["i2v_subject", "i2v_background"]
        assert (staged.videos_dir / f"{entry['prompt_en']}-0.mp4").is_file()
        image = Path(entry["image_name"])
        assert image.is_absolute() and image.is_file() and str(Path("vbench2_beta_i2v/data/crop/1-1") / image) == str(image)
    args = vb.runner_args("i2v", staged, tmp_path / "out", "m_i2v", vb.I2V_RUNNABLE, "cuda", full_info=tmp_path / "suite.json")
    assert args["suite"] == "i2v" and args["full_info"] == str((tmp_path / "suite.json").absolute()) and "prompts" not in args
    assert args["dimensions"] == ["i2v_subject", "i2v_background"] and args["videos"] == str(staged.videos_dir.absolute())
    t2v = vb.runner_args("t2v", staged, tmp_path / "out", "m", ("motion_smoothness",), "cuda")
    assert t2v["prompts"] == {"clip_000-0.mp4": "a cat", "src%2Fclip_001-0.mp4": "a dog"} and "full_info" not in t2v


def test_results_json_is_parsed_on_vbench_scales(tmp_path):
    path = tmp_path / "samples_eval_results.json"
    path.write_text(json.dumps(RESULTS))
    result = vb.parse_results(path)
    assert result.scores == {"subject_consistency": 0.96, "dynamic_degree": 0.5, "imaging_quality": 0.61}
    assert result.per_video["clip_000-0.mp4"] == {"subject_consistency": 0.97, "dynamic_degree": 1.0, "imaging_quality": 0.6}
    assert result.per_video["clip_001-0.mp4"]["dynamic_degree"] == 0.0
    # per-video imaging quality on the aggregate's scale: their mean is VBench's aggregate
    assert np.mean([v["imaging_quality"] for v in result.per_video.values()]) == pytest.approx(result.scores["imaging_quality"])
    assert result.dimensions == tuple(RESULTS) and result.results_path == path


def test_camera_motion_three_part_entry_is_parsed(tmp_path):
    """compute_camera_motion returns (aggregate, per-type means, per-video list)."""
    path = tmp_path / "r_eval_results.json"
    path.write_text(json.dumps({"camera_motion": [0.5, {"pan_left": 1.0, "static": 0.0},
                                                  [{"video_path": "/v/camera pans left-0.mp4", "video_results": 1.0, "prompt_type": "pan_left"},
                                                   {"video_path": "/v/camera static-0.mp4", "video_results": 0.0}]]}))
    result = vb.parse_results(path)
    assert result.scores == {"camera_motion": 0.5} and result.per_video["camera static-0.mp4"] == {"camera_motion": 0.0}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "unreadable"),
        ("[1, 2]", "expected an object of dimensions"),
        (json.dumps({"subject_consistency": 0.9}), "not \\[aggregate, per-video list\\]"),
        (json.dumps({"subject_consistency": ["x", []]}), "non-numeric aggregate"),
        (json.dumps({"subject_consistency": [0.9, [{"video_results": 1}]]}), "without video_path"),
    ],
)
def test_malformed_results_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad_eval_results.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        vb.parse_results(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_results_are_rekeyed_to_clip_keys(tmp_path):
    videos, first = _samples(tmp_path, ["clip_000", "src/clip_001"])
    staged = vb.stage_samples(videos, {"clip_000": "a", "src/clip_001": "b"}, tmp_path / "stage", first)
    t2v, i2v = tmp_path / "m_eval_results.json", tmp_path / "m_i2v_eval_results.json"
    t2v.write_text(json.dumps({"imaging_quality": [0.5, [{"video_path": str(staged.videos_dir / n), "video_results": 50.0} for n in staged.keys]]}))
    i2v.write_text(json.dumps({"i2v_subject": [0.9, [{"image_path": "x.png", "video_path": str(staged.videos_dir / n), "video_results": 0.9}
                                                     for n in staged.keys]]}))
    merged = vb.merge_results([(vb.parse_results(t2v), staged), (vb.parse_results(i2v), staged)])
    assert merged.per_video == {"clip_000": {"imaging_quality": 0.5, "i2v_subject": 0.9}, "src/clip_001": {"imaging_quality": 0.5, "i2v_subject": 0.9}}
    assert merged.dimensions == ("imaging_quality", "i2v_subject") and merged.results_paths == (t2v, i2v) and merged.results_path == t2v


def _at(bound: int) -> dict[str, float]:
    """Every dimension at VBench's normalisation min (bound 0) or max (bound 1)."""
    return {d: lo_hi[bound] for d, lo_hi in vb.NORMALIZE.items()}


def test_aggregates_follow_vbench_normalisation_and_weights():
    at_max, notes = vb.aggregate_scores(_at(1))
    assert notes == [] and at_max == pytest.approx({a: 1.0 for a in vb.AGGREGATES})
    assert vb.aggregate_scores(_at(0))[0] == pytest.approx({a: 0.0 for a in vb.AGGREGATES})
    # a hand-computed case: I2V quality = (sum of normalised scores, dynamic_degree weighted 0.5) / 5.5
    scores = {"subject_consistency": 0.9, "background_consistency": 0.95, "motion_smoothness": 0.98, "dynamic_degree": 0.4,
              "aesthetic_quality": 0.55, "imaging_quality": 0.6, "i2v_subject": 0.96, "i2v_background": 0.97}
    norm = {"subject_consistency": (0.9 - 0.1462) / 0.8538, "background_consistency": (0.95 - 0.2615) / 0.7385,
            "motion_smoothness": (0.98 - 0.706) / (0.9975 - 0.706), "dynamic_degree": 0.5 * 0.4, "aesthetic_quality": 0.55, "imaging_quality": 0.6}
    out, notes = vb.aggregate_scores(scores)
    assert out["i2v_quality_score"] == pytest.approx(sum(norm.values()) / 5.5)
    i2v = ((0.96 - 0.1462) / 0.8538 + (0.97 - 0.2615) / 0.7385) / 2
    assert out["i2v_score_no_camera"] == pytest.approx(i2v)
    assert out["i2v_total_score_no_camera"] == pytest.approx((out["i2v_quality_score"] + i2v) / 2)
    assert "quality_score" not in out and notes == []  # VBench's T2V Quality Score needs the opt-in temporal_flickering


@pytest.mark.parametrize("dim", vb.I2V_QUALITY + vb.I2V_NO_CAMERA)
def test_a_better_dimension_raises_every_aggregate_it_enters(dim):
    base = {d: (lo + hi) / 2 for d, (lo, hi) in vb.NORMALIZE.items()}
    better = dict(base, **{dim: base[dim] + 0.01})
    low, high = vb.aggregate_scores(base)[0], vb.aggregate_scores(better)[0]
    entered = [a for a, dims in (("i2v_quality_score", vb.I2V_QUALITY), ("i2v_score_no_camera", vb.I2V_NO_CAMERA),
                                 ("quality_score", vb.T2V_QUALITY)) if dim in dims] + ["i2v_total_score_no_camera"]
    assert all(high[a] > low[a] for a in entered)


def test_an_aggregate_missing_a_dimension_is_left_out_with_a_note():
    scores = {d: 0.9 for d in vb.CUSTOM_DIMENSIONS if d != "imaging_quality"}
    out, notes = vb.aggregate_scores(scores)
    assert out == {}
    assert notes == ["VBench i2v_quality_score not computed: it needs imaging_quality",
                     "VBench i2v_score_no_camera not computed: it needs i2v_subject, i2v_background"]


def test_definitions_name_scales_dimensions_and_the_papers_figure():
    defs = vb.definitions(["vbench_subject_consistency", "i2v_quality_score", "fvd", "vbench_nope"])
    assert list(defs) == ["vbench_subject_consistency", "vbench_i2v_quality_score"]
    ran = set(vb.CUSTOM_DIMENSIONS + vb.EXTRA_DIMENSIONS + vb.I2V_RUNNABLE)
    assert all("over the model's samples" in vb.DEFINITIONS[d] and "[0, 1]" in vb.DEFINITIONS[d] for d in ran)  # aggregate and scale
    assert all(d in defs["vbench_i2v_quality_score"] for d in vb.I2V_QUALITY)
    assert "/ 100" in vb.DEFINITIONS["imaging_quality"] and "camera_motion" in vb.DEFINITIONS["i2v_score_no_camera"]
    assert "95.51" in vb.SCOPE_NOTE and "0.1462" in vb.SCOPE_NOTE and "dynamic_degree (0, 1) w 0.5" in vb.SCOPE_NOTE


def test_a_failing_vbench_run_is_skipped_with_its_last_error_line(tmp_path, monkeypatch, caplog):
    """The env's python runs but has no `vbench` module: both subprocesses fail, the adapter says why, nothing raises."""
    env = _fake_env(tmp_path)
    weights, hub = tmp_path / "vbench-cache", tmp_path / "torch" / "hub"
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _weights(weights, hub, ("motion_smoothness",) + vb.I2V_RUNNABLE)
    monkeypatch.setenv("PYTHONPATH", "")  # the child must not see this checkout either
    monkeypatch.chdir(tmp_path)
    env = Path(".venv-vbench")  # relative, as DEFAULT_ENV is: the I2V call runs in another working directory
    videos, first = _samples(tmp_path, ["clip", "src/clip"])
    assert importlib.util.find_spec("vbench") is None  # vbench lives only in its own env, never in the project's
    with caplog.at_level(logging.WARNING):
        result = vb.evaluate_vbench(videos, {"clip": "a cat", "src/clip": "a dog"}, tmp_path / "out", "run/a", first_frames_dir=first,
                                    env=env, dimensions=("motion_smoothness",), device="cpu")
    assert result.scores == {} and result.per_video == {}
    notes = " | ".join(result.notes)
    assert "VBench skipped: its run failed (exit 1)" in notes and "VBench-I2V skipped: its run failed (exit 1)" in notes
    assert "No module named 'vbench" in notes and vb.CAMERA_MOTION_SKIP in result.notes
    assert "VBench skipped: its run failed" in caplog.text
    out = tmp_path / "out"
    args = json.loads((out / "run%2Fa_vbench_args.json").read_text())  # the model name is flattened too
    assert args["dimensions"] == ["motion_smoothness"] and args["prompts"] == {"clip-0.mp4": "a cat", "src%2Fclip-0.mp4": "a dog"}
    i2v = json.loads((out / "run%2Fa_i2v_vbench_args.json").read_text())
    assert i2v["dimensions"] == ["i2v_subject", "i2v_background"] and i2v["name"] == "run%2Fa_i2v"
    suite = json.loads(Path(i2v["full_info"]).read_text())
    assert [e["prompt_en"] for e in suite] == ["clip", "src%2Fclip"] and suite[1]["caption"] == "a dog"
    assert vb.run_vbench(videos, {"clip.mp4": "a cat"}, out, env=env, dimensions=("motion_smoothness",), device="cpu") is None


def test_no_first_frames_skips_the_i2v_dimensions_with_a_note(tmp_path):
    result = vb.evaluate_vbench(tmp_path, {"a": "x"}, tmp_path / "out", env=tmp_path / "nope", dimensions=())
    assert result.notes == [vb.CAMERA_MOTION_SKIP, "VBench-I2V i2v_subject, i2v_background skipped: no folder of first frames given"]


# --- VBench's own code, when `make vbench-env` has been run (skipped otherwise) -------------------------------------

def _env_has_vbench() -> bool:
    py = vb.env_python(VBENCH_ENV)
    return py.is_file() and subprocess.run([str(py), "-c", "import vbench, vbench2_beta_i2v"], capture_output=True).returncode == 0


needs_env = pytest.mark.skipif(not _env_has_vbench(), reason="no .venv-vbench with vbench (make vbench-env)")
slow = pytest.mark.slow  # subprocesses into the VBench env


@slow
@needs_env
def test_vbench_i2v_reads_the_suite_as_pairs_of_first_frame_and_sample(tmp_path):
    """VBench's own standard-mode lookup and VBench-I2V's pairing on the adapter's suite (no weights needed)."""
    videos, first = _samples(tmp_path, ["clip_000", "src/clip_001", "w-3"])
    staged = vb.stage_samples(videos, {"clip_000": "a", "src/clip_001": "b", "w-3": "c"}, tmp_path / "stage", first)
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(vb.i2v_suite(staged, vb.I2V_RUNNABLE)))
    probe = ("import json, sys; from vbench2_beta_i2v import VBenchI2V; from vbench2_beta_i2v.utils import load_i2v_dimension_info\n"
             "v = VBenchI2V('cpu', sys.argv[1], sys.argv[2]); info = v.build_full_info_json(sys.argv[3], 'm', ['i2v_subject', 'i2v_background'])\n"
             "print(json.dumps(load_i2v_dimension_info(info, 'i2v_background', 'en', '1-1')[0]))")
    proc = subprocess.run([str(vb.env_python(VBENCH_ENV)), "-c", probe, str(suite), str(tmp_path / "out"), str(staged.videos_dir)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(Path(i).name, vb.key_from_video_file(v)) for i, v in pairs] == [("clip_000.png", "clip_000"), ("src%2Fclip_001.png", "src/clip_001"),
                                                                           ("w-3.png", "w-3")]


@slow
@needs_env
def test_vbench_temporal_flickering_runs_end_to_end_and_ranks_a_still_video_first(tmp_path, monkeypatch):
    """The one custom-input dimension without weights, through the real subprocess: nested keys come back as clip
    keys, scores on [0, 1], a still video above a flickering one (temporal_flickering's direction)."""
    from stages.media.video import write_mp4

    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), 8, axis=0)
    noisy = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    videos = tmp_path / "samples"
    for key, frames in (("still", still), ("src/noisy", noisy)):
        (videos / key).parent.mkdir(parents=True, exist_ok=True)
        write_mp4(videos / f"{key}.mp4", frames, 8)
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "cache"))
    result = vb.evaluate_vbench(videos, {"still": "a still", "src/noisy": "noise"}, tmp_path / "out", "m", env=VBENCH_ENV,
                                dimensions=("temporal_flickering",), i2v_dimensions=(), device="cpu", timeout_s=300)
    assert set(result.per_video) == {"still", "src/noisy"}, result.notes
    flick = {k: v["temporal_flickering"] for k, v in result.per_video.items()}
    assert all(0.0 <= s <= 1.0 for s in flick.values()) and flick["still"] > flick["src/noisy"]
    assert result.scores["temporal_flickering"] == pytest.approx(np.mean(list(flick.values())))
    assert any("'src/noisy' -> 'src%2Fnoisy'" in n for n in result.notes)
    assert "VBench i2v_quality_score not computed" in " ".join(result.notes)


def _dino_repo() -> Path | None:
    """DINO's code as VBench keeps it (VBENCH_CACHE_DIR/dino_model/facebookresearch_dino_main), if present."""
    repo = vb.cache_dir() / _DINO_REPO
    return repo if (repo / "hubconf.py").is_file() else None


_DINO_REPO = "dino_model/facebookresearch_dino_main"


@slow
@needs_env
@pytest.mark.skipif(_dino_repo() is None, reason="no DINO code under VBENCH_CACHE_DIR/dino_model (VBench clones it there)")
def test_vbench_i2v_subject_runs_end_to_end_on_random_dino_weights(tmp_path, monkeypatch):
    """VBenchI2V.evaluate through the adapter, DINO ViT-B/16 with random weights saved where VBench and torch.hub read
    them: nested keys come back as clip keys, and a sample that holds its first frame still scores above noise."""
    from stages.media.video import write_mp4

    cache, hub = tmp_path / "cache", tmp_path / "torch" / "hub"
    (cache / _DINO_REPO).parent.mkdir(parents=True)
    (cache / _DINO_REPO).symlink_to(_dino_repo())
    save = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import vision_transformer as vits; torch.manual_seed(0)\n"
            "sd = vits.vit_base(patch_size=16, num_classes=0).state_dict()\n[torch.save(sd, p) for p in sys.argv[2:]]")
    for path in (cache / "dino_model/dino_vitbase16_pretrain.pth", hub / "checkpoints/dino_vitbase16_pretrain.pth"):
        path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(vb.env_python(VBENCH_ENV)), "-c", save, str(_dino_repo()), str(cache / "dino_model/dino_vitbase16_pretrain.pth"),
                    str(hub / "checkpoints/dino_vitbase16_pretrain.pth")], check=True, capture_output=True)
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rng = np.random.default_rng(0)
    first = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    videos = tmp_path / "samples"
    for key, frames in (("still", np.repeat(first[None], 4, axis=0)), ("src/noisy", rng.integers(0, 255, (4, 64, 96, 3), dtype=np.uint8))):
        (videos / key).parent.mkdir(parents=True, exist_ok=True)
        write_mp4(videos / f"{key}.mp4", frames, 8)
    frames_dir = vb.write_first_frames({"still": first, "src/noisy": first}, tmp_path / "first")
    result = vb.evaluate_vbench(videos, {"still": "a", "src/noisy": "b"}, tmp_path / "out", "m", first_frames_dir=frames_dir,
                                env=VBENCH_ENV.absolute(), dimensions=(), i2v_dimensions=("i2v_subject",), device="cpu", timeout_s=500)
    scores = {k: v["i2v_subject"] for k, v in result.per_video.items()}
    assert set(scores) == {"still", "src/noisy"}, result.notes
    assert 0.0 <= scores["src/noisy"] < scores["still"] <= 1.0
    assert result.scores["i2v_subject"] == pytest.approx(np.mean(list(scores.values())))
