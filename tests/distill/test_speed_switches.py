"""The trainer's speed switches (issue 21): student.compile (regional torch.compile, each block in place)
and student.fp8 (torchao Float8Linear on the block linears).

Compile is checked where it matters: a few Trainer steps with LoRA, the feature tap (LGF on) and every
block checkpointed give the eager run's losses, gradient norms and LoRA weights, with inductor on this
CPU (it needs a C++ compiler, which the dev box and CI have). FP8 needs an Ada/Hopper GPU: here the
CPU refusal and the choice of linears are checked, and, where torchao is installed, its conversion
(Float8Linear exactly on those linears; CPU modules even run it, emulated) with LoRA composing on top.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.config.distill import DistillConfig, LoRAConfig, StudentConfig
from stages.config.loader import ConfigError, load_config
from stages.distill.fp8 import fp8_linears, fp8_refusal, module_filter
from stages.families.cogvideox.transformer import tiny_transformer_config
from stages.families.lora import configure_student
from stages.families.registry import get_student

SAMPLE = ROOT / "configs/distill/sample.yaml"
COGVIDEOX = get_student("cogvideox")
# a CogVideoX block's linears (peft wraps the attention projections: their Linear is `.base_layer`)
BLOCK_LINEARS = ("norm1.linear", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "norm2.linear", "ff.net.0.proj", "ff.net.2")
LORA_WRAPPED = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")


def test_compile_is_off_by_default_and_bad_values_are_refused_in_one_line():
    cfg = load_config(DistillConfig, SAMPLE)
    assert cfg.student.compile.enabled is False and cfg.student.fp8 is False
    assert cfg.student.compile.kwargs() == {"backend": "inductor"}
    on = load_config(DistillConfig, SAMPLE, ["student.compile.enabled=true", "student.compile.mode=max-autotune-no-cudagraphs"])
    assert on.student.compile.kwargs() == {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"}
    with pytest.raises(ConfigError, match=r"student.compile.mode='fast' is not one of: default, reduce-overhead"):
        load_config(DistillConfig, SAMPLE, ["student.compile.mode=fast"])
    with pytest.raises(ConfigError, match="student.compile.mode='default' is an inductor option"):
        load_config(DistillConfig, SAMPLE, ["student.compile.backend=aot_eager", "student.compile.mode=default"])
    with pytest.raises(ConfigError, match="'student.compile.backend' = 'tvm' is not one of"):
        load_config(DistillConfig, SAMPLE, ["student.compile.backend=tvm"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_blocks_train_like_eager_with_lora_tap_and_checkpointing(student_store, tmp_path):
    """3 steps eager, 3 compiled (inductor, the default backend) from the same seed: the same losses, norms and LoRA."""
    from torch._dynamo.utils import counters

    from stages.distill.trainer import Trainer

    runs = {}
    for name, extra in (("eager", []), ("compiled", ["student.compile.enabled=true"])):
        cfg = load_config(DistillConfig, SAMPLE, [f"data.store={student_store}", f"out={tmp_path / name}", "data.num_workers=0",
                                                  "train.batch_size=1", "train.steps=3", "eval.every=0", "student.checkpointing=all",
                                                  "losses.repa.weight=0.1", *extra])
        graphs = counters["stats"]["unique_graphs"]
        trainer = Trainer(cfg)
        transformer = trainer.model.transformer
        blocks = COGVIDEOX.blocks(transformer)
        assert transformer.is_gradient_checkpointing and trainer.model.tap is not None and trainer.model.tap.block == 1
        assert all((b._compiled_call_impl is not None) == (name == "compiled") for b in blocks)
        history = trainer.run()
        compiled_graphs = counters["stats"]["unique_graphs"] - graphs
        lora = {n: p.detach().clone() for n, p in transformer.named_parameters() if p.requires_grad}
        keys = list(transformer.state_dict())  # in-place compile: no `_orig_mod.` in the keys
        runs[name] = (history, lora, keys, compiled_graphs, trainer.model.tap.captures)
        trainer.close()
    (eager, eager_lora, eager_keys, eager_graphs, _), (compiled, compiled_lora, compiled_keys, graphs, captures) = runs["eager"], runs["compiled"]
    assert eager_graphs == 0 and graphs > 0  # something was compiled, and only in the compiled run
    assert captures == 1  # the tap kept one firing per forward under compile (recomputes and repeats ignored)
    assert compiled_keys == eager_keys and sorted(compiled_lora) == sorted(eager_lora)
    assert all({"diff", "lgf", "repa"} <= set(m.terms) for m in compiled)  # the tapped features reached both losses
    for a, b in zip(eager, compiled, strict=True):
        assert b.terms == pytest.approx(a.terms, rel=1e-4, abs=1e-6), (a.step, a.terms, b.terms)
        assert b.loss == pytest.approx(a.loss, rel=1e-4)
        assert b.grad_norms == pytest.approx(a.grad_norms, rel=1e-3)
    for n, w in eager_lora.items():
        torch.testing.assert_close(compiled_lora[n], w, rtol=1e-4, atol=1e-6, msg=n)
    assert any(w.abs().sum() > 0 for n, w in compiled_lora.items() if "lora_B" in n)  # LoRA B trained away from zero


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_blocks_are_the_fsdp2_units_and_train_like_eager_fsdp(student_store, tmp_path):
    """FSDP2 on one rank (gloo): fully_shard per block, then each block compiled in place, so the compiled module
    is the FSDP2 unit. aot_eager here (dynamo + AOT autograd around FSDP2's eager hooks; the inductor run above
    covers code generation): the same losses as eager FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    from stages.distill.trainer import Trainer

    runs = {}
    for name, extra in (("eager", []), ("compiled", ["student.compile.enabled=true", "student.compile.backend=aot_eager"])):
        cfg = load_config(DistillConfig, SAMPLE, [f"data.store={student_store}", f"out={tmp_path / name}", "data.num_workers=0",
                                                  "train.batch_size=1", "train.steps=2", "eval.every=0", "parallel.strategy=fsdp", *extra])
        trainer = Trainer(cfg)
        blocks = COGVIDEOX.blocks(trainer.model.transformer)
        assert trainer.sharded and all(isinstance(b, FSDPModule) for b in blocks)
        assert all((b._compiled_call_impl is not None) == (name == "compiled") for b in blocks)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[name] = trainer.run()
        trainer.close()
        # the root module returns no views, whose in-place use would drop FSDP2's pre-backward hook
        assert not [w for w in caught if "returned a view tensor" in str(w.message)], name
    for a, b in zip(runs["eager"], runs["compiled"], strict=True):
        assert b.terms == pytest.approx(a.terms, rel=1e-5, abs=1e-7) and b.grad_norms == pytest.approx(a.grad_norms, rel=1e-4)


