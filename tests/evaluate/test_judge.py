"""stages/evaluate/judge.py: the judge is another SAM2 than the teacher by default, says so when it is not,
refuses a checkpoint that does not load in one line, and prompts text-to-video samples on their own frame 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.config.extract import TeacherConfig
from stages.evaluate.judge import Judge, JudgeConfig, JudgeError, resolve_judge


def test_auto_picks_the_teachers_other_size_and_its_checkpoint_beside_the_teachers(tmp_path):
    (tmp_path / "sam2.1_hiera_large.pt").write_bytes(b"")
    teacher = TeacherConfig(model="sam2.1_hiera_l", checkpoint=str(tmp_path / "sam2.1_hiera_large.pt"))
    with pytest.raises(JudgeError, match="sam2.1_hiera_base_plus.pt beside the teacher's"):
        resolve_judge(JudgeConfig(), teacher)
    (tmp_path / "sam2.1_hiera_base_plus.pt").write_bytes(b"")
    judge = resolve_judge(JudgeConfig(), teacher)
    assert judge.model == "sam2.1_hiera_b+" and judge.checkpoint == str(tmp_path / "sam2.1_hiera_base_plus.pt")
    assert judge.seed is None and judge.warnings == ()
    small = resolve_judge(JudgeConfig(), TeacherConfig(model="sam2.1_hiera_t"))
    assert small.model == "sam2.1_hiera_s" and small.checkpoint is None and "random weights" in small.warnings[0]


def test_a_tiny_teacher_is_judged_by_another_init_and_the_teacher_itself_is_flagged():
    teacher = TeacherConfig(model="tiny", image_size=64, seed=3)
    judge = resolve_judge(JudgeConfig(), teacher)
    assert judge.model == "tiny" and judge.seed == 4 and judge.image_size == 64
    assert not any("is the teacher" in w for w in judge.warnings)
    same = resolve_judge(JudgeConfig(model="tiny", seed=3), teacher)
    assert any("the judge is the teacher" in w for w in same.warnings)
    with pytest.raises(JudgeError, match="--judge-model"):
        resolve_judge(JudgeConfig(), None)


def test_a_checkpoint_that_does_not_load_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "judge.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = JudgeConfig(model="tiny", checkpoint=str(bad), image_size=64, device="cpu")
    with pytest.raises(JudgeError) as err:
        Judge(cfg, resolve_judge(cfg, None))
    assert str(bad) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_the_judge_tracks_a_video_from_its_own_frame_0(sample_generator):
    clip = sample_generator.render_clip(0, frames=5, height=64, width=96)
    cfg = JudgeConfig(model="tiny", checkpoint=None, image_size=64, device="cpu", dtype="float32")
    masks = Judge(cfg, resolve_judge(cfg, None)).masks(clip.frames)
    assert masks.shape == (5, 64, 96) and masks.dtype == bool


def test_text_to_video_samples_get_no_borrowed_prompt():
    """Image-to-video samples start from the held-out clip's frame 0 and keep its prompt; text-to-video ones do not."""
    from stages.evaluate.clips import HeldOutClip
    from stages.evaluate.evaluate import _videos
    from stages.evaluate.sampling import Model
    from stages.teacher.prompts import Prompt

    prompt = Prompt("manifest", box=[1.0, 1.0, 8.0, 8.0])
    clip = HeldOutClip("k", "a cat", np.zeros((3, 16, 16, 3), np.uint8), prompt)
    frames = {("k", 0): clip.frames}
    videos = _videos([Model("i2v", "tiny", None, "i2v"), Model("t2v", "tiny", None, "t2v")], [clip], {"i2v": frames, "t2v": frames})
    assert {v.model: v.prompt for v in videos} == {"i2v": prompt, "t2v": None}
