"""LTX-Video as a student: the grid from its configs, its flow-matching objective (T2V; I2V with the clean first
frame), its encodings column, a tiny store trained with L_diff + LGF, and the LoRA read by the stock LTX pipelines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ROOT
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig
from stages.config.loader import load_config
from stages.families.registry import geometry_of, get_student, infer_family, student_for
from stages.families.ltx.family import (
    LTX_SCHEDULER,
    LTX_VIDEO,
    LTX_VIDEO_TRANSFORMER,
    LTX_VIDEO_VAE,
    TINY_LTX,
    ltx_loss_from_output,
    pack_latents,
    prepare_ltx_inputs,
    video_shift,
)


def _on_meta(cls, config: dict):
    with torch.device("meta"):
        return cls.from_config(config).config


def test_ltx_grid_follows_from_the_real_configs_on_the_meta_device():
    """VAE 32x spatial (patch 4 x three 2x stages), 8x temporal, transformer patch 1: 121x512x768 -> 16 x 16 x 24."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel

    with torch.device("meta"):
        vae = AutoencoderKLLTXVideo.from_config(LTX_VIDEO_VAE)
    assert (vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (32, 8)  # what the pipelines read
    geo = get_student("ltx").geometry(_on_meta(LTXVideoTransformer3DModel, LTX_VIDEO_TRANSFORMER), vae.config)
    assert (geo.vae_spatial, geo.vae_temporal, geo.patch_size, geo.patch_size_t) == (32, 8, 1, 1)
    assert geo.token_grid(121, 512, 768).shape == (16, 16, 24)
    assert geo.token_grid(161, 512, 704).shape == (21, 16, 22)  # LTXPipeline's default size
    assert geometry_of(LTX_VIDEO) == geo and geometry_of(TINY_LTX) == geo  # offline, and the tiny preset alike
    assert infer_family(LTX_VIDEO) == infer_family(TINY_LTX) == "ltx"
    with pytest.raises(ValueError, match="must be 8k\\+1"):
        geo.token_grid(48, 512, 768)


def test_shipped_ltx_extract_configs_give_their_grids():
    from stages.extract.columns.teacher import student_grid

    assert student_grid(load_config(ExtractConfig, ROOT / "configs/extract/ltx_video.yaml")).shape == (16, 16, 24)
    assert student_grid(load_config(ExtractConfig, ROOT / "configs/extract/sample_ltx.yaml")).shape == (7, 4, 6)


def test_memory_plan_of_the_ltx_config():
    """The shipped I2V config plans from the known config at 121x512x768: 16*16*24 video tokens (text by cross-attention)."""
    from stages.distill.memory_plan import plan_memory

    path = ROOT / "configs/distill/ltx_video_i2v.yaml"
    lora = plan_memory(load_config(DistillConfig, path, ["parallel.strategy=fsdp"]), 8)
    assert lora.tokens == 16 * 16 * 24
    full = plan_memory(load_config(DistillConfig, path, ["parallel.strategy=fsdp", "student.full_finetune=true"]), 8)
    assert 1.8e9 < full.params < 2.1e9 and full.trainable == full.params  # the 2B model
    assert 0 < lora.trainable < full.params / 10


def _batch(b=2, c=16, t=3, h=4, w=6, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, length, dtype=torch.uint8)
    mask[:, :3] = 1
    return {"latents": torch.randn(b, 2 * c, t, h, w, generator=g), "prompt_embeds": torch.randn(b, length, 32, generator=g),
            "prompt_mask": mask, "image_latents": torch.randn(b, c, 1, h, w, generator=g)}


def test_t2v_objective_is_flow_matching_with_the_pipelines_shift():
    """x_t = (1 - sigma) x0 + sigma eps packed as LTXPipeline._pack_latents, target eps - x0, t = 1000 sigma per sample,
    sigma the dynamically shifted u of the scheduler (calculate_shift on the token count), the pipeline's RoPE kwargs."""
    student = get_student("ltx")
    transformer, scheduler = student.load(TINY_LTX, "t2v", torch.float32, "cpu")
    assert scheduler.config.use_dynamic_shifting and scheduler.config.base_shift == LTX_SCHEDULER["base_shift"]
    batch = _batch()
    inputs = prepare_ltx_inputs(transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], batch["prompt_mask"],
                                torch.Generator().manual_seed(0))
    k = inputs.model_kwargs
    s = inputs.sigmas.view(-1, 1, 1)
    torch.testing.assert_close(k["hidden_states"], (1 - s) * inputs.clean + s * inputs.noise)
    assert k["hidden_states"].shape == (2, 3 * 4 * 6, 16)
    torch.testing.assert_close(k["timestep"], 1000 * inputs.sigmas)
    assert (k["num_frames"], k["height"], k["width"]) == (3, 4, 6)
    assert k["rope_interpolation_scale"] == (8 / 25, 32, 32)  # LTXPipeline at its default frame_rate 25
    torch.testing.assert_close(k["encoder_attention_mask"], batch["prompt_mask"])
    # the sigma is the scheduler's own time shift of u (the same draw: the posterior eps first, then u)
    g = torch.Generator().manual_seed(0)
    torch.randn(2, 16, 3, 4, 6, generator=g)
    u = torch.rand(2, generator=g)
    mu = video_shift(scheduler.config, 72)
    torch.testing.assert_close(inputs.sigmas, torch.tensor([scheduler.time_shift(mu, 1.0, float(x)) for x in u]))
    # x0 is a sample of the stored (normalised) posterior: packing is (frame, row, column)-major, channels last
    x = torch.arange(2 * 16 * 3 * 4 * 6.0).view(2, 16, 3, 4, 6)
    torch.testing.assert_close(pack_latents(x)[:, 1 * 24 + 2 * 6 + 5], x[:, :, 1, 2, 5])
    out = transformer(**k)[0]
    loss, aux = ltx_loss_from_output(out, inputs)
    torch.testing.assert_close(loss, (out - (inputs.noise - inputs.clean)).square().mean())
    assert torch.equal(aux["weights"], torch.ones(2))
    # seeded: the same generator gives the same inputs
    again = prepare_ltx_inputs(transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], batch["prompt_mask"],
                               torch.Generator().manual_seed(0))
    assert torch.equal(again.model_kwargs["hidden_states"], k["hidden_states"])


