"""The LGF cutoff by held-out agreement (losses.lgf.cutoff): the controller fed values, then a tiny run that cuts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT
from stages.config.loader import ConfigError, load_config
from stages.config.distill import DistillConfig
from stages.distill.cutoff import AgreementCutoff

SAMPLE = ROOT / "configs/distill/sample.yaml"


def test_weight_goes_to_zero_after_patience_validations_without_improvement():
    c = AgreementCutoff(patience=2, min_delta=0.01)
    # improving, then a plateau: 0.795 is not better than 0.80 by more than 0.01
    cuts = [c.observe(step, v) for step, v in [(10, 1.0), (20, 0.9), (30, 0.8), (40, 0.795), (50, 0.81)]]
    assert cuts == [False, False, False, False, True]
    assert c.scale == 0.0 and c.cuts == [50] and c.best == 0.8
    assert not c.observe(60, 0.1)  # off for good: a later improvement does not bring it back
    assert c.scale == 0.0


def test_decay_factor_cuts_again_after_each_plateau_and_state_round_trips():
    c = AgreementCutoff(patience=1, factor=0.5)
    for step, v in [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.6), (5, 0.7)]:
        c.observe(step, v)
    assert c.cuts == [2, 4, 5] and c.scale == 0.125
    again = AgreementCutoff(patience=1, factor=0.5)
    again.load(json.loads(json.dumps(c.state())))
    assert again == c
    nan = AgreementCutoff(patience=1)  # a nan never counts as an improvement
    nan.observe(1, 1.0)
    assert nan.observe(2, float("nan"))


def test_cutoff_needs_validation_and_a_valid_config():
    with pytest.raises(ConfigError, match="eval.every > 0"):
        load_config(DistillConfig, SAMPLE, ["eval.every=0", "losses.lgf.cutoff.patience=2"])
    with pytest.raises(ConfigError, match="factor"):
        load_config(DistillConfig, SAMPLE, ["losses.lgf.cutoff.patience=2", "losses.lgf.cutoff.factor=1.5"])
    assert AgreementCutoff.from_config(load_config(DistillConfig, SAMPLE).losses.lgf.cutoff) is None  # off by default


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_cuts_the_lgf_loss_at_the_plateau_logs_it_and_resumes_the_cut(student_store, tmp_path):
    from stages.distill.trainer import Trainer

    def cfg(out: Path) -> DistillConfig:
        # min_delta far above any change: the second validation is a plateau, so patience 1 cuts at step 2
        return load_config(DistillConfig, SAMPLE, [f"data.store={student_store}", f"out={out}", "data.num_workers=0", "train.batch_size=1",
                                                   "train.steps=4", "train.checkpoint_every=2", "eval.every=1", "eval.max_clips=1",
                                                   "eval.timesteps=[500]", "losses.lgf.cutoff.patience=1", "losses.lgf.cutoff.min_delta=1e9"])

    straight = Trainer(cfg(tmp_path / "a")).run()
    assert [sorted(m.weights) for m in straight] == [["lgf"], ["lgf"], [], []]  # steps 3 and 4 train without L_feat
    assert [sorted(m.terms) for m in straight][2:] == [["diff"], ["diff"]]
    rows = [json.loads(line) for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("split") == "val"]
    assert [r["lgf_cutoff"]["scale"] for r in val] == [1.0, 0.0, 0.0, 0.0]
    assert val[1]["lgf_cutoff"]["cuts"] == [2] and val[0]["lgf_cutoff"]["metric"] == "lgf_projected"
    # resumed after the cut: the checkpoint's state keeps the loss off, loss for loss as the straight run
    Trainer(cfg(tmp_path / "b")).run(stop_at=2)
    state = json.loads((tmp_path / "b/checkpoints/step-000002/state.json").read_text())
    assert state["lgf_cutoff"]["scale"] == 0.0
    resumed = Trainer(cfg(tmp_path / "b"), resume=True)
    assert resumed.loss_context.lgf_scale == 0.0
    rest = resumed.run()
    assert [m.loss for m in rest] == [m.loss for m in straight[2:]]
    assert [m.weights for m in rest] == [{}, {}]
