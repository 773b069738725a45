"""The student interface: families, geometry from configs, and a tiny Wan 2.1 T2V end to end.

The Wan end-to-end test runs the real path: stage one (in-process) writes a store with the Wan
encodings column (AutoencoderKLWan posteriors, UMT5 embeddings) beside the SAM2 teacher column, stage
two trains the tiny WanTransformer3DModel a few steps with L_diff + LGF, the LoRA is exported, and
the stock diffusers WanPipeline loads it: its output changes, and equals the output of the base model
with the LoRA merged into its weights by hand (W + alpha / r * B A).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import ROOT
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig
from stages.families.registry import get_student, infer_family, student_for
from stages.families.wan.encoders import TINY_WAN_I2V
from stages.families.cogvideox.family import COGVIDEOX_15_5B_I2V_TRANSFORMER, COGVIDEOX_15_VAE
from stages.families.wan.family import (
    TINY_WAN,
    WAN21_SCHEDULER,
    WAN21_T2V_14B_TRANSFORMER,
    WAN21_VAE,
    build_wan_pipeline,
    image_condition,
    prepare_flow_inputs,
    training_scheduler,
)


def _on_meta(cls, config: dict):
    """Build a diffusers model from a config dict on the meta device (no weights) and return its config."""
    with torch.device("meta"):
        return cls.from_config(config).config


def test_wan21_480p_teacher_grid_follows_from_the_configs():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    wan = get_student("wan")
    geo = wan.geometry(_on_meta(WanTransformer3DModel, WAN21_T2V_14B_TRANSFORMER), _on_meta(AutoencoderKLWan, WAN21_VAE))
    assert (geo.vae_spatial, geo.vae_temporal, geo.patch_size, geo.patch_size_t) == (8, 4, 2, 1)
    # 81 frames -> 21 latent frames; 480x832 -> 60x104 latents -> 30x52 tokens
    assert geo.token_grid(81, 480, 832).shape == (21, 30, 52)
    # the same grid the student computes from a stored latent and from a transformer input
    cfg = _on_meta(WanTransformer3DModel, WAN21_T2V_14B_TRANSFORMER)
    assert wan.token_grid(cfg, (21, 60, 104)) == (21, 30, 52)
    assert wan.input_grid(cfg, torch.empty(1, 16, 21, 60, 104, device="meta")) == (21, 30, 52)


def test_cogvideox15_teacher_grid_follows_from_the_configs():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    cog = get_student("cogvideox")
    tcfg = _on_meta(CogVideoXTransformer3DModel, COGVIDEOX_15_5B_I2V_TRANSFORMER)
    geo = cog.geometry(tcfg, _on_meta(AutoencoderKLCogVideoX, COGVIDEOX_15_VAE))
    assert (geo.vae_spatial, geo.vae_temporal, geo.patch_size, geo.patch_size_t) == (8, 4, 2, 2)
    # 81 frames -> 21 latent frames, padded to 22 for temporal patch 2 -> 11; 768x1360 -> 96x170 -> 48x85
    assert geo.token_grid(81, 768, 1360).shape == (11, 48, 85)
    assert cog.token_grid(tcfg, (21, 96, 170)) == (11, 48, 85)


def test_family_comes_from_the_name_or_the_saved_config(tmp_path):
    assert infer_family("tiny") == "cogvideox" and infer_family(TINY_WAN) == "wan"
    get_student("wan").save_tiny(tmp_path / "wan")
    get_student("cogvideox").save_tiny(tmp_path / "cog", "t2v")
    assert infer_family(str(tmp_path / "wan")) == "wan"
    assert infer_family(str(tmp_path / "cog")) == "cogvideox"
    assert infer_family(str(tmp_path / "wan"), "cogvideox") == "cogvideox"  # student.family wins
    from stages.families.registry import FAMILIES

    registered = ", ".join(FAMILIES)
    with pytest.raises(ValueError, match=f"^student.family='nosuch' is not a registered family; registered: {registered}$"):
        infer_family("tiny", "nosuch")
    # the saved tiny folder loads to the same weights as the preset
    a, sched = student_for(str(tmp_path / "wan")).load(str(tmp_path / "wan"), "t2v", torch.float32, "cpu")
    b, _ = student_for(TINY_WAN).load(TINY_WAN, "t2v", torch.float32, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sched.config.shift == WAN21_SCHEDULER["flow_shift"]
    with pytest.raises(ValueError, match="is a text-to-video Wan .* but student.task='i2v'"):
        get_student("wan").load(str(tmp_path / "wan"), "i2v", torch.float32, "cpu")


def test_wan_flow_matching_inputs():
    """x_t = (1 - sigma) x0 + sigma eps with the shifted sigmas, t = 1000 sigma, target eps - x0, x0 normalised."""
    from stages.families.wan.family import build_tiny_transformer

    config = build_tiny_transformer().config
    scheduler = training_scheduler(WAN21_SCHEDULER)
    params = torch.randn(64, 32, 2, 4, 4)
    params[:, 16:] = -30.0  # ~zero posterior variance: z = mean
    mean, std = torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16)
    inputs = prepare_flow_inputs(config, scheduler, params, torch.randn(64, 8, 32), mean, std, torch.Generator().manual_seed(0))
    x0 = (params[:, :16] - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(inputs.clean, x0, atol=1e-5, rtol=0)
    s = inputs.sigmas.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(inputs.model_kwargs["hidden_states"], (1 - s) * inputs.clean + s * inputs.noise)
    torch.testing.assert_close(inputs.timesteps, inputs.sigmas * 1000, atol=1e-3, rtol=0)
    torch.testing.assert_close(inputs.target, inputs.noise - inputs.clean)
    # shift 3: sigma = 3u / (1 + 2u) puts most samples at high noise (the median u = 0.5 maps to 0.75)
    assert inputs.sigmas.median() > 0.6 and inputs.sigmas.min() > 0 and inputs.sigmas.max() <= 1


def test_wan_prompt_embeddings_are_the_pipelines():
    """Stage one's UMT5 encoding equals WanPipeline.encode_prompt (mask, zeroed padding)."""
    from stages.families.wan.encoders import encode_prompt_wan, load_wan_encoders

    enc = load_wan_encoders(TINY_WAN, "float32", "cpu")
    pipe = build_wan_pipeline(TINY_WAN, TINY_WAN, None)
    ours, mask = encode_prompt_wan(enc, "a dog runs on the grass", 16)
    theirs, _ = pipe.encode_prompt("a dog runs on the grass", do_classifier_free_guidance=False, max_sequence_length=16)
    np.testing.assert_allclose(ours.astype(np.float32), theirs[0].float().numpy(), atol=2e-3, rtol=2e-3)
    assert mask.sum() < 16 and not ours[mask.sum():].any()