def test_i2v_objective_keeps_frame_zero_clean_with_per_token_timesteps():
    """As LTXImageToVideoPipeline: frame 0 = the stored condition latent, timestep 1000 sigma (1 - mask) per token (0 on
    frame 0's tokens), the loss over frames 1.. only."""
    student = get_student("ltx")
    transformer, scheduler = student.load(TINY_LTX, "i2v", torch.float32, "cpu")
    batch = _batch()
    inputs = prepare_ltx_inputs(transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], batch["prompt_mask"],
                                torch.Generator().manual_seed(0), image_latents=batch["image_latents"])
    k, hw = inputs.model_kwargs, 4 * 6
    torch.testing.assert_close(k["hidden_states"][:, :hw], pack_latents(batch["image_latents"]))
    s = inputs.sigmas.view(-1, 1, 1)
    torch.testing.assert_close(k["hidden_states"][:, hw:], ((1 - s) * inputs.clean + s * inputs.noise)[:, hw:])
    assert k["timestep"].shape == (2, 3 * hw)
    assert not k["timestep"][:, :hw].any()
    torch.testing.assert_close(k["timestep"][:, hw:], (1000 * inputs.sigmas).view(-1, 1).expand(2, 2 * hw))
    assert inputs.first_loss_token == hw
    out = transformer(**k)[0]
    loss, _ = ltx_loss_from_output(out, inputs)
    torch.testing.assert_close(loss, (out[:, hw:] - inputs.target[:, hw:]).square().mean())
    moved = out.detach().clone()
    moved[:, :hw] += 100.0  # the prediction on frame 0 does not reach the loss
    torch.testing.assert_close(ltx_loss_from_output(moved, inputs)[0], loss.detach())
    with pytest.raises(ValueError, match="image_latents"):
        prepare_ltx_inputs(transformer.config, scheduler, batch["latents"][:, :, :1], batch["prompt_embeds"],
                           batch["prompt_mask"], None, image_latents=batch["image_latents"])


def test_caption_dropout_uses_the_empty_prompt_and_its_mask():
    transformer, scheduler = get_student("ltx").load(TINY_LTX, "t2v", torch.float32, "cpu")
    batch = _batch()
    empty = torch.randn(8, 32)
    inputs = prepare_ltx_inputs(transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], batch["prompt_mask"],
                                torch.Generator().manual_seed(0), empty_prompt_embeds=empty, caption_dropout=1.0)
    torch.testing.assert_close(inputs.model_kwargs["encoder_hidden_states"], empty.expand(2, 8, 32))
    assert inputs.model_kwargs["encoder_attention_mask"].tolist() == [[1] + [0] * 7] * 2


