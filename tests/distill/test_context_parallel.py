"""parallel.context: diffusers' context parallelism (Ulysses, native SDPA backend) composed with FSDP2, on 2 gloo
ranks against one rank; and the refusals (a family without a plan, a bad degree, a world it does not divide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT
from stages.config.distill import DistillConfig
from stages.config.loader import ConfigError, load_config
from stages.distill import parallel
from stages.distill.trainer import Trainer

from test_golden_curve_wan import synthetic_wan_store
from test_parallel import assert_weights_close, torchrun

SAMPLE = ROOT / "configs/distill/sample.yaml"
WAN = ["student.model=tiny-wan", "student.task=t2v", "data.num_workers=0", "train.batch_size=1", "train.steps=3",
       "train.checkpoint_every=100", "optim.warmup_steps=0", "optim.schedule=constant", "data.holdout=0", "eval.every=0",
       "train.caption_dropout=0.0", "parallel.strategy=fsdp"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("task", ["t2v", "ti2v"])  # ti2v: per-token timesteps, split with the tokens
def test_tiny_wan_forward_and_backward_split_over_two_ranks_equal_one_rank(tmp_path, task):
    out = tmp_path / "cp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests/context_parallel_run.py"), str(out), "cpu", task]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["task"] == task
    assert r["mesh"] == {"dp": 1, "ring": 1, "ulysses": 2}
    assert r["block_tokens"] == r["tokens"] // 2  # the blocks ran on half the sequence each
    assert r["loss"][1] == pytest.approx(r["loss"][0], rel=1e-6, abs=0)
    assert r["out"] < 1e-5 and r["feats"] < 1e-5  # the output and the tapped tokens whole again
    assert r["grad_names"]  # every weight the one-rank backward reached has a gradient here too
    assert r["grad_sum"] < 1e-5  # the group's gradient (sum of the ranks' shares) is the one-rank gradient
    assert r["grad_local"] > 1e-2  # and one rank's share alone is not: the sum (not a mean) is needed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_context_ranks_train_as_one_rank_on_the_same_stream(tmp_path):
    """2 ranks, parallel.context=2 (one data-parallel rank): through the stream, the tap, LGF and the projector,
    every step's loss, gradient norms and clips, the held-out validation after it, and the trained weights, are
    one rank's without context."""
    store = str(tmp_path / "store")
    synthetic_wan_store(store)
    held_out = ("data.holdout=0.4", "eval.every=100")  # validated once, after training (distributed_run's "validate")
    run = lambda out, *extra: {"mode": "run", "validate": True,  # noqa: E731
                               "overrides": [f"data.store={store}", f"out={tmp_path / out}", *WAN, *held_out, *extra]}
    cp = torchrun(tmp_path, "cp", {**run("cp", "parallel.context=2"), "export": True})
    one = torchrun(tmp_path, "one", run("one"), nproc=1)[0]
    assert one["val"]["lgf"] > 0
    for r in cp:
        assert r["val"] == pytest.approx(one["val"], rel=1e-5)
    assert [m["clips"] for m in cp[0]["history"]] == [m["clips"] for m in cp[1]["history"]] == [m["clips"] for m in one["history"]]
    for r in cp:
        assert [m["loss"] for m in r["history"]] == pytest.approx([m["loss"] for m in one["history"]], rel=1e-5)
        for got, want in zip(r["history"], one["history"]):
            assert got["grad_norms"] == pytest.approx(want["grad_norms"], rel=1e-4)  # student and projector
            assert got["terms"]["lgf"] > 0
    assert_weights_close(cp[0]["weights"], cp[1]["weights"], atol=0)
    assert_weights_close(cp[0]["weights"], one["weights"], atol=2e-5)
    # the export (gathered on rank 0) is the trained LoRA, as the stock Wan loader reads it
    from diffusers import WanPipeline

    exported = WanPipeline.lora_state_dict(cp[0]["exported"])
    lora = {k.replace(".default.", "."): v for k, v in cp[0]["weights"].items() if "lora_" in k}
    assert lora and sorted(exported) == sorted(lora)
    for k, v in exported.items():
        torch.testing.assert_close(v.float(), lora[k], atol=0, rtol=0, msg=k)


def test_context_parallel_config_refusals_name_the_key():
    for bad, words in [(["parallel.context=0"], "parallel.context must be >= 1"),
                       (["parallel.context=2"], "parallel.context=2 needs parallel.strategy=fsdp"),
                       (["parallel.context=2", "parallel.strategy=hsdp"], "needs parallel.strategy=fsdp"),
                       (["parallel.context=2", "parallel.strategy=fsdp", "student.attention=xformers"], "needs student.attention=sdpa")]:
        with pytest.raises(ConfigError, match=words):
            load_config(DistillConfig, SAMPLE, bad)
    assert load_config(DistillConfig, SAMPLE, ["parallel.context=4", "parallel.strategy=fsdp"]).parallel.context == 4


