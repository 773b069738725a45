"""`evaluate`'s choice of clips (stages/evaluate/runs.py): never a clip a run trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.evaluate.runs import EvaluateError, RunRef, heldout_keys
from stages.store.holdout import key_position, make_holdout, write_holdout

KEYS = [f"clip_{i:03d}" for i in range(40)]
INFO = {"config": {"student": {"model": "tiny"}}}


def run(tmp_path: Path, name: str, clips, fraction: float = 0.1, explicit=()) -> RunRef:
    """A run folder as far as the split goes: its holdout.json (clips: the store's rows when it was made)."""
    path = tmp_path / name
    if clips is not None:
        write_holdout(path, make_holdout(clips, fraction, explicit))
    else:
        path.mkdir()
    return RunRef(name, path, INFO)


def trained_key(fraction: float = 0.1) -> str:
    return next(k for k in KEYS if key_position(k) >= fraction)


def test_a_clip_a_run_trained_on_is_refused_naming_clip_and_run(tmp_path):
    a, b = run(tmp_path, "a", KEYS), run(tmp_path, "b", KEYS, explicit=[trained_key()])
    with pytest.raises(EvaluateError, match=rf"^clip {trained_key()}: run a trained on it \(not in .*a/holdout\.json") as err:
        heldout_keys([a, b], KEYS, explicit=[trained_key()])
    assert "\n" not in str(err.value)
    with pytest.raises(EvaluateError, match=r"^clip clip_\d+: run b trained on it"):
        heldout_keys([b], KEYS, fraction=0.3)  # the rule at another fraction picks clips b trained on
    legacy = run(tmp_path, "legacy", None)  # no holdout.json: trained on every clip
    with pytest.raises(EvaluateError, match=rf"^clip {trained_key()}: run legacy has no holdout\.json"):
        heldout_keys([b, legacy], KEYS, explicit=[trained_key()])
    # clips every run held out, and the base model alone, are fine
    held = make_holdout(KEYS, 0.1).keys
    assert heldout_keys([a, b], KEYS, explicit=held[:1])[0] == held[:1]
    assert heldout_keys([], KEYS, explicit=[trained_key()])[0] == [trained_key()]


def test_refusals_never_suggest_a_flag_that_evaluates_trained_on_clips(tmp_path):
    a, b = run(tmp_path, "a", KEYS), run(tmp_path, "b", KEYS, 0.3)
    with pytest.raises(EvaluateError, match="different held-out clips") as err:
        heldout_keys([a, b], KEYS)
    common = sorted(set(make_holdout(KEYS, 0.1).keys) & set(make_holdout(KEYS, 0.3).keys))
    message = str(err.value)
    assert "--holdout FRACTION" not in message and "--holdout/" not in message
    assert f"--holdout-key ({len(common)} in common: {common[0]}" in message  # safe: checked against every run
    assert heldout_keys([a, b], KEYS, explicit=common)[0] == common
    legacy = run(tmp_path, "legacy", None)
    with pytest.raises(EvaluateError, match="have no holdout.json") as err:
        heldout_keys([a, legacy], KEYS)
    assert "--holdout" not in str(err.value)


def test_a_held_out_clip_whose_copy_the_run_trained_on_is_refused(tmp_path):
    """A split made before copies were grouped held out one file and trained on its copy."""
    held = make_holdout(KEYS, 0.1).keys[0]
    old = run(tmp_path, "old", KEYS)  # per-key split: the copy below was trainable
    rows = [{"key": k, "url": f"/v/{k}.mp4", **({"content_hash": "h"} if k in (held, trained_key()) else {})} for k in KEYS]
    with pytest.raises(EvaluateError, match=rf"^clip {held}: run old trained on {trained_key()}, the same video"):
        heldout_keys([old], rows)
    # a copy appended after the run (past holdout.json's total) was never trained on by it
    later = [*[{"key": k, "url": f"/v/{k}.mp4"} for k in KEYS], {"key": "appended_copy", "url": f"/v/{held}.mp4"}]
    assert held in heldout_keys([old], later)[0]


def test_runs_on_different_teacher_columns_share_the_sam2_settings_most_of_them_used():
    from types import SimpleNamespace

    from stages.evaluate.evaluate import _common_teacher_column

    runs = [SimpleNamespace(info={"teacher_column": c}) for c in
            ("teacher-aaa", "teacher-bbb", "teacher-bbb", "image_teacher-ccc", None)]
    assert _common_teacher_column(runs) == "teacher-bbb"  # DINOv2's column never prompts the clips
    assert _common_teacher_column([SimpleNamespace(info={"teacher_column": "image_teacher-ccc"})]) is None
