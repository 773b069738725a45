"""`sam2videox evaluate`: held-out clips, samples from every model, teacher tracking, report, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.store import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = ROOT / "configs/distill/sample.yaml"


@pytest.fixture(scope="module")
def trained_run(student_store, tmp_path_factory) -> Path:
    """A 2-step tiny LoRA run on the session store, exported, validated at its last step; its holdout.json
    (data.holdout's default on 6 clips) names the clips it did not train on."""
    out = tmp_path_factory.mktemp("evalrun") / "run"
    r = CliRunner().invoke(app, ["distill", "-c", str(SAMPLE), "--store", student_store, "--out", str(out), "data.num_workers=0",
                                 "train.steps=2", "train.checkpoint_every=2", "train.batch_size=1", "eval.every=2", "eval.timesteps=[500]"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "holdout.json").read_text())["keys"]
    return out


def _line(result) -> str:
    return (result.stderr or result.output).strip()


def invoke(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args])


def test_bad_input_is_one_line_and_exit_2(student_store, trained_run, tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    r = invoke("--store", student_store, "--runs", str(empty), "--out", str(tmp_path / "e"))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1, r.output
    assert "has no exported LoRA" in _line(r) and str(empty) in _line(r)

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    (other / "holdout.json").write_text(json.dumps({"fraction": 0.5, "total": 6, "keys": ["a", "b"]}))
    r = invoke("--store", student_store, "--runs", str(trained_run), str(other), "--out", str(tmp_path / "e"))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1, r.output
    assert "different held-out clips" in _line(r) and "other" in _line(r) and trained_run.name in _line(r)

    (other / "holdout.json").write_text(json.dumps({"fraction": 0.5, "total": 6, "keys": ["clip_that_is_not_there"]}))
    r = invoke("--store", student_store, "--runs", str(other), "--out", str(tmp_path / "e"))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1, r.output
    assert "does not hold the held-out clip(s) clip_that_is_not_there" in _line(r)

    r = invoke("--store", str(tmp_path / "no-store"), "--runs", str(trained_run), "--out", str(tmp_path / "e"))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1 and "no-store" in _line(r), r.output

    r = invoke("--store", student_store, "--runs", str(trained_run), "--out", str(tmp_path / "e"), "--fvd-backbone", str(tmp_path / "i3d.pt"))
    assert r.exit_code == 2 and len(_line(r).splitlines()) == 1 and "i3d.pt not found" in _line(r), r.output

    (other / "holdout.json").unlink()
    r = invoke("--store", student_store, "--runs", str(other), "--out", str(tmp_path / "e"))
    assert r.exit_code == 2 and "no holdout.json" in _line(r) and "other" in _line(r)
    assert not (tmp_path / "e").exists()  # refused before anything was built or written


def test_a_folder_of_runs_is_its_runs(trained_run, tmp_path):
    from stages.evaluate.runs import resolve_runs

    for name in ("lgf", "repa"):
        shutil.copytree(trained_run / "lora", tmp_path / "ablations" / name / "lora")
    (tmp_path / "ablations" / "ablations.json").write_text("{}")
    runs = resolve_runs([tmp_path / "ablations", trained_run])
    assert [r.name for r in runs] == ["lgf", "repa", trained_run.name]
    listed = resolve_runs(sorted((tmp_path / "ablations").iterdir()))  # `ls -d ablations/*`: ablations.json is skipped
    assert [r.name for r in listed] == ["lgf", "repa"]
    assert runs[0].lora_dir == tmp_path / "ablations" / "lgf" / "lora" and runs[0].student_model == "tiny"


def test_validation_columns_come_from_the_runs_last_val_row(trained_run):
    from stages.evaluate.evaluate import _validation

    val = _validation(trained_run)
    assert set(val) >= {"val/diff", "val/diff@500", "val/lgf"} and all(np.isfinite(v) for v in val.values())
    last = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["split"] == "val" and val["val/diff"] == last["terms"]["diff"]


def test_samples_share_seeds_and_a_lora_loaded_in_turn_equals_the_generate_path(student_store, trained_run, tmp_path):
    """Base, then the run's LoRA, then base again on one pipeline: the second base sample equals the first (the
    LoRA was unloaded) and the run's sample equals `generate`'s pipeline built with the LoRA."""
    from stages.evaluate.clips import load_clips, store_settings
    from stages.evaluate.sampling import Model, SamplingSettings, grid_video, sample_models, sample_name
    from stages.families.registry import get_student
    from stages.families.sampling import resolve_sampling

    store = FeatureStore(student_store)
    video, encoders, _ = store_settings(store)
    key = json.loads((trained_run / "holdout.json").read_text())["keys"][0]
    clips = load_clips(store, [key], video)
    assert clips[0].frames.shape == (17, 128, 192, 3) and clips[0].prompt is not None
    settings = SamplingSettings(resolve_sampling("cpu", None, 2), 6.0, (3,), encoders["max_text_len"], video.fps)
    lora = trained_run / "lora"
    models = [Model("base", "tiny", None), Model("run", "tiny", lora), Model("base_again", "tiny", None)]
    samples, seconds = sample_models(models, clips, encoders["model"], settings, tmp_path)
    assert set(seconds) == {"base", "run", "base_again"}
    assert np.array_equal(samples["base"][key, 3], samples["base_again"][key, 3])
    assert not np.array_equal(samples["base"][key, 3], samples["run"][key, 3])  # the trained LoRA changes the sample
    cogvideox = get_student("cogvideox")
    pipe = cogvideox.build_pipeline("tiny", encoders["model"], lora, "i2v", "cpu", torch.float32)
    alone = cogvideox.sample(pipe, "i2v", clips[0].frames[0], clips[0].caption, 17, 128, 192, 2, 6.0, 3, encoders["max_text_len"])
    assert np.abs(alone.astype(int) - samples["run"][key, 3].astype(int)).max() <= 1  # float reassociation only
    for name in ("base", "run"):
        assert (tmp_path / name / f"{sample_name(key, 3)}.mp4").stat().st_size > 0
    grid = grid_video(clips[0].frames, {"base": samples["base"][key, 3], "run": samples["run"][key, 3]})
    assert grid.shape[0] == 17 and grid.shape[2] == 3 * 192 and grid.shape[1] > 128
    assert np.array_equal(grid[:, -128:, :192], clips[0].frames)  # real on the left, under the label bar


def test_a_judge_set_to_the_teacher_reproduces_the_stored_masks_and_is_flagged(student_store, trained_run):
    """A judge configured as the store's teacher (same config, seed, size) gives the teacher column's stored mask on
    the real held-out clip (the judge tracks like the teacher did), and resolve_judge flags it as the teacher."""
    from pipeline.inspect import find_clip
    from stages.evaluate.clips import load_clips, store_settings, teacher_config
    from stages.evaluate.judge import Judge, JudgeConfig, resolve_judge
    from stages.core.grid import TokenGrid, mask_to_token_grid

    store = FeatureStore(student_store)
    video, _, raw = store_settings(store)
    teacher = teacher_config(raw)
    key = json.loads((trained_run / "holdout.json").read_text())["keys"][0]
    clip = load_clips(store, [key], video, teacher.prompt)[0]
    cfg = JudgeConfig(model=teacher.model, checkpoint=teacher.checkpoint, seed=teacher.seed, mask_threshold=teacher.mask_threshold,
                      device="cpu", dtype=teacher.dtype)
    plan = resolve_judge(cfg, teacher)
    assert any("the judge is the teacher" in w for w in plan.warnings)
    masks = Judge(cfg, plan).masks(clip.frames, clip.prompt)
    assert masks.shape == (17, 128, 192) and masks.dtype == bool
    column, data, row, _ = find_clip(store, "teacher", key)
    stored = column.read_row(data, "mask", row)
    mine = mask_to_token_grid(torch.from_numpy(masks), TokenGrid(*stored.shape), 4).numpy()  # uint8 [T, h, w]
    assert np.abs(mine.astype(int) - stored.astype(int)).max() <= 2
    assert masks[0].any()


def test_evaluate_runs_and_base_end_to_end(student_store, trained_run, tmp_path):
    from stages.evaluate.metrics.registry import METRICS
    from stages.evaluate.sampling import sample_name

    out = tmp_path / "eval"
    r = invoke("--store", student_store, "--runs", str(trained_run), "--base", "--out", str(out), "--steps", "2",
               "--seed", "7", "--seeds", "2", "--clips", "2", "--fvd-min-videos", "2")
    assert r.exit_code == 0, r.output
    keys = json.loads((trained_run / "holdout.json").read_text())["keys"][:2]
    assert len(keys) == 2  # the session store's split (sha256 of its keys) holds out two clips: FVD is measurable
    report = json.loads((out / "report.json").read_text())
    rows, protocol = report["rows"], report["protocol"]
    assert list(rows) == ["base", trained_run.name]
    for name, row in rows.items():
        for column in [*METRICS, "fvd"]:
            assert row[column] is not None and np.isfinite(row[column]), (name, column)
        for key in keys:
            for seed in (7, 8):
                assert (out / "samples" / name / f"{sample_name(key, seed)}.mp4").stat().st_size > 0
    assert len(report["per_video"]) == 2 * 2 * 2 and report["reference"] == "base"
    assert set(report["verdicts"][trained_run.name]) >= set(METRICS)
    assert report["intervals"]["base"]["presence"]["n"] == 4
    judge = protocol["judge"]
    assert judge["model"] == "tiny" and any("random weights" in w for w in judge["warnings"])
    assert rows[trained_run.name]["val/diff"] is not None and rows["base"]["val/diff"] is None  # no training run: no validation
    assert rows["base"]["fvd"] != rows[trained_run.name]["fvd"]
    fvd_cell = report["corpus"]["base"]["fvd"]
    assert fvd_cell["low"] <= fvd_cell["value"] <= fvd_cell["high"] and protocol["fvd"]["protocol"] == "cd-fvd/videomae"
    for key in keys:
        assert (out / "grids" / f"{key}.mp4").stat().st_size > 0
    assert protocol["clips"] == keys and protocol["seeds"] == [7, 8] and protocol["sampling_steps"] == 2
    assert protocol["frames"] == 17 and protocol["resolution"] == [128, 192] and protocol["videos_per_model"] == 4
    assert protocol["fvd"]["num_generated"] == 4
    assert protocol["vbench"]["skipped"].startswith("VBench skipped")  # no .venv-vbench here
    text = (out / "report.md").read_text()
    assert f"| {trained_run.name} |" in text and "| base |" in text and "sampling_steps" in text
    assert (out / "report.png").stat().st_size > 0

    summary = tmp_path / "summary.md"
    r = CliRunner().invoke(app, ["report", "--store", student_store, "--run", str(trained_run), "--out", str(summary),
                                 "--evaluation", str(out)])
    assert r.exit_code == 0, r.output
    assert "[eval/report.md](eval/report.md)" in summary.read_text()


def test_one_held_out_clip_leaves_fvd_out_with_the_reason(student_store, trained_run, tmp_path):
    r = invoke("--store", student_store, "--runs", str(trained_run), "--out", str(tmp_path), "--steps", "1", "--clips", "1",
               "--no-vbench")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows"][trained_run.name]["fvd"] is None and "n/a (N=1)" in (tmp_path / "report.md").read_text()
    assert report["protocol"]["vbench"] == {"skipped": "--no-vbench"}


def test_a_cogvideox_t2v_run_is_sampled_through_cogvideox_pipeline(student_store, tmp_path):
    """A CogVideoX text-to-video run (tiny task t2v): `generate` and `evaluate` sample it through the stock
    CogVideoXPipeline from the caption at the clip's size (load_student(model, "i2v") used to refuse it)."""
    from stages.families.registry import get_student

    run = tmp_path / "t2v"
    r = CliRunner().invoke(app, ["distill", "-c", str(SAMPLE), "--store", student_store, "--out", str(run), "data.num_workers=0",
                                 "student.task=t2v", "train.steps=1", "train.batch_size=1", "train.checkpoint_every=100"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "sample.mp4"
    r = CliRunner().invoke(app, ["generate", "--run", str(run), "--store", student_store, "--out", str(out), "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 0 and "17 frames 128x192" in r.output and "CogVideoXPipeline (t2v)" in r.output
    cogvideox = get_student("cogvideox")
    pipe = cogvideox.build_pipeline("tiny", "tiny", run / "lora", "t2v")
    assert type(pipe).__name__ == "CogVideoXPipeline"
    ev = tmp_path / "eval"
    r = invoke("--store", student_store, "--runs", str(run), "--base", "--out", str(ev), "--steps", "2", "--clips", "1", "--no-vbench")
    assert r.exit_code == 0, r.output
    rows = json.loads((ev / "report.json").read_text())["rows"]
    assert set(rows) == {"base", "t2v"} and all(np.isfinite(rows[m]["flicker"]) for m in rows)
    assert len(list((ev / "samples").rglob("*.mp4"))) == 2
