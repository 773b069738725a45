"""The memory plan against a real tiny/mid student: exact counts, and activations within a band."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.distill.memory_plan import activation_parts, plan_memory
from stages.families.cogvideox.transformer import COGVIDEOX_5B_SCHEDULER, tiny_transformer_config
from stages.distill.trainer import Trainer, distill_loss, step_seed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = ROOT / "configs/distill/sample.yaml"


def mid_student(folder) -> str:
    """A 4-block student with real 64-wide heads, on the tiny student's latent grid (the same store fits)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    config = {**tiny_transformer_config("i2v"), "num_attention_heads": 4, "attention_head_dim": 64, "num_layers": 4}
    torch.manual_seed(0)
    CogVideoXTransformer3DModel(**config).save_pretrained(folder / "transformer")
    CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER).save_pretrained(folder / "scheduler")
    return str(folder)


def build(store, tmp_path, *extra):
    cfg = load_config(DistillConfig, SAMPLE, [f"data.store={store}", f"out={tmp_path / 'run'}", "data.num_workers=0",
                                              "train.batch_size=1", "optim.mixed_precision=no", *extra])
    trainer = Trainer(cfg)
    lat = trainer.data.encodings.schema["latents"].shape
    text = trainer.data.encodings.schema["prompt_embeds"].shape[0]
    return trainer, plan_memory(cfg, 1, latent_shape=tuple(lat[1:]), text_len=text, teacher_channels=trainer.data.teacher_channels)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("variant", ["lora", "full"])
def test_weights_masters_grads_and_optimizer_are_counted_exactly(student_store, tmp_path, variant):
    trainer, plan = build(student_store, tmp_path, *(["student.full_finetune=true"] if variant == "full" else []))
    model = trainer.model
    trainer.train_step(trainer.batches())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trained)  # masters
    assert plan.weights == nbytes(p for p in model.transformer.parameters() if not p.requires_grad)
    assert plan.masters == nbytes(trained)
    assert plan.grads == nbytes(p.grad for p in trained)
    moments = [v for state in trainer.optimizer.state.values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")]
    assert plan.optimizer == nbytes(moments)
    trainer.close()


def saved_bytes(trainer) -> int:
    """Bytes of the distinct storages autograd keeps from one micro-batch's forward to its backward."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch, _ = next(trainer.batches())
    gen = torch.Generator().manual_seed(step_seed(0, 0, 0, 0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _, _ = distill_loss(trainer.loss_context, trainer.ddp, batch, gen, 0)
    del total
    return sum(storages.values())


@pytest.mark.parametrize("size", ["tiny", "mid"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_is_within_a_third_of_what_autograd_keeps(student_store, tmp_path, size, checkpointing):
    model = "tiny" if size == "tiny" else mid_student(tmp_path / "mid")
    trainer, plan = build(student_store, tmp_path, f"student.model={model}", f"student.gradient_checkpointing={str(checkpointing).lower()}")
    measured = saved_bytes(trainer)
    c = trainer.tconfig
    lat = trainer.data.encodings.schema["latents"].shape
    video = (lat[1]) * (lat[2] // c.patch_size) * (lat[3] // c.patch_size)
    width = c.num_attention_heads * c.attention_head_dim
    parts = activation_parts(trainer.cfg, c, plan.tokens, video, width, 4, trainer.data.teacher_channels)
    estimate = parts["forward"] + parts["head"]  # what the forward keeps (the recomputed block comes later)
    assert 0.75 < estimate / measured < 1.33, (estimate, measured)
    trainer.close()


def test_plan_command_refuses_full_finetuning_under_ddp_at_5b_and_passes_fsdp():
    base = ["plan", "-c", str(ROOT / "configs/distill/default.yaml"), "--gpus", "8", "--gpu-memory", "80"]
    ddp = CliRunner().invoke(app, [*base, "student.full_finetune=true"])
    assert ddp.exit_code == 1, ddp.output
    assert "does not fit" in ddp.output and "parallel.strategy=fsdp" in ddp.output
    fsdp = CliRunner().invoke(app, [*base, "--json", "student.full_finetune=true", "parallel.strategy=fsdp"])
    assert fsdp.exit_code == 0, fsdp.output
    plan = json.loads(fsdp.output)
    assert plan["fits"] and plan["shard_group"] == 8
    assert 5.5e9 < plan["params"] < 5.8e9 and plan["trainable"] == plan["params"]
    lora = json.loads(CliRunner().invoke(app, [*base, "--json"]).output)
    assert 130e6 < lora["trainable"] < 135e6  # r128 on q/k/v/out of 42 blocks
    assert lora["fits"] and lora["strategy"] == "ddp"