def test_tap_reads_the_grid_from_the_forward_kwargs():
    from stages.distill.tap import FeatureTap

    student = get_student("ltx")
    transformer, scheduler = student.load(TINY_LTX, "t2v", torch.float32, "cpu")
    batch = _batch()
    inputs = prepare_ltx_inputs(transformer.config, scheduler, batch["latents"], batch["prompt_embeds"], batch["prompt_mask"],
                                torch.Generator().manual_seed(0))
    captured = []
    handle = transformer.transformer_blocks[1].register_forward_hook(lambda m, a, o: captured.append(o))
    with FeatureTap(transformer, 1, student) as tap:
        transformer(**inputs.model_kwargs)
        features = tap.pop()
    handle.remove()
    assert features.shape == (2, 3, 4, 6, 24)
    torch.testing.assert_close(features.reshape(2, 72, 24), captured[0])
    with pytest.raises(ValueError, match="packed tokens"):
        student.input_grid(transformer.config, inputs.model_kwargs["hidden_states"])


@pytest.fixture(scope="module")
def ltx_store(tmp_path_factory, sample_generator) -> str:
    """2 clips of 9 frames at 128x192 with the tiny LTX encoders (2 x 4 x 6 latents) + the tiny SAM2 teacher."""
    from pipeline.runner import run_extract

    corpus = tmp_path_factory.mktemp("ltxcorpus") / "clips"
    sample_generator.generate(corpus, clips=2, frames=9, fps=8)
    url = str(tmp_path_factory.mktemp("ltxstore") / "store")
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample_ltx.yaml", [
        f"corpus.url={corpus}", "corpus.clips_per_shard=2", "video.num_frames=9", "teacher.image_size=64", "ray.num_workers=0"])
    assert run_extract(cfg, url).failed_keys == set()
    return url


