"""Stage-two objectives: L_diff against a hand computation, LGF (zero at the target, finite differences),
teacher target reuse vs recompute, the REPA / mask baselines, the weight schedule, one forward per step."""

from __future__ import annotations

import pytest
import torch

from stages.config.loader import from_dict
from stages.config.distill import TINY, DistillConfig
from stages.config.extract import LGFConfig
from stages.families.cogvideox.objective import diffusion_loss, diffusion_loss_from_output, prepare_diffusion_inputs
from stages.distill.losses import (
    feature_losses,
    lgf_loss,
    mask_loss,
    repa_loss,
    teacher_target,
    weight_at,
)
from stages.distill.projector import Projector, ProjectorSpec
from stages.families.cogvideox.transformer import apply_lora, load_student, rotary_embedding
from stages.distill.tap import FeatureTap
from stages.core.lgf import fuse, lgf_probs

B, T, H8, W8 = 4, 3, 16, 24
SCALE = 0.7


def _store_batch(seed: int = 0, channels: int = 8, kernel: int = 3) -> dict[str, torch.Tensor]:
    """A batch as the stream delivers it (fp16 / uint8), for the tiny student's 3x8x12 token grid."""
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(B, 32, T, H8, W8, generator=g)
    params[:, 16:] = params[:, 16:] * 0.5 - 3.0  # log-variances around -3
    fwd = torch.randn(B, T, 8, 12, channels, generator=g)
    bwd = fwd + 0.3 * torch.randn(B, T, 8, 12, channels, generator=g)
    return {
        "latents": params.half(),
        "image_latents": torch.randn(B, 16, 1, H8, W8, generator=g).half(),
        "prompt_embeds": torch.randn(B, 16, 32, generator=g).half(),
        "fwd": fwd.half(),
        "bwd": bwd.half(),
        "lgf": fuse(fwd.half(), bwd.half(), kernel, 0.1, [1], "gram").half(),
        "mask": (torch.rand(B, T, 8, 12, generator=g) * 255).to(torch.uint8),
    }


def test_diffusion_loss_matches_hand_computation():
    transformer, scheduler = load_student("tiny", "i2v")
    batch = _store_batch()
    loss, aux = diffusion_loss(
        transformer, scheduler, batch["latents"], batch["prompt_embeds"], SCALE, torch.Generator().manual_seed(3),
        task="i2v", image_latents=batch["image_latents"], image_dropout=0.5,
    )

    # By hand, drawing from the same seed in the documented order: posterior eps, t, noise, image keep, caption.
    g = torch.Generator().manual_seed(3)
    mean, logvar = batch["latents"].float().chunk(2, dim=1)
    x0 = ((mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)) * SCALE).permute(0, 2, 1, 3, 4)
    t = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    keep = torch.rand(B, generator=g) >= 0.5
    assert keep.any() and not keep.all()  # the seed exercises both branches of image dropout
    abar = scheduler.alphas_cumprod[t].float().view(B, 1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    image = torch.zeros_like(x0)
    image[:, 0] = batch["image_latents"].float()[:, :, 0] * SCALE * keep.view(B, 1, 1, 1).float()
    with torch.no_grad():
        v = transformer(
            hidden_states=torch.cat([xt, image], dim=2), encoder_hidden_states=batch["prompt_embeds"].float(),
            timestep=t, image_rotary_emb=rotary_embedding(transformer.config, T, H8, W8), return_dict=False,
        )[0]
    x0_pred = abar.sqrt() * xt - (1 - abar).sqrt() * v  # v-prediction -> predicted clean latent
    per_sample = ((x0_pred - x0) ** 2).flatten(1).mean(1) / (1 - abar.flatten())
    assert torch.equal(aux["timesteps"], t)
    torch.testing.assert_close(aux["per_sample"], per_sample, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.detach(), per_sample.mean(), rtol=1e-4, atol=1e-6)


def test_inputs_caption_dropout_and_geometry_checks():
    transformer, scheduler = load_student("tiny", "i2v")
    batch = _store_batch()
    empty = torch.full((16, 32), 0.25)
    inputs = prepare_diffusion_inputs(
        transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], SCALE, torch.Generator().manual_seed(0),
        image_latents=batch["image_latents"], empty_prompt_embeds=empty, caption_dropout=1.0, timesteps=10,
    )
    assert torch.all(inputs.model_kwargs["encoder_hidden_states"] == 0.25)
    assert inputs.model_kwargs["hidden_states"].shape == (B, T, 32, H8, W8)
    assert int(inputs.timesteps.max()) < 10
    assert inputs.model_kwargs["hidden_states"][:, 1:, 16:].abs().sum() == 0  # image latent only on frame 0
    with pytest.raises(ValueError, match="max_text_seq_length=16"):
        prepare_diffusion_inputs(
            transformer.config, scheduler, batch["latents"], batch["prompt_embeds"][:, :8], SCALE, None,
            image_latents=batch["image_latents"],
        )
    with pytest.raises(ValueError, match="needs image_latents"):
        prepare_diffusion_inputs(transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], SCALE, None)


