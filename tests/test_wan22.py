"""Wan 2.2 TI2V-5B as a student: the teacher grid from its configs, the first-frame objective, its memory plan.

TI2V-5B runs on the Wan 2.2 VAE (48 channels, 16x spatial through its 2x2 pixel patch, 4x temporal) and conditions
on an image by keeping latent frame 0 clean with timestep 0 on its tokens (the pipelines' `expand_timesteps`).
"""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT
from pipeline.config import load_config
from pipeline.distill_config import DistillConfig
from pipeline.extract_config import ExtractConfig
from stages.distill.students import geometry_of, get_student, student_for
from stages.distill.students.wan import (
    TINY_WAN,
    WAN22_SCHEDULER,
    WAN22_TI2V_5B,
    WAN22_TI2V_5B_TRANSFORMER,
    WAN22_VAE,
    flow_loss_from_output,
    prepare_flow_inputs,
    training_scheduler,
)


def _on_meta(cls, config: dict):
    with torch.device("meta"):
        return cls.from_config(config).config


def test_wan22_ti2v_teacher_grid_follows_from_the_configs():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from stages.extract.encoders_wan import WanVaeGeometry

    vae = _on_meta(AutoencoderKLWan, WAN22_VAE)
    geo = get_student("wan").geometry(_on_meta(WanTransformer3DModel, WAN22_TI2V_5B_TRANSFORMER), vae)
    assert (geo.vae_spatial, geo.vae_temporal, geo.patch_size, geo.patch_size_t) == (16, 4, 2, 1)
    # 121 frames -> 31 latent frames; 704x1280 -> 44x80 latents -> 22x40 tokens
    assert geo.token_grid(121, 704, 1280).shape == (31, 22, 40)
    assert geometry_of(WAN22_TI2V_5B) == geo  # the hub id resolves offline to the same configs
    wvae = WanVaeGeometry.from_config(vae)
    assert wvae.latent_channels == 48 == len(wvae.latents_mean) == len(wvae.latents_std)


def test_shipped_wan22_extract_config_gives_its_grid():
    from stages.extract.teacher_column import student_grid

    assert student_grid(load_config(ExtractConfig, ROOT / "configs/extract/wan22_ti2v_5b.yaml")).shape == (31, 22, 40)


def test_ti2v_objective_keeps_frame_zero_clean_with_per_token_timesteps():
    """As WanPipeline/WanImageToVideoPipeline with expand_timesteps: frame 0 = the clean (mode) latent, timestep 0 on
    its tokens, 1000 sigma elsewhere; the loss leaves frame 0 out."""
    student = get_student("wan")
    transformer, scheduler = student.load(TINY_WAN, "ti2v", torch.float32, "cpu")
    assert scheduler.config.shift == WAN22_SCHEDULER["flow_shift"] == 5.0
    config = transformer.config
    b, c, t, h, w = 2, 48, 3, 4, 6
    params = torch.randn(b, 2 * c, t, h, w)
    mean, std = torch.linspace(-0.5, 0.5, c), torch.linspace(0.5, 1.5, c)
    inputs = prepare_flow_inputs(config, scheduler, params, torch.randn(b, 8, 32), mean, std,
                                 torch.Generator().manual_seed(0), first_frame_clean=True)
    x = inputs.model_kwargs["hidden_states"]
    mode0 = (params[:, :c, 0] - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.testing.assert_close(x[:, :, 0], mode0)  # the condition frame, no noise
    s = inputs.sigmas.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(x[:, :, 1:], ((1 - s) * inputs.clean + s * inputs.noise)[:, :, 1:])
    # the pipeline's per-token timestep: (mask[0][0][:, ::2, ::2] * t).flatten(), mask 0 on latent frame 0
    mask = torch.ones(b, c, t, h, w)
    mask[:, :, 0] = 0
    expected = torch.stack([(mask[i][0][:, ::2, ::2] * inputs.timesteps[i]).flatten() for i in range(b)])
    torch.testing.assert_close(inputs.model_kwargs["timestep"], expected)
    assert inputs.model_kwargs["timestep"].shape == (b, t * (h // 2) * (w // 2))
    # the transformer takes the per-token timesteps (diffusers' 2-D timestep path) and predicts [B, 48, T, H, W]
    out = transformer(**inputs.model_kwargs)[0]
    assert out.shape == (b, c, t, h, w)
    loss, aux = flow_loss_from_output(out, inputs)
    torch.testing.assert_close(loss, (out[:, :, 1:] - inputs.target[:, :, 1:]).square().mean())
    # the prediction on frame 0 does not reach the loss
    loss.backward()
    out2 = out.detach().clone()
    out2[:, :, 0] += 100.0
    torch.testing.assert_close(flow_loss_from_output(out2, inputs)[0], loss.detach())
    with pytest.raises(ValueError, match="at least 2 latent frames"):
        prepare_flow_inputs(config, scheduler, params[:, :, :1], torch.randn(b, 8, 32), mean, std, None, first_frame_clean=True)


def test_ti2v_task_needs_a_wan22_transformer(tmp_path):
    wan = get_student("wan")
    wan.save_tiny(tmp_path / "wan21")
    with pytest.raises(ValueError, match="in_channels 16; student.task=ti2v is Wan 2.2 TI2V"):
        student_for(str(tmp_path / "wan21")).load(str(tmp_path / "wan21"), "ti2v", torch.float32, "cpu")
    assert wan.pipeline_class("ti2v").__name__ == "WanPipeline"


def test_memory_plan_of_the_wan22_config():
    """The shipped TI2V-5B config plans from the known config at its 121x704x1280 (31 x 22 x 40 video tokens)."""
    from stages.distill.memory_plan import plan_memory

    cfg = load_config(DistillConfig, ROOT / "configs/distill/wan22_ti2v_5b.yaml", ["parallel.strategy=fsdp"])
    lora = plan_memory(cfg, 8)
    assert lora.tokens == 31 * 22 * 40
    full = plan_memory(load_config(DistillConfig, ROOT / "configs/distill/wan22_ti2v_5b.yaml",
                                   ["parallel.strategy=fsdp", "student.full_finetune=true"]), 8)
    assert 4.9e9 < full.params < 5.1e9 and full.trainable == full.params
