"""`distill --resume` against a changed config, damaged checkpoints and logs, and finished runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.distill.checkpoint.resume import ResumeMismatch
from stages.distill.trainer import Trainer, lr_lambda

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = ROOT / "configs/distill/sample.yaml"


def config(store: str, out: Path, *extra: str) -> DistillConfig:
    base = [f"data.store={store}", f"out={out}", "data.num_workers=0", "train.steps=4", "train.checkpoint_every=2"]
    return load_config(DistillConfig, SAMPLE, [*base, *extra])


def test_changed_lr_is_applied_and_logged(student_store, tmp_path, caplog):
    Trainer(config(student_store, tmp_path)).run(stop_at=2)
    with caplog.at_level(logging.WARNING, logger="stages.distill.checkpoint.resume"):
        trainer = Trainer(config(student_store, tmp_path, "optim.lr=0.002"), resume=True)
    assert "optim.lr changed 0.001 -> 0.002" in caplog.text
    rest = trainer.run()
    assert [m.step for m in rest] == [3, 4]
    # the step-3 update used the new base rate on the same schedule position
    expected = 0.002 * lr_lambda(trainer.cfg)(3)
    assert rest[0].lr == pytest.approx(expected)


def test_changed_rank_or_batch_size_is_refused_naming_the_key(student_store, tmp_path):
    Trainer(config(student_store, tmp_path)).run(stop_at=2)
    with pytest.raises(ResumeMismatch, match=r"student\.lora\.rank: 4 -> 8"):
        Trainer(config(student_store, tmp_path, "student.lora.rank=8"), resume=True)
    cli = CliRunner().invoke(app, ["distill", "-c", str(SAMPLE), "--store", student_store, "--out", str(tmp_path), "--resume",
                                   "data.num_workers=0", "train.steps=4", "train.checkpoint_every=2", "train.batch_size=1"])
    assert cli.exit_code == 2
    assert "train.batch_size: 2 -> 1" in cli.output and "Traceback" not in cli.output


def test_torn_newest_checkpoint_and_metrics_line_fall_back_to_the_last_good_state(student_store, tmp_path, caplog):
    straight = Trainer(config(student_store, tmp_path / "a")).run()
    out = tmp_path / "b"
    Trainer(config(student_store, out)).run()
    newest = out / "checkpoints/step-000004/model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # a torn write
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a kill mid-line
    (out / "checkpoints/.tmp-step-000006-dead").mkdir()  # an interrupted write of a killed run
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config(student_store, out), resume=True)
    assert "step-000004 cannot be read" in caplog.text and "not a complete JSON line" in caplog.text
    assert trainer.step == 2 and not (out / "checkpoints/.tmp-step-000006-dead").exists()
    rest = trainer.run()
    assert [m.loss for m in rest] == [m.loss for m in straight[2:]]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_resume_without_checkpoint_and_of_a_finished_run_say_so(student_store, tmp_path):
    args = ["distill", "-c", str(SAMPLE), "--store", student_store, "--out", str(tmp_path), "data.num_workers=0", "train.steps=2"]
    none = CliRunner().invoke(app, [*args, "--resume"])
    assert none.exit_code == 2 and "no checkpoint in" in none.output
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "nothing to train: the run is already at step 2 of 2" in again.output and "nan" not in again.output