def test_lgf_loss_zero_at_teacher_and_positive_elsewhere():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, 8, generator=g)
    target = lgf_probs(x, 3, 0.1)
    assert lgf_loss(x, target, 3, 0.1).abs() < 1e-5
    assert lgf_loss(torch.randn(2, 4, 5, 6, 8, generator=g), target, 3, 0.1) > 0.1


def test_lgf_loss_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = lgf_probs(torch.randn(1, 3, 4, 5, 6, generator=g, dtype=torch.float64), 3, 0.5, [1, 2])
    # stages.core.lgf computes in fp32 whatever the input, so the step and tolerances suit fp32 round-off.
    # fast_mode compares the analytic and finite-difference derivatives along random directions.
    check = lambda y: lgf_loss(y, target, 3, 0.5, [1, 2])  # noqa: E731
    assert torch.autograd.gradcheck(check, (x,), eps=1e-3, atol=2e-3, rtol=2e-2, fast_mode=True)
    # And one coordinate by hand, central differences.
    e = torch.zeros_like(x)
    e[0, 1, 2, 3, 4] = 1e-3
    with torch.no_grad():
        numeric = (check(x + e) - check(x - e)) / 2e-3
    (analytic,) = torch.autograd.grad(check(x), x)
    assert float(analytic[0, 1, 2, 3, 4]) == pytest.approx(float(numeric), rel=2e-2, abs=2e-4)


def test_teacher_target_reuses_stored_lgf_only_when_settings_match():
    batch = _store_batch(kernel=3)
    column = {"kernel": 3, "tau": 0.1, "offsets": [1], "fusion": "gram"}
    same = teacher_target(batch, LGFConfig(kernel=3), column)
    assert same.dtype == torch.float32 and torch.equal(same, batch["lgf"].float())
    other = LGFConfig(kernel=3, tau=0.2, fusion="probs")
    torch.testing.assert_close(teacher_target(batch, other, column), fuse(batch["fwd"], batch["bwd"], 3, 0.2, [1], "probs"))
    wider = teacher_target(batch, LGFConfig(kernel=5), column)
    assert wider.shape[-1] == 25


def test_repa_and_mask_baselines():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 8, generator=g)
    assert repa_loss(x, 2 * x) == pytest.approx(-1.0, abs=1e-6)
    assert repa_loss(x, -x) == pytest.approx(1.0, abs=1e-6)
    mask = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)
    mask[:, :, :2] = 255
    good = torch.where(mask > 0, 20.0, -20.0)
    assert mask_loss(good, mask) < 1e-3
    # Hand value at logits 0 (p = 0.5 on 60 tokens, 30 of them masked): BCE = log 2,
    # Dice = 1 - (2 * 0.5 * 30 + 1) / (0.5 * 60 + 30 + 1) per sample.
    expected = torch.log(torch.tensor(2.0)) + 1 - 31 / 61
    assert mask_loss(torch.zeros(2, 3, 4, 5), mask) == pytest.approx(float(expected), rel=1e-5)


def test_weight_schedule():
    assert weight_at(0, 0.5) == 0.5
    assert [weight_at(s, 0.5, warmup_steps=4) for s in (0, 2, 4, 100)] == [0.0, 0.25, 0.5, 0.5]
    assert weight_at(9, 0.5, 0, cutoff_step=10) == 0.5 and weight_at(10, 0.5, 0, cutoff_step=10) == 0.0