@pytest.fixture(scope="module")
def wan_store(tmp_path_factory, sample_generator) -> str:
    """4 clips of 17 frames at 128x192: the Wan encodings column + the teacher column, in-process (no Ray)."""
    from pipeline.runner import run_extract

    corpus = tmp_path_factory.mktemp("wancorpus") / "clips"
    sample_generator.generate(corpus, clips=4, frames=17, fps=8)
    url = str(tmp_path_factory.mktemp("wanstore") / "store")
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [
        f"corpus.url={corpus}", "corpus.clips_per_shard=2", "video.num_frames=17", "teacher.image_size=64",
        f"encoders.model={TINY_WAN}", "ray.num_workers=0"])
    assert run_extract(cfg, url).failed_keys == set()
    return url


def _run(pipe) -> torch.Tensor:
    return pipe("a dog runs", negative_prompt="", height=64, width=96, num_frames=5, num_inference_steps=2, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(0), max_sequence_length=16, output_type="latent").frames


def test_tiny_wan_end_to_end(wan_store, tmp_path):
    from stages.store import FeatureStore
    from stages.distill.trainer import Trainer

    enc = FeatureStore(wan_store).column("encodings")
    assert enc.attrs["vae_family"] == "wan" and len(enc.attrs["latents_std"]) == 16
    assert enc.schema["latents"].shape == (32, 5, 16, 24) and "image_latents" not in enc.schema
    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={wan_store}", f"out={tmp_path / 'run'}", f"student.model={TINY_WAN}", "student.task=t2v",
        "data.num_workers=0", "train.steps=3", "train.checkpoint_every=100", "train.caption_dropout=0.5"])
    trainer = Trainer(cfg)
    history = trainer.run()
    assert trainer.grid == (5, 8, 12)
    assert all(np.isfinite(m.terms["diff"]) and m.terms["lgf"] > 0 for m in history)
    lora = trainer.finish()
    trainer.close()

    base, with_lora = _run(build_wan_pipeline(TINY_WAN, TINY_WAN, None)), _run(build_wan_pipeline(TINY_WAN, TINY_WAN, lora))
    assert (with_lora - base).abs().max() > 1e-3  # the stock loader applied the trained LoRA
    # merged by hand from the file: W + alpha / r * B A
    with safe_open(str(lora / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = {k.removeprefix("transformer."): v for k, v in json.loads(f.metadata()["lora_adapter_metadata"]).items()}
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    merged = build_wan_pipeline(TINY_WAN, TINY_WAN, None)
    modules = dict(merged.transformer.named_modules())
    pairs = [k for k in state if k.endswith("lora_A.weight")]
    assert len(pairs) == 3 * 2 * 4  # 3 blocks x (self, cross attention) x (q, k, v, out)
    for key in pairs:
        name = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        modules[name].weight.data += meta["lora_alpha"] / meta["r"] * state[key.replace("lora_A", "lora_B")] @ state[key]
    torch.testing.assert_close(with_lora, _run(merged), atol=1e-5, rtol=1e-4)

    # the CLI samples a Wan run through the stock text-to-video pipeline, from the clip's caption
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "sample.mp4"
    result = CliRunner().invoke(app, ["generate", "--run", str(tmp_path / "run"), "--store", wan_store, "--out", str(out), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "17 frames 128x192" in result.output

    # evaluate compares the Wan run with its base through WanPipeline (the held-out clip's caption at its size)
    ev = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--store", wan_store, "--runs", str(tmp_path / "run"), "--base", "--out", str(ev),
                                      "--steps", "2", "--clips", "1", "--no-vbench"])
    assert result.exit_code == 0, result.output
    rows = json.loads((ev / "report.json").read_text())["rows"]
    assert set(rows) == {"base", "run"} and all(np.isfinite(rows[m]["flicker"]) for m in rows)
    assert len(list((ev / "samples").rglob("*.mp4"))) == 2


def test_wan_student_refuses_a_cogvideox_store(student_store, tmp_path):
    from stages.distill.data import StoreMismatch
    from stages.distill.trainer import Trainer

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={student_store}", f"out={tmp_path / 'run'}", f"student.model={TINY_WAN}", "student.task=t2v", "data.num_workers=0"])
    with pytest.raises(StoreMismatch, match="made with the cogvideox VAE/text encoder, the student is wan"):
        Trainer(cfg)


def test_wan_i2v_student_refuses_a_t2v_store(wan_store, tmp_path):
    from stages.distill.data import StoreMismatch
    from stages.distill.trainer import Trainer

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={wan_store}", f"out={tmp_path / 'run'}", f"student.model={TINY_WAN}", "student.task=i2v", "data.num_workers=0"])
    with pytest.raises(StoreMismatch, match="student.task=i2v needs image_latents, image_embeds"):
        Trainer(cfg)


def test_stage_one_grid_follows_from_student_model(tmp_path):
    """extract's student.model: the teacher grid from the model's config files (a CogVideoX 1.5 folder of
    config.json only, written from meta-device models), and a contradicting explicit number is refused."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    from stages.extract.columns.teacher import student_grid

    folder = tmp_path / "CogVideoX1.5-5B-I2V"
    with torch.device("meta"):
        CogVideoXTransformer3DModel.from_config(COGVIDEOX_15_5B_I2V_TRANSFORMER).save_config(folder / "transformer")
        AutoencoderKLCogVideoX.from_config(COGVIDEOX_15_VAE).save_config(folder / "vae")
    video = ["video.num_frames=81", "video.height=768", "video.width=1360"]
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [f"student.model={folder}", *video])
    assert student_grid(cfg).shape == (11, 48, 85)
    wan = load_config(ExtractConfig, ROOT / "configs/extract/sample_wan.yaml")
    assert student_grid(wan).shape == (13, 8, 12)  # 49 frames of 128x192
    bad = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [f"student.model={folder}", "student.patch_size=4", *video])
    with pytest.raises(ValueError, match="student.patch_size=4 but the configs of student.model=.* give 2"):
        student_grid(bad)


def test_memory_plan_of_the_wan_configs():
    """`sam2videox plan` for the shipped Wan 2.1 configs: built on the meta device from the known config."""
    from stages.distill.memory_plan import plan_memory

    cfg = load_config(DistillConfig, ROOT / "configs/distill/wan21_t2v_14b.yaml", ["parallel.strategy=fsdp"])
    lora = plan_memory(cfg, 8)
    assert lora.tokens == 21 * 30 * 52  # video tokens only (text is cross-attended)
    full = plan_memory(load_config(DistillConfig, ROOT / "configs/distill/wan21_t2v_14b.yaml",
                                   ["parallel.strategy=fsdp", "student.full_finetune=true"]), 8)
    assert 14.0e9 < full.params < 14.5e9 and full.trainable == full.params
    assert lora.params - lora.trainable == full.params and full.total > lora.total  # LoRA adds its own weights


@pytest.mark.parametrize("name, grid", [("wan21_t2v_480p.yaml", (21, 30, 52)), ("wan21_i2v_480p.yaml", (21, 30, 52)), ("cogvideox15_i2v.yaml", (11, 48, 85)), ("cogvideox15_t2v.yaml", (11, 48, 85))])
def test_shipped_real_extract_configs_give_the_students_grid(name, grid):
    """The real extract configs name their student; the teacher grid follows from its published configs (offline)."""
    from stages.extract.columns.teacher import student_grid

    assert student_grid(load_config(ExtractConfig, ROOT / "configs/extract" / name)).shape == grid


@pytest.fixture(scope="module")
def wan_i2v_store(tmp_path_factory, sample_generator) -> str:
    """2 clips of 9 frames at 64x96 with the Wan 2.1 I2V encodings (condition latents, CLIP embeddings) + teacher."""
    from pipeline.runner import run_extract

    corpus = tmp_path_factory.mktemp("wani2vcorpus") / "clips"
    sample_generator.generate(corpus, clips=2, frames=9, fps=8)
    url = str(tmp_path_factory.mktemp("wani2vstore") / "store")
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [
        f"corpus.url={corpus}", "corpus.clips_per_shard=2", "video.num_frames=9", "video.height=64", "video.width=96",
        "teacher.image_size=64", f"encoders.model={TINY_WAN_I2V}", "ray.num_workers=0"])
    assert run_extract(cfg, url).failed_keys == set()
    return url


def _run_i2v(pipe, image) -> torch.Tensor:
    """The stock I2V pipeline from prompt embeddings: this diffusers' WanImageToVideoPipeline calls ftfy
    unconditionally on a text prompt (WanPipeline guards it), and ftfy is no dependency here."""
    from stages.families.wan.encoders import WanEncoders, encode_prompt_wan

    enc = WanEncoders(pipe.vae, pipe.text_encoder, pipe.tokenizer, torch.device("cpu"), torch.float32)
    text, empty = (torch.from_numpy(encode_prompt_wan(enc, p, 16)[0]).float()[None] for p in ("a dog runs", ""))
    return pipe(image, prompt_embeds=text, negative_prompt_embeds=empty, height=64, width=96, num_frames=5,
                num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="latent").frames


def test_tiny_wan_i2v_end_to_end(wan_i2v_store, tmp_path):
    """Wan 2.1 I2V: the stored condition is the pipeline's, training a few steps, the LoRA read by the stock
    WanImageToVideoPipeline changes its output and equals the hand-merged model's."""
    from PIL import Image

    from stages.store import FeatureStore
    from stages.distill.trainer import Trainer
    from stages.families.wan.encoders import encode_image_condition_wan, load_wan_encoders

    enc = FeatureStore(wan_i2v_store).column("encodings")
    assert enc.attrs["task"] == "i2v"
    assert enc.schema["image_latents"].shape == (16, 3, 8, 12) and enc.schema["image_embeds"].shape == (17, 16)
    # the stored condition = WanImageToVideoPipeline's own (prepare_latents, encode_image) from the same frame
    frame = (np.random.default_rng(0).random((9, 64, 96, 3)) * 255).astype(np.uint8)
    encoders = load_wan_encoders(TINY_WAN_I2V, "float32", "cpu")
    condition, embeds = encode_image_condition_wan(encoders, frame)
    pipe = build_wan_pipeline(TINY_WAN, TINY_WAN_I2V, None, task="i2v")
    image = Image.fromarray(frame[0])
    theirs = pipe.encode_image(image, "cpu")[0]
    np.testing.assert_allclose(embeds.astype(np.float32), theirs.numpy(), atol=2e-3, rtol=2e-3)
    pixels = pipe.video_processor.preprocess(image, height=64, width=96)
    _, cond = pipe.prepare_latents(pixels, 1, 16, 64, 96, 9, torch.float32, "cpu", torch.Generator().manual_seed(0))
    mean, std = torch.tensor(pipe.vae.config.latents_mean), torch.tensor(pipe.vae.config.latents_std)
    ours = image_condition(torch.from_numpy(condition.astype(np.float32))[None], mean, std)
    torch.testing.assert_close(ours, cond, atol=2e-2, rtol=1e-2)  # float16 storage

    held = FeatureStore(wan_i2v_store).require_snapshot().clips[0]["key"]  # held out by name: evaluate samples it below
    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={wan_i2v_store}", f"out={tmp_path / 'run'}", f"student.model={TINY_WAN}", "student.task=i2v",
        "data.num_workers=0", "train.steps=2", "train.batch_size=1", "data.holdout=0", f"data.holdout_keys=[{held}]",
        "train.checkpoint_every=100"])
    trainer = Trainer(cfg)
    history = trainer.run()
    assert trainer.grid == (3, 4, 6)
    assert all(np.isfinite(m.terms["diff"]) and m.terms["lgf"] > 0 for m in history)
    lora = trainer.finish()
    trainer.close()

    base = _run_i2v(build_wan_pipeline(TINY_WAN, TINY_WAN_I2V, None, task="i2v"), image)
    with_lora = _run_i2v(build_wan_pipeline(TINY_WAN, TINY_WAN_I2V, lora, task="i2v"), image)
    assert (with_lora - base).abs().max() > 1e-3
    with safe_open(str(lora / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = {k.removeprefix("transformer."): v for k, v in json.loads(f.metadata()["lora_adapter_metadata"]).items()}
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    merged = build_wan_pipeline(TINY_WAN, TINY_WAN_I2V, None, task="i2v")
    modules = dict(merged.transformer.named_modules())
    pairs = [k for k in state if k.endswith("lora_A.weight")]
    assert len(pairs) == 3 * 2 * 4
    for key in pairs:
        name = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        modules[name].weight.data += meta["lora_alpha"] / meta["r"] * state[key.replace("lora_A", "lora_B")] @ state[key]
    torch.testing.assert_close(with_lora, _run_i2v(merged, image), atol=1e-5, rtol=1e-4)

    # the CLI samples a Wan I2V run through the stock image-to-video pipeline, from the clip's first frame
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "sample.mp4"
    result = CliRunner().invoke(app, ["generate", "--run", str(tmp_path / "run"), "--store", wan_i2v_store, "--out", str(out), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "9 frames 64x96" in result.output

    # evaluate samples it through the stock I2V pipeline too, on the clip it held out
    ev = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--store", wan_i2v_store, "--runs", str(tmp_path / "run"), "--base", "--out", str(ev),
                                      "--steps", "2", "--no-vbench"])
    assert result.exit_code == 0, result.output
    assert set(json.loads((ev / "report.json").read_text())["rows"]) == {"base", "run"}


def test_memory_plan_of_the_wan_i2v_config():
    """The shipped Wan 2.1 I2V 14B config plans from the known config: 36 input channels and the image K/V kept."""
    from stages.distill.memory_plan import plan_memory

    t2v = plan_memory(load_config(DistillConfig, ROOT / "configs/distill/wan21_t2v_14b.yaml", ["parallel.strategy=fsdp"]), 8)
    i2v = plan_memory(load_config(DistillConfig, ROOT / "configs/distill/wan21_i2v_14b_480p.yaml", ["parallel.strategy=fsdp"]), 8)
    assert i2v.tokens == t2v.tokens == 21 * 30 * 52
    # + 40 blocks x (add_k, add_v 5120 x 5120 + biases + norm) + the CLIP-token projection + 20 more patch-embedding inputs
    assert 2.0e9 < i2v.params - t2v.params < 2.2e9 and i2v.trainable == t2v.trainable


def test_tiny_wan_run_validates_through_its_own_objective(wan_store, tmp_path):
    """eval.every > 0 on a Wan run: validation goes through the Wan family's flow-matching inputs and loss at the
    fixed timesteps (it used to call CogVideoX's objective and crash on use_learned_positional_embeddings); and
    eval.sample_every samples it through its stock pipeline."""
    from stages.distill.curves import read_metrics
    from stages.distill.trainer import Trainer

    demo = ROOT / "configs/distill/sample_wan.yaml"
    assert load_config(DistillConfig, demo).eval.every > 0  # make demo STUDENT=wan logs val/* rows
    cfg = load_config(DistillConfig, demo, [
        f"data.store={wan_store}", f"out={tmp_path / 'run'}", "data.num_workers=0", "train.steps=2", "train.batch_size=1",
        "train.checkpoint_every=100", "data.holdout=0.3", "eval.every=1", "eval.sample_every=2", "eval.sample_steps=1"])
    trainer = Trainer(cfg)
    trainer.run()
    # in-training samples go through the run's own pipeline (WanPipeline for t2v): they used to be skipped for Wan
    samples = list((tmp_path / "run" / "samples" / "step-000002").rglob("*.mp4"))
    assert len(samples) == 1 and samples[0].stat().st_size > 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl", "val")
    assert [r["step"] for r in rows] == [1, 2]
    terms = rows[-1]["terms"]
    assert {"diff", "diff@100", "diff@500", "diff@900", "lgf"} <= set(terms)
    assert all(np.isfinite(v) for v in terms.values())
    # fixed timesteps and noise: the same weights give the same numbers, and t orders the loss as flow matching does
    assert trainer.validator.evaluate(2)["terms"] == terms
    assert len({terms["diff@100"], terms["diff@500"], terms["diff@900"]}) == 3
    trainer.close()



def test_memory_plan_of_wan_14b_at_720p_counts_a_context_ranks_share_of_the_blocks():
    """parallel.context=4 at 81x720x1280 (~75k tokens): each rank's blocks hold a quarter of the sequence, while
    the embeddings, the output and the head (the tap gathers the whole sequence) stay whole."""
    from stages.distill.memory_plan import activation_parts, plan_memory

    base = ["parallel.strategy=fsdp", "student.checkpointing=all"]
    whole, split = (load_config(DistillConfig, ROOT / "configs/distill/wan21_t2v_14b.yaml", [*base, *extra])
                    for extra in ([], ["parallel.context=4"]))
    tokens, width = 21 * 45 * 80, 40 * 128
    parts = {n: activation_parts(c, None, tokens, tokens, width, 2, checkpointed=40, blocks=40) for n, c in (("1", whole), ("4", split))}
    assert parts["4"]["recompute"] == pytest.approx(parts["1"]["recompute"] / 4, rel=1e-6)  # one block rebuilt: a quarter
    assert parts["4"]["head"] == parts["1"]["head"]
    assert parts["1"]["forward"] / 4 < parts["4"]["forward"] < parts["1"]["forward"]  # the output side stays whole
    one, four = (plan_memory(c, 8, latent_shape=(21, 90, 160)) for c in (whole, split))
    assert one.tokens == four.tokens == tokens and four.context == 4
    assert four.activations < one.activations and four.weights == one.weights  # FSDP shards over all 8 ranks either way
    assert f"{tokens} tokens per sample, {tokens // 4} per GPU in the blocks (parallel.context=4)" in four.table()
