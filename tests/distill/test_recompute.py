"""Selective activation checkpointing (student.checkpointing): the same maths for every choice, and the memory
plan's choice for a GPU size on the real-size student (meta device)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.config.loader import ConfigError, load_config
from stages.config.distill import DistillConfig
from stages.distill.memory_plan import plan_memory
from stages.distill.recompute import checkpointed_blocks

SAMPLE = ROOT / "configs/distill/sample.yaml"
DEFAULT = ROOT / "configs/distill/default.yaml"
GIB = 2**30


def test_specs_name_blocks_and_bad_ones_are_refused_in_one_line():
    assert checkpointed_blocks("all", 4) == [0, 1, 2, 3] and checkpointed_blocks("none", 4) == []
    assert checkpointed_blocks("every:2", 5) == [0, 2, 4] and checkpointed_blocks("blocks:3", 42) == [0, 14, 28]
    assert checkpointed_blocks("blocks:0", 3) == [] and checkpointed_blocks("blocks:9", 3) == [0, 1, 2]
    for bad in ("every:0", "some", "blocks:x"):
        with pytest.raises(ConfigError, match="is not one of: all, none, every:N"):
            load_config(DistillConfig, SAMPLE, [f"student.checkpointing={bad}"])
    # null keeps the old switch's meaning
    assert load_config(DistillConfig, SAMPLE, ["student.gradient_checkpointing=false"]).student.checkpointing_spec == "none"
    assert load_config(DistillConfig, SAMPLE).student.checkpointing_spec == "all"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_all_none_and_every_second_block_give_the_same_loss_and_gradients(student_store, tmp_path):
    from stages.distill.trainer import Trainer

    results = {}
    for spec in ("all", "none", "every:2"):
        cfg = load_config(DistillConfig, SAMPLE, [f"data.store={student_store}", f"out={tmp_path / spec.replace(':', '')}", "data.num_workers=0",
                                                  "train.batch_size=1", "train.steps=1", f"student.checkpointing={spec}"])
        trainer = Trainer(cfg)
        blocks = trainer.student.blocks(trainer.model.transformer)
        calls = [0] * len(blocks)
        # a pre-hook: checkpoint's recompute stops early once it has the saved tensors, before forward hooks fire
        hooks = [b.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1)) for i, b in enumerate(blocks)]
        metrics = trainer.train_step(trainer.batches())
        for h in hooks:
            h.remove()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        results[spec] = (metrics, grads, calls)
        trainer.close()
    assert results["all"][2] == [2, 2, 2] and results["none"][2] == [1, 1, 1]  # a checkpointed block runs again in backward
    assert results["every:2"][2] == [2, 1, 2]  # the tiny student's 3 blocks: 0 and 2 recompute
    ref_metrics, ref_grads, _ = results["all"]
    for spec in ("none", "every:2"):
        metrics, grads, _ = results[spec]
        assert metrics.terms == pytest.approx(ref_metrics.terms, rel=1e-6, abs=1e-7)
        assert metrics.grad_norms == pytest.approx(ref_metrics.grad_norms, rel=1e-5)
        assert sorted(grads) == sorted(ref_grads)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-7, msg=f"{spec}: {name}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_auto_picks_the_fewest_checkpointed_blocks_that_fit_the_gpu():
    """CogVideoX-5B-I2V LoRA r128 at 49x480x720 (configs/distill/default.yaml), planned on the meta device."""
    cfg = load_config(DistillConfig, DEFAULT, ["student.checkpointing=auto"])
    big, mid = plan_memory(cfg, 1, capacity=80 * GIB), plan_memory(cfg, 1, capacity=40 * GIB)
    assert big.blocks == 42
    for plan, gib in ((big, 80), (mid, 40)):
        assert plan.total <= gib * GIB < plan.with_checkpointed(plan.checkpointed - 1).total  # one block fewer does not fit
        assert plan.checkpointing == f"blocks:{plan.checkpointed}"
    assert 0 < big.checkpointed < mid.checkpointed < 42  # a smaller GPU recomputes more blocks
    # each choice's prediction: fewer checkpointed blocks keep more activations; nothing else changes
    none, every2, full = (plan_memory(load_config(DistillConfig, DEFAULT, [f"student.checkpointing={s}"]), 1) for s in ("none", "every:2", "all"))
    assert none.checkpointed == 0 and every2.checkpointed == 21 and full.checkpointed == 42
    assert none.activations > every2.activations > full.activations and none.weights == full.weights == big.weights
    assert big.fastest_fit(24 * GIB) is None  # even every block checkpointed needs more than 24 GiB by the plan
    # `plan` answers auto for the GPU size it is given, and says the choice
    out = CliRunner().invoke(app, ["plan", "-c", str(DEFAULT), "--gpu-memory", "80", "--json", "student.checkpointing=auto"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["checkpointing"] == big.checkpointing and shown["fits"] and "by_checkpointed" not in shown
