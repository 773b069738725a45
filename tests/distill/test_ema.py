"""EMA of the trainable weights (train.ema.decay): the update, an exact resume, the export beside lora/, evaluate --ema."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.distill.checkpoint.resume import ResumeMismatch
from stages.distill.export import LORA_FILE, lora_from_trainable_state
from stages.distill.trainer import Trainer
from stages.evaluate.runs import EvaluateError, resolve_runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SAMPLE = ROOT / "configs/distill/sample.yaml"


def config(store: str, out: Path, *extra: str) -> DistillConfig:
    base = [f"data.store={store}", f"out={out}", "data.num_workers=0", "train.batch_size=1", "train.steps=4",
            "train.checkpoint_every=2", "optim.lr=0.05", "train.ema.decay=0.9"]
    return load_config(DistillConfig, SAMPLE, [*base, *extra])


def test_ema_is_the_lerp_of_the_masters_after_each_step(student_store, tmp_path):
    trainer = Trainer(config(student_store, tmp_path, "train.steps=1"))
    before = {k: v.clone() for k, v in trainer.ema.shadow.items()}
    assert sorted(before) == sorted(f"transformer.{n}" for n, p in trainer.model.transformer.named_parameters() if p.requires_grad)
    assert not any("projector" in k for k in before)  # inference never uses the projector
    trainer.train_step(trainer.batches())
    for key, p in trainer.ema.params.items():
        assert torch.equal(trainer.ema.shadow[key], before[key] * 0.9 + p.detach() * 0.1) or torch.equal(
            trainer.ema.shadow[key], before[key].lerp(p.detach(), 0.1)), key
    trainer.close()


def test_ema_resumes_bit_exact_and_is_exported_beside_the_lora(student_store, tmp_path):
    straight = Trainer(config(student_store, tmp_path / "a"))
    history = straight.run()
    straight.finish()
    Trainer(config(student_store, tmp_path / "b")).run(stop_at=2)
    assert (tmp_path / "b/checkpoints/step-000002/ema.safetensors").is_file()
    resumed = Trainer(config(student_store, tmp_path / "b"), resume=True)
    rest = resumed.run()
    resumed.finish()
    assert [m.loss for m in rest] == [m.loss for m in history[2:]]
    assert sorted(resumed.ema.shadow) == sorted(straight.ema.shadow)
    for key, value in straight.ema.shadow.items():
        assert torch.equal(resumed.ema.shadow[key], value), key  # bit-equal after a resume in the middle
        raw = straight.ema.params[key].detach()
        if "lora_B" in key:  # B starts at 0: the EMA moved, but lags the raw weights
            assert value.abs().max() > 0 and not torch.equal(value, raw)
    # lora_ema/ is the shadow in the stock LoRA format (no projector), lora/ stays the raw weights
    from diffusers import CogVideoXImageToVideoPipeline

    for run in ("a", "b"):
        exported = CogVideoXImageToVideoPipeline.lora_state_dict(str(tmp_path / run / "lora_ema"))
        expected = lora_from_trainable_state({k.removeprefix("transformer."): v for k, v in straight.ema.shadow.items()})
        assert sorted(k.removeprefix("transformer.") for k in exported) == sorted(expected)
        for k, v in exported.items():
            assert torch.equal(v, expected[k.removeprefix("transformer.")]), k
        assert not (tmp_path / run / "lora_ema/projector").exists() and (tmp_path / run / "lora/projector").exists()
    raw = load_file(str(tmp_path / "a/lora" / LORA_FILE))
    ema = load_file(str(tmp_path / "a/lora_ema" / LORA_FILE))
    assert sorted(raw) == sorted(ema) and any(not torch.equal(raw[k], ema[k]) for k in raw)
    # evaluate --ema finds it; a run without EMA says so in one line
    (ref,) = resolve_runs([tmp_path / "a"])
    assert ref.ema_dir == tmp_path / "a/lora_ema"
    plain = tmp_path / "plain"
    trainer = Trainer(config(student_store, plain, "train.steps=1", "train.ema.decay=null"))
    trainer.run()
    trainer.finish()
    assert trainer.ema is None and not (plain / "lora_ema").exists()
    with pytest.raises(EvaluateError, match="has no EMA weights"):
        resolve_runs([plain])[0].ema_dir
    # turning EMA on in a resume would start the shadow mid-run: refused, naming the key
    with pytest.raises(ResumeMismatch, match=r"train\.ema\.decay: None -> 0\.9"):
        Trainer(config(student_store, plain, "train.steps=2"), resume=True)


def test_full_finetune_exports_transformer_ema(student_store, tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    trainer = Trainer(config(student_store, tmp_path, "train.steps=1", "student.full_finetune=true", "optim.lr=1e-4"))
    trainer.run()
    trainer.finish()
    loaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "transformer_ema")
    for name, p in loaded.named_parameters():
        assert torch.equal(p, trainer.ema.shadow[f"transformer.{name}"]), name
    trainer.close()


def test_fsdp_ema_is_sharded_resumes_bit_exact_and_exports_gathered(student_store, tmp_path):
    """Two gloo ranks under FSDP2: the shadow is a DTensor per master, saved in the DCP checkpoint."""
    from test_parallel import overrides, torchrun

    extra = ("parallel.strategy=fsdp", "train.steps=4", "train.checkpoint_every=2", "optim.lr=0.05", "train.ema.decay=0.9")
    straight = torchrun(tmp_path, "straight", {"mode": "run", "overrides": overrides(student_store, tmp_path / "a", *extra), "export": True})
    split = overrides(student_store, tmp_path / "b", *extra)
    torchrun(tmp_path, "first", {"mode": "run", "overrides": split, "stop_at": 2})
    rest = torchrun(tmp_path, "rest", {"mode": "run", "overrides": split, "resume": True, "export": True})
    assert [m["loss"] for m in rest[0]["history"]] == [m["loss"] for m in straight[0]["history"][2:]]
    a, b = (load_file(str(tmp_path / run / "lora_ema" / LORA_FILE)) for run in ("a", "b"))
    raw = load_file(str(tmp_path / "a/lora" / LORA_FILE))
    assert sorted(a) == sorted(b) == sorted(raw)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], raw[k]) for k in a) and any(a[k].abs().max() > 0 for k in a if "lora_B" in k)
