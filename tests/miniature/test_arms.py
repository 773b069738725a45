"""The arms runner trains each (arm, seed) into <arm>-s<seed> through the real trainer, and resumes a table."""

import json

import pytest

from miniature.arms import train_arms


@pytest.mark.slow
def test_arms_train_once_each_and_a_rerun_skips_exported_runs(tmp_path, student_store):
    overrides = ["student.model=tiny", f"data.store={student_store}", "data.teacher_column=null", "train.steps=2", "train.batch_size=1",
                 "train.log_every=1", "data.holdout=0.2", "data.shuffle_buffer=2", "projector.hidden=16"]
    rows = train_arms(tmp_path, arms=["ldiff", "lgf"], seeds=(0,), overrides=overrides)
    assert set(rows) == {"ldiff-s0", "lgf-s0"}
    assert rows["ldiff-s0"]["terms"].keys() == {"diff"}  # the reference arm has no feature loss
    assert "lgf" in rows["lgf-s0"]["terms"]
    for name in rows:
        info = json.loads((tmp_path / name / "lora" / "sam2videox.json").read_text())
        assert info["config"]["train"]["seed"] == 0
    assert train_arms(tmp_path, arms=["ldiff", "lgf"], seeds=(0,), overrides=overrides) == {}
    assert set(json.loads((tmp_path / "arms.json").read_text())) == {"ldiff-s0", "lgf-s0"}
    with pytest.raises(ValueError, match="unknown arm"):
        train_arms(tmp_path, arms=["nope"])
