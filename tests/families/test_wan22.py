"""Wan 2.2 TI2V-5B as a student: the teacher grid from its configs, the first-frame objective, its memory plan.

TI2V-5B runs on the Wan 2.2 VAE (48 channels, 16x spatial through its 2x2 pixel patch, 4x temporal) and conditions
on an image by keeping latent frame 0 clean with timestep 0 on its tokens (the pipelines' `expand_timesteps`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_students import _on_meta

from conftest import ROOT
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig
from stages.families.registry import geometry_of, get_student, student_for
from stages.families.wan.family import (
    TINY_WAN,
    WAN22_SCHEDULER,
    WAN22_TI2V_5B,
    WAN22_TI2V_5B_TRANSFORMER,
    WAN22_VAE,
    flow_loss_from_output,
    prepare_flow_inputs,
)


def test_wan22_ti2v_teacher_grid_follows_from_the_configs():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from stages.families.wan.encoders import WanVaeGeometry

    vae = _on_meta(AutoencoderKLWan, WAN22_VAE)
    geo = get_student("wan").geometry(_on_meta(WanTransformer3DModel, WAN22_TI2V_5B_TRANSFORMER), vae)
    assert (geo.vae_spatial, geo.vae_temporal, geo.patch_size, geo.patch_size_t) == (16, 4, 2, 1)
    # 121 frames -> 31 latent frames; 704x1280 -> 44x80 latents -> 22x40 tokens
    assert geo.token_grid(121, 704, 1280).shape == (31, 22, 40)
    assert geometry_of(WAN22_TI2V_5B) == geo  # the hub id resolves offline to the same configs
    wvae = WanVaeGeometry.from_config(vae)
    assert wvae.latent_channels == 48 == len(wvae.latents_mean) == len(wvae.latents_std)


def test_shipped_wan22_extract_config_gives_its_grid():
    from stages.extract.columns.teacher import student_grid

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
    # TI2V trains image-to-video (clean frame 0): its LoRA is written and sampled through the image-to-video pipeline
    assert wan.pipeline_class("ti2v").__name__ == wan.export_pipeline_class("ti2v").__name__ == "WanImageToVideoPipeline"


def test_memory_plan_of_the_wan22_config():
    """The shipped TI2V-5B config plans from the known config at its 121x704x1280 (31 x 22 x 40 video tokens)."""
    from stages.distill.memory_plan import plan_memory

    cfg = load_config(DistillConfig, ROOT / "configs/distill/wan22_ti2v_5b.yaml", ["parallel.strategy=fsdp"])
    lora = plan_memory(cfg, 8)
    assert lora.tokens == 31 * 22 * 40
    full = plan_memory(load_config(DistillConfig, ROOT / "configs/distill/wan22_ti2v_5b.yaml",
                                   ["parallel.strategy=fsdp", "student.full_finetune=true"]), 8)
    assert 4.9e9 < full.params < 5.1e9 and full.trainable == full.params


@pytest.fixture(scope="module")
def wan22_store(tmp_path_factory, sample_generator) -> str:
    """2 clips of 9 frames at 128x192 with the tiny Wan 2.2 VAE (48 channels, 16x: 3 x 8 x 12 latents) + teacher."""
    from pipeline.runner import run_extract
    from stages.families.wan.encoders import TINY_WAN22

    corpus = tmp_path_factory.mktemp("wan22corpus") / "clips"
    sample_generator.generate(corpus, clips=2, frames=9, fps=8)
    url = str(tmp_path_factory.mktemp("wan22store") / "store")
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [
        f"corpus.url={corpus}", "corpus.clips_per_shard=2", "video.num_frames=9", "teacher.image_size=64",
        f"encoders.model={TINY_WAN22}", "student.vae_spatial=16", "ray.num_workers=0"])
    assert run_extract(cfg, url).failed_keys == set()
    return url


FIRST = (np.random.default_rng(0).random((128, 192, 3)) * 255).astype(np.uint8)  # a first frame at the store's size


def _run(pipe, first: np.ndarray = FIRST) -> torch.Tensor:
    """The stock image-to-video pipeline (expand_timesteps) from a first frame; prompt embeddings as test_students'
    _run_i2v (this diffusers' I2V pipeline calls ftfy on a text prompt)."""
    from PIL import Image

    from stages.families.wan.encoders import WanEncoders, encode_prompt_wan

    enc = WanEncoders(pipe.vae, pipe.text_encoder, pipe.tokenizer, torch.device("cpu"), torch.float32)
    text, empty = (torch.from_numpy(encode_prompt_wan(enc, p, 16)[0]).float()[None] for p in ("a dog runs", ""))
    return pipe(Image.fromarray(first), prompt_embeds=text, negative_prompt_embeds=empty, height=128, width=192, num_frames=9,
                num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="latent").frames


def test_tiny_wan22_ti2v_end_to_end(wan22_store, tmp_path):
    """Store at the Wan 2.2 geometry, 2 steps of L_diff + LGF with frame 0 clean, the LoRA read by the stock
    WanPipeline (expand_timesteps) changes its output and equals the hand-merged model's."""
    import json

    import numpy as np
    from safetensors import safe_open
    from safetensors.torch import load_file

    from stages.store import FeatureStore
    from stages.families.wan.family import build_wan_pipeline
    from stages.distill.trainer import Trainer
    from stages.families.wan.encoders import TINY_WAN22

    enc = FeatureStore(wan22_store).column("encodings")
    assert enc.attrs["spatial_compression"] == 16 and len(enc.attrs["latents_std"]) == 48
    assert enc.schema["latents"].shape == (96, 3, 8, 12)
    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={wan22_store}", f"out={tmp_path / 'run'}", f"student.model={TINY_WAN}", "student.task=ti2v",
        "data.num_workers=0", "train.steps=2", "data.holdout=0", "train.checkpoint_every=100"])
    trainer = Trainer(cfg)
    # the trainer's loss context routes task ti2v to the first-frame objective: per-token timesteps, frame 0 clean
    ctx = trainer._loss_context()
    batch = {"latents": torch.randn(1, 96, 3, 8, 12), "prompt_embeds": torch.randn(1, 16, 32)}
    inputs = trainer.student.prepare_inputs(ctx, batch, torch.Generator().manual_seed(0))
    assert inputs.first_loss_frame == 1 and inputs.model_kwargs["timestep"].shape == (1, 3 * 4 * 6)
    assert not inputs.model_kwargs["timestep"][0, :24].any() and inputs.model_kwargs["timestep"][0, 24:].all()
    history = trainer.run()
    assert trainer.grid == (3, 4, 6)
    assert all(np.isfinite(m.terms["diff"]) and m.terms["lgf"] > 0 for m in history)
    lora = trainer.finish()
    trainer.close()

    base = _run(build_wan_pipeline(TINY_WAN, TINY_WAN22, None, task="ti2v"))
    pipe = build_wan_pipeline(TINY_WAN, TINY_WAN22, lora, task="ti2v")
    assert type(pipe).__name__ == "WanImageToVideoPipeline" and pipe.config.expand_timesteps and pipe.image_encoder is None
    with_lora = _run(pipe)
    assert with_lora.shape == (1, 48, 3, 8, 12)
    assert (with_lora - base).abs().max() > 1e-3
    # image-to-video as trained: latent frame 0 is the first frame's clean latent, so another first frame changes it
    other = _run(pipe, 255 - FIRST)
    assert (other[:, :, 0] - with_lora[:, :, 0]).abs().max() > 1e-3
    with safe_open(str(lora / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = {k.removeprefix("transformer."): v for k, v in json.loads(f.metadata()["lora_adapter_metadata"]).items()}
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    merged = build_wan_pipeline(TINY_WAN, TINY_WAN22, None, task="ti2v")
    modules = dict(merged.transformer.named_modules())
    pairs = [k for k in state if k.endswith("lora_A.weight")]
    assert len(pairs) == 3 * 2 * 4
    for key in pairs:
        name = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        modules[name].weight.data += meta["lora_alpha"] / meta["r"] * state[key.replace("lora_A", "lora_B")] @ state[key]
    torch.testing.assert_close(with_lora, _run(merged), atol=1e-5, rtol=1e-4)

    # the CLI samples a TI2V run through its stock WanPipeline (expand_timesteps), from the clip's caption
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "sample.mp4"
    result = CliRunner().invoke(app, ["generate", "--run", str(tmp_path / "run"), "--store", wan22_store, "--out", str(out), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "9 frames 128x192" in result.output and "WanImageToVideoPipeline (ti2v)" in result.output

    # evaluate samples it from the held-out clip's first frame: its sample is the family's sample from that frame
    from stages.evaluate.clips import load_clips, store_settings
    from stages.evaluate.sampling import Model, SamplingSettings, sample_models
    from stages.families.sampling import resolve_sampling

    store = FeatureStore(wan22_store)
    video, encoders, _ = store_settings(store)
    key = store.require_snapshot().clips[0]["key"]
    clips = load_clips(store, [key], video)
    settings = SamplingSettings(resolve_sampling("cpu", None, 2), 3.0, (0,), encoders["max_text_len"], video.fps)
    samples, _ = sample_models([Model("run", TINY_WAN, lora, "ti2v")], clips, encoders["model"], settings, tmp_path / "ev")
    wan = get_student("wan")
    direct = wan.build_pipeline(TINY_WAN, TINY_WAN22, lora, "ti2v")
    from_first = wan.sample(direct, "ti2v", clips[0].frames[0], clips[0].caption or "", 9, 128, 192, 2, 3.0, 0, encoders["max_text_len"])
    assert np.abs(from_first.astype(int) - samples["run"][key, 0].astype(int)).max() <= 1
    from_other = wan.sample(direct, "ti2v", 255 - clips[0].frames[0], clips[0].caption or "", 9, 128, 192, 2, 3.0, 0,
                            encoders["max_text_len"])
    assert wan.starts_from_first_frame("ti2v") and not wan.starts_from_first_frame("t2v")  # the judge keeps the clip's prompt
    assert np.abs(from_other.astype(int) - samples["run"][key, 0].astype(int)).max() > 1


GOLDEN = ROOT / "tests" / "golden" / "distill_tiny_wan22.json"
WAN22 = (f"student.model={TINY_WAN}", "student.task=ti2v")


def test_tiny_wan22_distill_matches_the_golden_curve(tmp_path):
    """Golden loss curve of Wan 2.2 TI2V (the first-frame objective, shift 5) on the fixed synthetic Wan store at 48
    channels; regenerate on an intended change with SAM2VIDEOX_UPDATE_GOLDEN=1 and review the diff."""
    import numpy as np
    from test_golden_curve import departs, matches_golden, run_curve
    from test_golden_curve_wan import synthetic_wan_store

    from stages.families.wan.encoders import tiny_wan22_vae_config

    synthetic_wan_store(str(tmp_path / "store"), vae_config=tiny_wan22_vae_config())
    got = run_curve(tmp_path, "run", *WAN22)
    assert np.mean(got["lgf"][-3:]) < np.mean(got["lgf"][:3]), got["lgf"]
    want = matches_golden(got, GOLDEN)
    assert departs(run_curve(tmp_path, "perturbed", *WAN22, "train.steps=2", "losses.lgf.weight=0.55"), want)


def test_wan21_student_refuses_a_wan22_store(wan22_store, tmp_path):
    """A 16-channel (Wan 2.1) student on a 48-channel Wan 2.2 store: a one-line error naming both."""
    from stages.distill.data import StoreMismatch
    from stages.distill.trainer import Trainer

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={wan22_store}", f"out={tmp_path / 'run'}", f"student.model={TINY_WAN}", "student.task=t2v",
        "data.num_workers=0", "train.steps=1", "data.holdout=0"])
    with pytest.raises(StoreMismatch, match=r"store \(encodings-\w+\): latents have 48 channels, the student predicts 16"):
        Trainer(cfg)


def test_tiny_wan22_ti2v_run_validates(wan22_store, tmp_path):
    """eval.every > 0 on a TI2V run: validation at fixed t through the first-frame objective writes finite val rows."""
    import numpy as np

    from stages.distill.curves import read_metrics
    from stages.distill.trainer import Trainer

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={wan22_store}", f"out={tmp_path / 'run'}", *WAN22, "data.num_workers=0", "train.steps=1",
        "train.batch_size=1", "data.holdout=0.01", "eval.every=1", "train.checkpoint_every=100"])
    trainer = Trainer(cfg)
    trainer.run()
    trainer.close()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl", "val")
    assert [r["step"] for r in rows] == [1] and rows[0]["clips"] == 1
    terms = rows[0]["terms"]
    assert {"diff", "diff@100", "diff@500", "diff@900", "lgf"} <= set(terms) and all(np.isfinite(v) for v in terms.values())
