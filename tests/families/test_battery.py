"""One battery for every registered family and task: a family added to stages/families/registry.py runs it by
being registered (the cases are read from the registry, not listed here).

Per (family, task), on the family's tiny presets and the shipped sample clip size (49 frames of 128x192):
- configs -> geometry: the transformer built on the meta device from the family's own configs, and the grid it
  implies equals the grid of the latents the family's encodings column stores (stage one and stage two agree);
- one training step's inputs and loss: finite, the same for the same seed, different for another;
- the tap: block L's video tokens as [B, T, h, w, D] on that grid, D the transformer's width;
- validation: the same objective at fixed timesteps, seeded noise: finite, reproducible, and moving with t;
- attention: sdpa accepted, an unknown backend refused in one line naming it;
- sampling: the task's stock pipeline built from the tiny presets gives uint8 frames of the asked size;
- LoRA export: the exported folder, loaded by that stock pipeline's own load_lora_weights, computes what the
  hand-merged model computes, and not what the base model computes.
"""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT
from stages.config.distill import LossesConfig
from stages.config.extract import ExtractConfig
from stages.config.loader import load_config
from stages.distill.data import image_scale
from stages.distill.tap import FeatureTap
from stages.distill.trainer import LossContext
from stages.families.registry import FAMILIES, get_student

CASES = [(family, task) for family, cls in FAMILIES.items() for task in cls.pipeline_classes]
BATCH = 2


def _layout(student, task):
    """The family's encodings layout for its tiny encoders of `task` at the sample clip size (configs only)."""
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [f"encoders.model={student.tiny_encoders(task)}"])
    return student.encodings_layout(cfg.encoders, cfg.video), cfg.video


def _batch(layout, generator) -> dict[str, torch.Tensor]:
    """Random arrays of the layout's schema with a batch axis (what the stream yields); uint8 ones (the prompt mask)
    all ones: every token real."""
    return {k: torch.randn((BATCH, *spec.shape), generator=generator) if spec.dtype != "uint8"
            else torch.ones((BATCH, *spec.shape), dtype=torch.uint8) for k, spec in layout.schema.items()}


def _vector(values):
    return None if values is None else torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("family,task", CASES)
def test_configs_give_the_stored_grid_on_the_meta_device(family, task):
    student = get_student(family)
    tiny = student.tiny_presets[0]
    transformer_cfg, _ = student.known_configs(tiny)
    layout, video = _layout(student, task)
    with torch.device("meta"):
        transformer = student.transformer_from_config(transformer_cfg)
    assert all(p.is_meta for p in transformer.parameters())
    geometry = student.geometry(transformer.config, layout.model["vae"])
    assert (geometry.vae_spatial, geometry.vae_temporal) == (layout.spatial, layout.temporal)
    latents = layout.schema["latents"].shape  # [2C, T, H8, W8]
    grid = student.token_grid(transformer.config, latents[1:])
    assert geometry.token_grid(video.num_frames, video.height, video.width).shape == grid
    assert all(n > 0 for n in grid) and student.num_blocks(transformer.config) == len(student.blocks(transformer))


def _context(student, task):
    """(tiny transformer, the trainer's LossContext for it, the layout) of one (family, task)."""
    transformer, scheduler = student.load(student.tiny_presets[0], task, torch.float32, "cpu")
    layout, _ = _layout(student, task)
    latents = layout.schema["latents"].shape
    attrs = layout.attrs
    ctx = LossContext(
        transformer.config, scheduler, LossesConfig(), task, float(attrs["scaling_factor"]), 1000, 0.0, 0.0, None,
        student.rotary(transformer.config, latents[1:], torch.device("cpu")), None, torch.float32, torch.device("cpu"),
        None, None, image_scale=image_scale(attrs), student=student,
        latents_mean=_vector(attrs.get("latents_mean")), latents_std=_vector(attrs.get("latents_std")),
    )
    return transformer, ctx, layout


