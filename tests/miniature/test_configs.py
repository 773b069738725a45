"""The miniature world's configs load, and its arms differ from each other only in their loss."""

from dataclasses import asdict
from pathlib import Path

import pytest

from miniature.arms import ARMS, BASE
from miniature.world import WORLD
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig
from stages.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["extract_base", "extract_tune"])
def test_extract_configs_read_the_world_at_its_size(name):
    cfg = load_config(ExtractConfig, ROOT / f"configs/miniature/{name}.yaml")
    assert (cfg.video.num_frames, cfg.video.height, cfg.video.width, cfg.video.fps) == (WORLD.frames, WORLD.height, WORLD.width, WORLD.fps)
    assert cfg.encoders.model == "weights/miniature/encoders"


def test_every_arm_changes_only_the_losses_or_the_teacher_column():
    ref = asdict(load_config(DistillConfig, [BASE]))
    arms = sorted(ARMS.glob("*.yaml"))
    assert {a.stem for a in arms} >= {"ldiff", "lgf", "repa", "forward-only"}
    for arm in arms:
        cfg = asdict(load_config(DistillConfig, [BASE, arm]))
        changed = {k for k in ref if ref[k] != cfg[k]}
        assert changed <= {"losses", "data"}, (arm.stem, changed)
        data_changed = {k for k in ref["data"] if ref["data"][k] != cfg["data"][k]}
        assert data_changed <= {"teacher_column"}, (arm.stem, data_changed)