def test_data_rank_groups_consecutive_ranks():
    # world 4, context 2: ranks 0,1 are context group 0 (data rank 0), ranks 2,3 group 1 (data rank 1)
    assert [parallel.data_rank(r, 4, 2) for r in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    assert [parallel.data_rank(r, 2, 1) for r in range(2)] == [(0, 2), (1, 2)]


def test_a_family_without_a_plan_refuses_in_one_line_and_exit_2(tmp_path):
    from pipeline.cli import app

    r = CliRunner().invoke(app, ["distill", "--config", str(SAMPLE), "--out", str(tmp_path / "run"),
                                 "parallel.strategy=fsdp", "parallel.context=2"])  # the tiny CogVideoX
    line = (r.stderr or r.output).strip()
    assert r.exit_code == 2 and len(line.splitlines()) == 1, r.output
    assert "parallel.context=2" in line and "cogvideox" in line and "no context-parallel plan" in line


def test_ltx_refuses_because_diffusers_ulysses_cross_attention_does_not_train():
    from stages.families.registry import student_for

    with pytest.raises(ConfigError, match=r"parallel.context=2: diffusers' context parallelism of the ltx transformer cannot train"):
        student_for("tiny-ltx").check_context_parallel(2)
    student_for("tiny-ltx").check_context_parallel(1)  # off: nothing to refuse
    student_for("tiny-wan").check_context_parallel(2)  # Wan's plan trains (the tests above)


def test_a_context_degree_the_world_does_not_divide_is_refused(tmp_path):
    store = str(tmp_path / "store")
    synthetic_wan_store(store)
    cfg = load_config(DistillConfig, SAMPLE, [f"data.store={store}", f"out={tmp_path / 'run'}", *WAN, "parallel.context=2"])
    with pytest.raises(ConfigError, match=r"parallel.context=2 does not divide the world size 1"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_data_ranks_of_two_context_ranks_train_as_two_plain_fsdp_ranks(tmp_path):
    """4 ranks as dp 2 x context 2 against 2 plain FSDP ranks: the same clips per data rank, and the gradients
    the same mean over data ranks (the transformer's reduced as sum / dp over all 4, the projector's over dp)."""
    store = str(tmp_path / "store")
    synthetic_wan_store(store)
    run = lambda out, *extra: {"mode": "run", "overrides": [f"data.store={store}", f"out={tmp_path / out}", *WAN, *extra]}  # noqa: E731
    cp = torchrun(tmp_path, "cp", run("cp", "parallel.context=2"), nproc=4)
    two = torchrun(tmp_path, "two", run("two"), nproc=2)
    for rank, r in enumerate(cp):
        assert [m["clips"] for m in r["history"]] == [m["clips"] for m in two[rank // 2]["history"]]
        assert [m["loss"] for m in r["history"]] == pytest.approx([m["loss"] for m in two[0]["history"]], rel=1e-5)
        for got, want in zip(r["history"], two[0]["history"]):
            assert got["grad_norms"] == pytest.approx(want["grad_norms"], rel=1e-4)
    assert [m["clips"] for m in two[0]["history"]] != [m["clips"] for m in two[1]["history"]]  # the data ranks differ
    assert_weights_close(cp[0]["weights"], cp[3]["weights"], atol=0)
    assert_weights_close(cp[0]["weights"], two[0]["weights"], atol=2e-5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_context_parallel_run_resumes_loss_for_loss(tmp_path):
    """The DCP checkpoint of a context run (transformer sharded over all ranks, projector over dp) resumes exactly."""
    store = str(tmp_path / "store")
    synthetic_wan_store(store)
    run = lambda out, **spec: {"mode": "run", **spec,  # noqa: E731
                               "overrides": [f"data.store={store}", f"out={tmp_path / out}", *WAN, "train.steps=4", "parallel.context=2"]}
    straight = torchrun(tmp_path, "straight", run("a"))
    torchrun(tmp_path, "first", run("b", stop_at=2))
    rest = torchrun(tmp_path, "rest", run("b", resume=True))
    assert [m["step"] for m in rest[0]["history"]] == [3, 4]
    for r in rest:
        assert [m["loss"] for m in r["history"]] == [m["loss"] for m in straight[0]["history"][2:]]
    assert_weights_close(rest[0]["weights"], straight[0]["weights"], atol=0)