@pytest.mark.parametrize("family,task", CASES)
def test_inputs_loss_and_tap_tokens(family, task):
    student = get_student(family)
    transformer, ctx, layout = _context(student, task)
    assert set(student.condition_arrays(task)) <= set(layout.schema)
    latents = layout.schema["latents"].shape
    batch = _batch(layout, torch.Generator().manual_seed(1))
    block = student.num_blocks(transformer.config) - 1

    def step(seed: int):
        inputs = student.prepare_inputs(ctx, batch, torch.Generator().manual_seed(seed))
        with torch.no_grad(), FeatureTap(transformer, block, student) as tap:
            output = transformer(**inputs.model_kwargs)[0]
            features = tap.pop()
        loss, aux = student.loss_from_output(ctx, output, inputs)
        return loss, aux, features

    loss, aux, features = step(0)
    again, _, _ = step(0)
    other, _, _ = step(1)
    assert torch.isfinite(loss) and loss.ndim == 0 and aux["per_sample"].shape == (BATCH,)
    assert torch.equal(loss, again)  # same seed, same noise and timestep: the same loss
    assert not torch.equal(loss, other)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert features.shape == (BATCH, *student.token_grid(transformer.config, latents[1:]), width)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("family,task", CASES)
def test_validation_step_at_fixed_timesteps(family, task):
    student = get_student(family)
    transformer, ctx, layout = _context(student, task)
    batch = _batch(layout, torch.Generator().manual_seed(2))

    def val_loss(t: int, seed: int = 7) -> torch.Tensor:
        inputs = student.validation_inputs(ctx, batch, t, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            output = transformer(**inputs.model_kwargs)[0]
        return student.loss_from_output(ctx, output, inputs)[0]

    low, high = val_loss(100), val_loss(900)
    assert torch.isfinite(low) and torch.isfinite(high)
    assert torch.equal(low, val_loss(100))  # fixed t and seeded noise: the same number at every validation
    assert not torch.equal(low, high)  # the timestep reaches the objective


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attention_backends(family):
    from stages.config.loader import ConfigError

    student = get_student(family)
    transformer, _ = student.load(student.tiny_presets[0], next(iter(student.pipeline_classes)), torch.float32, "cpu")
    assert student.set_attention(transformer, "sdpa") == "sdpa"
    with pytest.raises(ConfigError, match=r"^student.attention=flash9: .*use student.attention=sdpa$"):
        student.set_attention(transformer, "flash9")


@pytest.mark.parametrize("family,task", CASES)
def test_sampling_through_the_tasks_stock_pipeline(family, task):
    student = get_student(family)
    pipe = student.build_pipeline(student.tiny_presets[0], student.tiny_encoders(task), None, task, "cpu", torch.float32)
    assert type(pipe).__name__ == student.pipeline_classes[task]
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [f"encoders.model={student.tiny_encoders(task)}"])
    frames, height, width = cfg.video.num_frames, cfg.video.height, cfg.video.width  # the size the tiny presets train at
    first = (torch.rand(height, width, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    video = student.sample(pipe, task, first, "a dog runs", frames, height, width, 2, 1.0, 0, cfg.encoders.max_text_len)
    assert video.dtype.name == "uint8" and video.shape[1:] == (height, width, 3) and video.shape[0] >= 1


@pytest.mark.parametrize("family,task", CASES)
def test_lora_export_loads_in_the_stock_pipeline_equal_to_a_hand_merge(family, task, tmp_path):
    import copy

    from stages.distill.export import export_lora
    from stages.families.lora import apply_lora

    student = get_student(family)
    transformer, ctx, layout = _context(student, task)
    base = copy.deepcopy(transformer)
    apply_lora(transformer, 4, 4.0, student.lora_targets)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # lora_B starts at zero: give the adapter something to say
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    export_lora(transformer, tmp_path / "lora", pipeline_class=student.export_pipeline_class(task))
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in transformer.modules():  # W + (alpha / r) B A merged into the base weights by hand
        if isinstance(module, BaseTunerLayer):
            module.merge()
    merged = transformer
    pipe = student.build_pipeline(student.tiny_presets[0], student.tiny_encoders(task), tmp_path / "lora", task, "cpu", torch.float32)
    inputs = student.validation_inputs(ctx, _batch(layout, torch.Generator().manual_seed(4)), 500, torch.Generator().manual_seed(5))
    with torch.no_grad():
        loaded, hand, plain = (m(**inputs.model_kwargs)[0] for m in (pipe.transformer, merged, base))
    assert torch.allclose(loaded, hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(loaded, plain, atol=1e-4)