def test_ltx_encodings_column(ltx_store):
    """The column says its family, holds the normalised posterior, the T5 mask the student streams, the VAE statistics,
    and the first-frame condition (frame 0 alone through the causal encoder: the video latent's frame 0)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from stages.families.ltx.encoders import load_ltx_encoders
    from stages.store import FeatureStore

    store = FeatureStore(ltx_store)
    col = store.column("encodings")
    assert col.attrs["vae_family"] == "ltx" and col.attrs["latents_normalised"] is True
    assert (col.attrs["spatial_compression"], col.attrs["temporal_compression"]) == (32, 8)
    assert col.attrs["training_arrays"] == ["prompt_mask"]
    assert col.schema["latents"].shape == (32, 2, 4, 6) and col.schema["image_latents"].shape == (16, 1, 4, 6)
    extra = col.column_arrays()
    enc = load_ltx_encoders(TINY_LTX, "float32", "cpu")
    np.testing.assert_allclose(extra["latents_std"], enc.vae.latents_std.numpy())
    assert not np.allclose(extra["latents_std"], 1.0)  # the preset's statistics are not the identity
    assert extra["empty_prompt_mask"].tolist() == [1] + [0] * 15  # what caption dropout uses (family.empty_prompt_mask)
    data = col.read_shard(0)
    arrays = {name: col.read_row(data, name, 0) for name in ("latents", "image_latents", "prompt_mask")}
    params = torch.from_numpy(arrays["latents"].astype(np.float32))[None]
    mode0 = DiagonalGaussianDistribution(params).mode()[:, :, :1]
    torch.testing.assert_close(mode0[0], torch.from_numpy(arrays["image_latents"].astype(np.float32)), atol=2e-3, rtol=1e-3)
    assert arrays["prompt_mask"].dtype == np.uint8 and arrays["prompt_mask"][0] == 1


def _latents(pipe, task: str, first: np.ndarray) -> torch.Tensor:
    from stages.families.ltx.sampling import sample_ltx

    return sample_ltx(pipe, task, first, "a dog runs", 9, first.shape[0], first.shape[1], steps=2, guidance_scale=3.0, seed=0, max_text_len=16,
                      output_type="latent")


def _hand_merged(lora, task):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from stages.families.ltx.sampling import build_ltx_pipeline

    with safe_open(str(lora / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = {k.removeprefix("transformer."): v for k, v in json.loads(f.metadata()["lora_adapter_metadata"]).items()}
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    merged = build_ltx_pipeline(TINY_LTX, TINY_LTX, None, task=task)
    modules = dict(merged.transformer.named_modules())
    pairs = [k for k in state if k.endswith("lora_A.weight")]
    assert len(pairs) == 3 * 2 * 4  # 3 blocks x (self, cross attention) x (q, k, v, out)
    for key in pairs:
        name = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        modules[name].weight.data += meta["lora_alpha"] / meta["r"] * state[key.replace("lora_A", "lora_B")] @ state[key]
    return merged


@pytest.mark.parametrize("task", ["i2v", "t2v"])
def test_tiny_ltx_end_to_end(ltx_store, tmp_path, task):
    """2 steps of L_diff + LGF on the tiny store; the LoRA read by the stock LTXImageToVideoPipeline / LTXPipeline
    changes its output and equals the hand-merged model's; `generate` samples the run through the same pipeline."""
    from diffusers import LTXImageToVideoPipeline, LTXPipeline

    from stages.distill.trainer import Trainer
    from stages.families.ltx.sampling import build_ltx_pipeline

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample_ltx.yaml", [
        f"data.store={ltx_store}", f"out={tmp_path / 'run'}", f"student.task={task}", "data.num_workers=0",
        "train.steps=2", "data.holdout=0", "train.checkpoint_every=100"])
    trainer = Trainer(cfg)
    assert trainer.student.family == "ltx" and trainer.grid == (2, 4, 6)
    history = trainer.run()
    assert len(history) == 2 and all(np.isfinite(m.terms["diff"]) and m.terms["lgf"] > 0 for m in history)
    lora = trainer.finish()
    trainer.close()

    first = (np.random.default_rng(0).random((128, 192, 3)) * 255).astype(np.uint8)
    base = _latents(build_ltx_pipeline(TINY_LTX, TINY_LTX, None, task=task), task, first)
    pipe = build_ltx_pipeline(TINY_LTX, TINY_LTX, lora, task=task)
    assert type(pipe) is (LTXImageToVideoPipeline if task == "i2v" else LTXPipeline)
    with_lora = _latents(pipe, task, first)
    assert with_lora.shape == (1, 2 * 4 * 6, 16)
    assert (with_lora - base).abs().max() > 1e-3
    torch.testing.assert_close(with_lora, _latents(_hand_merged(lora, task), task, first), atol=1e-5, rtol=1e-4)
    if task == "i2v":  # the pipeline keeps latent frame 0 = the image's condition: the LoRA leaves it alone
        torch.testing.assert_close(with_lora[:, :24], base[:, :24])

    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "sample.mp4"
    result = CliRunner().invoke(app, ["generate", "--run", str(tmp_path / "run"), "--store", ltx_store, "--out", str(out),
                                      "--steps", "2", "--guidance", "3"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "9 frames 128x192" in result.output


def test_other_families_refuse_an_ltx_store(ltx_store, tmp_path):
    from stages.distill.trainer import Trainer
    from stages.store import StoreError

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample_wan.yaml", [
        f"data.store={ltx_store}", f"out={tmp_path / 'run'}", "data.num_workers=0", "data.holdout=0"])
    with pytest.raises(StoreError, match="channels|ltx VAE"):
        Trainer(cfg)


def test_student_for_a_saved_tiny_ltx_folder(tmp_path):
    student = get_student("ltx")
    student.save_tiny(tmp_path / "ltx")
    assert student_for(str(tmp_path / "ltx")).family == "ltx"
    transformer, scheduler = student.load(str(tmp_path / "ltx"), "i2v", torch.float32, "cpu")
    assert transformer.config.in_channels == 16 and scheduler.config.use_dynamic_shifting
    assert student.pipeline_class("i2v").__name__ == "LTXImageToVideoPipeline"
    with pytest.raises(ValueError, match="t2v or i2v"):
        student.load(TINY_LTX, "ti2v", torch.float32, "cpu")


def test_xformers_on_ltx_is_one_cli_line(ltx_store, tmp_path):
    """LTX has no xformers path of ours: `distill` refuses it in one line (exit 2), before any step."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["distill", "--config", str(ROOT / "configs/distill/sample_ltx.yaml"), "--store", ltx_store,
                                      "--out", str(tmp_path / "run"), "student.attention=xformers", "train.steps=1",
                                      "data.holdout=0", "eval.every=0"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1] == "config: student.attention=xformers: the ltx student has no xformers attention; use student.attention=sdpa"
    assert "Traceback" not in result.output