def test_one_forward_per_step_gives_both_losses():
    """The trainer's step: one tapped forward, L_diff + weighted feature terms, gradients everywhere they belong."""
    losses = {"lgf": {"kernel": 3}, "repa": {"weight": 0.1}, "mask": {"weight": 0.2, "warmup_steps": 10}}
    cfg = from_dict(DistillConfig, {**TINY, "losses": losses})
    transformer, scheduler = load_student("tiny", "i2v")
    apply_lora(transformer, cfg.student.lora.rank, cfg.student.lora.alpha)
    transformer.enable_gradient_checkpointing()
    batch = _store_batch(kernel=3)
    projector = Projector(ProjectorSpec(32, 8, cfg.projector.hidden, cfg.projector.layers, mask_head=True))
    forwards = []
    transformer.register_forward_pre_hook(lambda m, a: forwards.append(1))
    with FeatureTap(transformer, cfg.tap.block) as tap:
        inputs = prepare_diffusion_inputs(
            transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], SCALE, torch.Generator().manual_seed(0),
            image_latents=batch["image_latents"], dtype=transformer.dtype,
        )
        l_diff, _ = diffusion_loss_from_output(scheduler, transformer(**inputs.model_kwargs)[0], inputs)
        feats = feature_losses(
            cfg.losses, step=5, projector=projector, features=tap.pop(), batch=batch, column_lgf=LGFConfig(kernel=3)
        )
        (l_diff + feats.total).backward()
    assert len(forwards) == 1
    assert set(feats.terms) == {"lgf", "repa", "mask"} and feats.weights == {"lgf": 0.5, "repa": 0.1, "mask": 0.1}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in feats.terms.values())
    assert all(p.grad is not None for p in projector.parameters())
    assert transformer.transformer_blocks[2].attn1.to_v.lora_B.default.weight.grad.abs().sum() > 0
    # Past the cutoff, or with every weight 0, the feature terms are skipped entirely.
    off = from_dict(DistillConfig, {**TINY, "losses": {"lgf": {"weight": 0.0}}})
    assert feature_losses(off.losses, 0, projector, torch.zeros(1), batch).terms == {}


def _tiny_15_i2v():
    """A tiny CogVideoX 1.5-style I2V transformer: temporal patch 2, ofs embedding, RoPE, no learned positions."""
    from diffusers import CogVideoXTransformer3DModel

    from stages.families.cogvideox.transformer import tiny_transformer_config

    config = {**tiny_transformer_config("i2v"), "patch_size_t": 2, "ofs_embed_dim": 32, "patch_bias": False,
              "use_learned_positional_embeddings": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CogVideoXTransformer3DModel(**config)


def test_cogvideox_15_pads_frames_and_inverts_the_image_scale(tmp_path):
    """As CogVideoXImageToVideoPipeline for 1.5: frames padded to patch_size_t, image latent / scaling_factor."""
    from stages.distill.data import image_scale, open_training_data
    from stages.families.cogvideox.transformer import token_grid
    from stages.config.loader import load_config
    from stages.store import ArraySpec, FeatureStore, Snapshot

    transformer, scheduler = _tiny_15_i2v(), load_student("tiny", "i2v")[1]
    batch = _store_batch()  # T = 3 latent frames: odd, so 1.5 pads one frame in front
    scale = image_scale({"scaling_factor": SCALE, "invert_scale_latents": True})
    assert scale == pytest.approx(1 / SCALE) and image_scale({"scaling_factor": SCALE}) == SCALE  # old stores: CogVideoX 1.0
    inputs = prepare_diffusion_inputs(
        transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], SCALE, torch.Generator().manual_seed(0),
        task="i2v", image_latents=batch["image_latents"], image_scale=scale, dtype=torch.float32,
    )
    hidden = inputs.model_kwargs["hidden_states"]  # [B, T', 2C, h, w]
    assert hidden.shape == (B, 4, 32, H8, W8) and token_grid(transformer.config, (T, H8, W8)) == (2, 8, 12)
    torch.testing.assert_close(inputs.clean[:, 0], inputs.clean[:, 1])  # the first frame, repeated in front
    torch.testing.assert_close(hidden[:, 0, 16:], batch["image_latents"][:, :, 0].float() / SCALE)
    assert not hidden[:, 1:, 16:].any()  # then zeros, as the pipeline pads the image latent
    with torch.no_grad():
        out = transformer(**inputs.model_kwargs)[0]
    loss, _ = diffusion_loss_from_output(scheduler, out, inputs)
    assert out.shape == hidden[:, :, :16].shape and torch.isfinite(loss)

    # the flag travels from the encodings column's attrs (recorded at extraction) to stage two
    store = FeatureStore(str(tmp_path / "store"))
    store.freeze_snapshot(Snapshot("/x", 2, [{"key": "a", "url": "/x/a.mp4", "caption": "", "prompt": None}]))
    specs = {"latents": ArraySpec((32, T, H8, W8), "float16"), "image_latents": ArraySpec((16, 1, H8, W8), "float16"),
             "prompt_embeds": ArraySpec((16, 32), "float16"), "prompt_mask": ArraySpec((16,), "uint8")}
    store.create_column("encodings", {}, specs, {"scaling_factor": SCALE, "invert_scale_latents": True})
    cfg = load_config(DistillConfig, None, [f"data.store={store.url}", "losses.lgf.weight=0"])
    assert open_training_data(cfg).image_scale == pytest.approx(1 / SCALE)