def test_fp8_on_cpu_is_refused_in_one_line_before_the_store_opens(tmp_path):
    assert "needs a CUDA GPU of compute capability >= 8.9" in fp8_refusal(torch.device("cpu"))
    missing = tmp_path / "no-store"  # never opened: the refusal comes first
    r = CliRunner().invoke(app, ["distill", "-c", str(SAMPLE), "--store", str(missing), "--out", str(tmp_path / "run"),
                                 "student.device=cpu", "student.fp8=true"])
    text = (r.stderr or r.output).strip()
    assert r.exit_code == 2, r.output
    assert text.splitlines() == [
        "config: student.fp8=true needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer); this run is on cpu: "
        "set student.fp8=false"
    ]
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()


def _tiny(full_finetune: bool, **config) -> nn.Module:
    """The tiny CogVideoX (3 blocks, width 32) with LoRA rank 16 (so lora_A/lora_B have fp8-able dims too) or all trained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = COGVIDEOX.transformer_from_config({**tiny_transformer_config("i2v"), **config})
        configure_student(transformer, StudentConfig(model="tiny", lora=LoRAConfig(rank=16, alpha=16.0), full_finetune=full_finetune,
                                                     gradient_checkpointing=False), COGVIDEOX.set_attention)
    return transformer


def _expected(blocks: int, names: tuple[str, ...], lora: bool) -> list[str]:
    wrapped = lambda n: f"{n}.base_layer" if lora and n in LORA_WRAPPED else n  # noqa: E731
    return sorted(f"transformer_blocks.{i}.{wrapped(n)}" for i in range(blocks) for n in names)


def test_fp8_converts_the_frozen_base_linears_of_the_blocks_under_lora_and_every_block_linear_in_full_finetuning():
    lora = _tiny(full_finetune=False)
    chosen = fp8_linears(lora, COGVIDEOX.blocks(lora), full_finetune=False)
    assert sorted(chosen) == _expected(3, BLOCK_LINEARS, lora=True)
    adapters = [n for n, m in lora.named_modules() if isinstance(m, nn.Linear) and ".lora_" in n]
    assert len(adapters) == 2 * 4 * 3 and all(m.in_features % 16 == 0 and m.out_features % 16 == 0
                                              for n, m in lora.named_modules() if n in adapters)  # fp8-able dims, left out
    outside = [n for n, m in lora.named_modules() if isinstance(m, nn.Linear) and not n.startswith("transformer_blocks.")]
    assert outside and not set(outside) & set(chosen)  # embeddings and the output head stay as they are
    keep = module_filter(chosen)
    assert keep(None, chosen[0]) and not keep(None, adapters[0]) and not keep(None, outside[0])

    full = _tiny(full_finetune=True)
    assert sorted(fp8_linears(full, COGVIDEOX.blocks(full), full_finetune=True)) == _expected(3, BLOCK_LINEARS, lora=False)

    # time_embed_dim 40: the norms' linears (40 -> 6 x 32) have an in-dimension _scaled_mm refuses; they stay
    odd = _tiny(full_finetune=False, time_embed_dim=40)
    kept = tuple(n for n in BLOCK_LINEARS if not n.startswith("norm"))
    assert sorted(fp8_linears(odd, COGVIDEOX.blocks(odd), full_finetune=False)) == _expected(3, kept, lora=True)


def test_torchao_conversion_puts_float8_linear_exactly_on_the_chosen_linears():
    pytest.importorskip("torchao.float8", reason="torchao is an optional GPU dependency (pip install torchao)")
    from torchao.float8.float8_linear import Float8Linear

    from stages.distill.fp8 import convert_fp8

    g = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(1, 13, 32, 16, 24, generator=g), "encoder_hidden_states": torch.randn(1, 16, 32, generator=g),
              "timestep": torch.tensor([500]), "return_dict": False}
    for full_finetune in (False, True):
        transformer = _tiny(full_finetune)
        inputs["image_rotary_emb"] = COGVIDEOX.rotary(transformer.config, (13, 16, 24), torch.device("cpu"))
        with torch.no_grad():
            reference = transformer(**inputs)[0]
        keys = {k: v.shape for k, v in transformer.state_dict().items()}
        names = convert_fp8(transformer, COGVIDEOX.blocks(transformer), full_finetune)
        converted = sorted(n for n, m in transformer.named_modules() if isinstance(m, Float8Linear))
        assert converted == sorted(names) == _expected(3, BLOCK_LINEARS, lora=not full_finetune)
        adapters = [m for n, m in transformer.named_modules() if n.endswith((".lora_A.default", ".lora_B.default"))]
        assert len(adapters) == (0 if full_finetune else 2 * 4 * 3) and all(type(m) is nn.Linear for m in adapters)
        # the LoRA stays trainable and the frozen bases frozen; state-dict keys and shapes do not change
        assert all(p.requires_grad == (full_finetune or "lora_" in n) for n, p in transformer.named_parameters())
        assert {k: v.shape for k, v in transformer.state_dict().items()} == keys
        # torch's _scaled_mm also runs on CPU (emulated; the trainer still refuses CPU): peft's LoRA composes with
        # Float8Linear, the output stays close to the full-precision one (e4m3: 3 mantissa bits), gradients flow
        out = transformer(**inputs)[0]
        error = float((out.detach() - reference).norm() / reference.norm())
        assert 0 < error < 0.03, error  # not 0: the matmuls really ran in float8 (0.3% on this model)
        out.pow(2).mean().backward()
        assert all((p.grad is not None) == p.requires_grad for p in transformer.parameters())


def test_the_plan_shows_the_switches_and_plans_them_as_the_eager_step():
    import json

    runner = CliRunner()
    plain = runner.invoke(app, ["plan", "-c", str(SAMPLE), "--gpus", "1", "--json"])
    fast = runner.invoke(app, ["plan", "-c", str(SAMPLE), "--gpus", "1", "--json", "student.compile.enabled=true", "student.fp8=true"])
    assert plain.exit_code == 0 and fast.exit_code == 0, plain.output + fast.output
    a, b = json.loads(plain.output), json.loads(fast.output)
    assert (a["compile"], a["fp8"]) == (None, False) and (b["compile"], b["fp8"]) == ("inductor", True)
    assert b["total"] == a["total"]  # not modelled: the plan says so in its table
    table = runner.invoke(app, ["plan", "-c", str(SAMPLE), "--gpus", "1", "student.compile.enabled=true", "student.fp8=true"])
    assert "compile (inductor) + fp8: not modelled, planned as the eager step" in table.output


def test_a_resume_may_switch_compile_but_not_fp8():
    from stages.config.loader import to_dict
    from stages.distill.checkpoint.resume import ResumeMismatch, compare

    saved = to_dict(load_config(DistillConfig, SAMPLE))
    older = {**saved, "student": {k: v for k, v in saved["student"].items() if k not in ("compile", "fp8")}}  # before the keys
    assert compare(older, saved, "ckpt") == {}  # their defaults are what older runs trained with
    on = to_dict(load_config(DistillConfig, SAMPLE, ["student.compile.enabled=true", "student.compile.backend=aot_eager"]))
    assert compare(saved, on, "ckpt") == {"student.compile.backend": ("inductor", "aot_eager"), "student.compile.enabled": (False, True)}
    with pytest.raises(ResumeMismatch, match=r"student.fp8: False -> True"):
        compare(saved, to_dict(load_config(DistillConfig, SAMPLE, ["student.fp8=true"])), "ckpt")
