"""Student loading (the diffusers-folder path a user takes), LoRA / full fine-tuning, geometry, attention."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from stages.config.loader import ConfigError, from_dict, load_config
from stages.config.distill import TINY, DistillConfig
from stages.families.base import Student
from stages.families.registry import get_student
from stages.families.cogvideox.transformer import (
    XFormersCogVideoXAttnProcessor,
    apply_lora,
    enable_full_finetune,
    load_student,
    rotary_embedding,
    save_tiny_student,
    set_attention,
    token_grid,
)
from stages.families.lora import configure_student


def _inputs(config, frames: int = 2, batch: int = 1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, config.in_channels, config.sample_height, config.sample_width, generator=g)
    text = torch.randn(batch, config.max_text_seq_length, config.text_embed_dim, generator=g)
    rope = rotary_embedding(config, frames, config.sample_height, config.sample_width)
    return {
        "hidden_states": x, "encoder_hidden_states": text, "timestep": torch.tensor([500] * batch),
        "image_rotary_emb": rope, "return_dict": False,
    }


def test_tiny_folder_round_trip(tmp_path):
    folder = save_tiny_student(tmp_path / "student", "i2v")
    assert (folder / "transformer" / "config.json").is_file() and (folder / "scheduler" / "scheduler_config.json").is_file()
    loaded, scheduler = load_student(str(folder), "i2v")
    built, _ = load_student("tiny", "i2v")
    assert loaded.config.in_channels == 32 and loaded.config.use_learned_positional_embeddings
    for (name, a), (_, b) in zip(sorted(loaded.state_dict().items()), sorted(built.state_dict().items())):
        assert torch.equal(a, b), name
    # The real 5B schedule: v-prediction with zero terminal SNR (alpha_bar at t=999 is exactly 0).
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.snr_shift_scale == 1.0
    assert scheduler.alphas_cumprod[-1] == 0 and 0.99 < scheduler.alphas_cumprod[0] < 1


def test_task_mismatch_is_refused(tmp_path):
    folder = save_tiny_student(tmp_path / "t2v", "t2v")
    with pytest.raises(ValueError, match="text-to-video model"):
        load_student(str(folder), "i2v")
    transformer, _ = load_student(str(folder), "t2v")
    assert transformer.config.in_channels == 16 and not transformer.config.use_learned_positional_embeddings


def test_lora_starts_as_identity_and_trains_only_adapters():
    transformer, _ = load_student("tiny", "i2v")
    kwargs = _inputs(transformer.config)
    with torch.no_grad():
        base = transformer(**kwargs)[0]
    params = apply_lora(transformer, rank=4, alpha=8.0)
    names = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert len(params) == transformer.config.num_layers * 4 * 2  # q, k, v, out x (A, B)
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    assert transformer.peft_config["default"].lora_alpha == 8.0
    with torch.no_grad():
        assert torch.equal(transformer(**kwargs)[0], base)  # B = 0 at init
    assert len(enable_full_finetune(transformer)) == len(list(transformer.parameters()))


def test_lora_params_are_fp32_over_a_half_base():
    transformer, _ = load_student("tiny", "i2v", dtype=torch.bfloat16)
    params = apply_lora(transformer, rank=2, alpha=2.0, targets=["to_q"])
    assert len(params) == 2 * transformer.config.num_layers
    assert all(p.dtype == torch.float32 for p in params)
    assert transformer.transformer_blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16


def test_configure_student_from_tiny_config(caplog):
    cfg = from_dict(DistillConfig, TINY)
    transformer, _ = load_student(cfg.student.model, cfg.student.task)
    cfg.student.attention = "xformers"  # no CUDA here: must fall back to SDPA, loudly
    with caplog.at_level(logging.WARNING):
        params = configure_student(transformer, cfg.student, get_student("cogvideox").set_attention)
    assert "using SDPA" in caplog.text
    assert isinstance(transformer.transformer_blocks[0].attn1.processor, CogVideoXAttnProcessor2_0)
    assert transformer.gradient_checkpointing and len(params) == 24
    assert set_attention(transformer, "sdpa") == "sdpa"


def test_xformers_processor_matches_stock_attention():
    """The xformers processor keeps CogVideoX's math; checked with an SDPA kernel in xformers' layout."""
    transformer, _ = load_student("tiny", "i2v")
    kwargs = _inputs(transformer.config)
    with torch.no_grad():
        stock = transformer(**kwargs)[0]

    def sdpa_bmhk(q, k, v):  # [B, L, H, D] in and out, like xformers.ops.memory_efficient_attention
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    transformer.set_attn_processor(XFormersCogVideoXAttnProcessor(kernel=sdpa_bmhk))
    with torch.no_grad():
        swapped = transformer(**kwargs)[0]
    torch.testing.assert_close(swapped, stock, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autocast", [True, False])
def test_xformers_processor_gives_the_kernel_one_dtype(autocast):
    """CUDA autocast runs the q/k LayerNorms in fp32 while v comes out bf16: the kernel must get one dtype.

    Reproduced on CPU: a bf16 model whose q/k norms return fp32 (hooks, as CUDA autocast's fp32 policy
    does for layer_norm), optionally under CPU bf16 autocast.
    """
    transformer, _ = load_student("tiny", "t2v", dtype=torch.bfloat16)
    seen = []

    def strict_kernel(q, k, v):  # xformers' memory_efficient_attention refuses mixed dtypes the same way
        assert q.dtype == k.dtype == v.dtype, (q.dtype, k.dtype, v.dtype)
        seen.append(q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    for block in transformer.transformer_blocks:
        for norm in (block.attn1.norm_q, block.attn1.norm_k):
            norm.register_forward_hook(lambda module, args, out: out.float())
    transformer.set_attn_processor(XFormersCogVideoXAttnProcessor(kernel=strict_kernel))
    kwargs = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in _inputs(transformer.config).items()}
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.no_grad(), context:
        out = transformer(**kwargs)[0]
    assert seen == [torch.bfloat16] * transformer.config.num_layers
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_token_grid_and_rotary_shapes():
    transformer, _ = load_student("tiny", "t2v")
    config = transformer.config
    assert token_grid(config, (13, 16, 24)) == (13, 8, 12)
    with pytest.raises(ValueError, match="patch size"):
        token_grid(config, (13, 15, 24))
    cos, sin = rotary_embedding(config, 3, 16, 24)
    assert cos.shape == sin.shape == (3 * 8 * 12, config.attention_head_dim)


def test_distill_config_defaults_and_validation(tmp_path):
    cfg = load_config(DistillConfig)
    assert (cfg.student.lora.rank, cfg.tap.block, cfg.projector.hidden, cfg.projector.layers) == (128, 16, 2048, 2)
    assert cfg.student.lora.targets == ["to_q", "to_k", "to_v", "to_out.0"]
    assert (cfg.losses.lgf.weight, cfg.losses.lgf.kernel, cfg.losses.lgf.tau, cfg.losses.lgf.fusion) == (0.5, 7, 0.1, "gram")
    assert cfg.losses.repa.weight == 0 and cfg.losses.mask.weight == 0 and cfg.diffusion.timesteps == 1000
    path = tmp_path / "run.yaml"
    path.write_text("losses:\n  lgf:\n    kernel: 4\n")
    with pytest.raises(ConfigError, match="kernel must be a positive odd number"):
        load_config(DistillConfig, path)
    with pytest.raises(ConfigError, match="cutoff_step"):
        load_config(DistillConfig, None, ["losses.repa.cutoff_step=0"])
    with pytest.raises(ConfigError, match="unknown key 'student.lora.rnak'"):
        load_config(DistillConfig, None, ["student.lora.rnak=4"])
    assert load_config(DistillConfig, None, ["losses.lgf.weight=0"]).losses.needs_projector is False


def test_full_finetune_keeps_fp32_masters_under_a_bf16_model():
    """One AdamW step at lr 1e-5 must move nearly every weight: in bf16 most such updates round away."""
    from stages.families.cogvideox.transformer import build_tiny_student, enable_full_finetune

    def changed_share(master: bool) -> float:
        transformer, _ = build_tiny_student("i2v")
        transformer.to(torch.bfloat16)
        params = enable_full_finetune(transformer) if master else list(transformer.requires_grad_(True).parameters())
        before = [p.detach().float().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        moved = sum((p.detach().float() != b).sum().item() for p, b in zip(params, before))
        return moved / sum(b.numel() for b in before)

    assert changed_share(master=True) > 0.9
    assert changed_share(master=False) < 0.5  # what full fine-tuning did before: bf16 weights, bf16 moments


@pytest.mark.parametrize("family, model, task", [("cogvideox", "tiny", "i2v"), ("wan", "tiny-wan", "t2v")])
def test_attention_backend_is_the_familys_own(family, model, task, caplog):
    """configure_student asks the family for its attention backend: attention=xformers on a Wan transformer goes through
    Wan's (diffusers' dispatcher), never CogVideoX's joint-attention processor; sdpa keeps the stock processors."""
    student = get_student(family)
    transformer, _ = student.load(model, task, torch.float32, "cpu")
    stock = {name: type(p) for name, p in transformer.attn_processors.items()}
    cfg = from_dict(DistillConfig, TINY)
    cfg.student.attention = "xformers"  # no CUDA here: the family's own fallback to SDPA, loudly
    with caplog.at_level(logging.WARNING):
        configure_student(transformer, cfg.student, student.set_attention)
    said = [r for r in caplog.records if "attention=xformers" in r.getMessage()]
    assert len(said) == 1 and "using SDPA" in said[0].getMessage()
    assert said[0].name.startswith(f"stages.families.{family}.")  # the family's code decided, not another's
    assert {name.removeprefix("base_model.model."): type(p) for name, p in transformer.attn_processors.items()} == stock
    assert student.set_attention(transformer, "sdpa") == "sdpa"


def test_a_family_without_an_attention_backend_refuses_it_in_one_line():
    """The interface's default: sdpa only; anything else is a config error of one line naming the key."""
    transformer, _ = get_student("wan").load("tiny-wan", "t2v", torch.float32, "cpu")
    with pytest.raises(ConfigError) as info:
        Student.set_attention(get_student("wan"), transformer, "flash3")
    assert str(info.value) == "student.attention=flash3: the wan student has no flash3 attention; use student.attention=sdpa"
    assert Student.set_attention(get_student("wan"), transformer, "sdpa") == "sdpa"
