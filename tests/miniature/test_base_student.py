"""The base student's folder loads through the user's `student.model` path; publish needs a finished run."""

import pytest
import torch

from miniature.student import base_config, init, publish
from stages.families.cogvideox.transformer import load_student


def test_init_writes_a_folder_load_student_reads(tmp_path):
    folder = init(tmp_path / "init", seed=3)
    transformer, scheduler = load_student(str(folder), "i2v")
    assert transformer.config.num_layers == base_config()["num_layers"]
    assert scheduler.config.prediction_type == "v_prediction"
    again, _ = load_student(str(init(tmp_path / "again", seed=3)), "i2v")
    for (name, a), (_, b) in zip(transformer.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name  # deterministic in the seed


def test_publish_refuses_a_run_without_an_exported_transformer(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="no exported transformer"):
        publish(tmp_path / "run", tmp_path / "init", tmp_path / "out", {})
