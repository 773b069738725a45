"""The miniature ablation table pools an arm's training seeds and pairs arms on the same videos."""

import pytest

from miniature.arms import arm_of, run_name
from miniature.table import build_table, render


def test_run_names_round_trip():
    assert arm_of(run_name("forward-only", 2)) == ("forward-only", 2)
    with pytest.raises(ValueError, match="not an arm run name"):
        arm_of("base")


def _rows(model, offset, clips=6, seeds=(0, 1)):
    # structure_score higher is better; flow_magnitude has no direction
    return [{"model": model, "clip": f"c{c}", "seed": s, "structure_score": 0.5 + 0.01 * c + offset, "flow_magnitude": 1.0 + c}
            for c in range(clips) for s in seeds]


def test_a_better_arm_is_better_on_every_paired_video():
    per_video = _rows("base", -0.05)
    for seed in (0, 1, 2):
        per_video += [{**r, "model": f"ldiff-s{seed}"} for r in _rows("x", 0.0)]
        per_video += [{**r, "model": f"lgf-s{seed}"} for r in _rows("x", 0.02 + 0.001 * seed)]
    table = build_table({"per_video": per_video})
    assert table["arms"] == ["base", "ldiff", "lgf"]
    assert table["means"]["lgf"]["structure_score"]["n"] == 6 * 2 * 3  # clips x sampling seeds x training seeds
    diff = table["vs_reference"]["lgf"]["structure_score"]
    assert diff["mean"] == pytest.approx(0.021) and diff["low"] > 0
    assert table["verdicts"]["lgf"]["structure_score"] == "better"
    assert table["vs_base"]["ldiff"]["structure_score"]["mean"] == pytest.approx(0.05)
    assert table["vs_reference"]["lgf"]["flow_magnitude"]["mean"] == pytest.approx(0.0)
    text = render(table, {"clips_per_model": 6, "seeds": [0, 1], "training_seeds": [0, 1, 2]})
    assert "| lgf | " in text and "**+0.0210" in text


def test_an_arm_equal_to_the_reference_is_within_noise():
    per_video = []
    for seed in (0, 1, 2):
        per_video += [{**r, "model": f"ldiff-s{seed}"} for r in _rows("x", 0.0)]
        per_video += [{**r, "model": f"repa-s{seed}", "structure_score": r["structure_score"] + (0.01 if r["seed"] else -0.01)}
                      for r in _rows("x", 0.0)]
    table = build_table({"per_video": per_video})
    assert table["verdicts"]["repa"]["structure_score"] == "within noise"
    assert "vs_base" in table and not table["vs_base"]
