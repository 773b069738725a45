"""A tiny CogVideoX 1.5 end to end: temporal patch 2 with frame padding, ofs embedding, inverted image scaling.

One diffusers folder (stages/families/cogvideox/family.py: save_tiny_cogvideox15) is both the encoders
model (its VAE config's invert_scale_latents is recorded by stage one) and the student (the teacher grid
follows from its transformer/ and vae/ configs). Stage one writes a store at that geometry, stage two
trains a few steps with L_diff + LGF, and the stock CogVideoXImageToVideoPipeline loads the LoRA: its
output changes, and equals the output of the base model with the LoRA merged by hand (W + alpha / r * B A).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import ROOT
from stages.config.loader import load_config
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig


def _run(pipe, image) -> torch.Tensor:
    # 9 frames -> 3 latent frames; the 1.5 pipeline pads to 4 for temporal patch 2 (and passes ofs = 2)
    return pipe(image, "a dog runs", height=64, width=96, num_frames=9, num_inference_steps=2, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(0), max_sequence_length=16, output_type="latent").frames


def test_tiny_cogvideox15_end_to_end(tmp_path, sample_generator):
    from PIL import Image

    from pipeline.runner import run_extract
    from stages.store import FeatureStore
    from stages.families.cogvideox.family import save_tiny_cogvideox15
    from stages.distill.trainer import Trainer
    from stages.extract.columns.teacher import student_grid
    from stages.families.registry import get_student

    def build_pipeline(student, encoders, lora):
        return get_student("cogvideox").build_pipeline(student, encoders, lora, "i2v")

    model = str(save_tiny_cogvideox15(tmp_path / "tiny-cogvideox15"))
    corpus = tmp_path / "clips"
    sample_generator.generate(corpus, clips=2, frames=9, fps=8)
    url = str(tmp_path / "store")
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [
        f"corpus.url={corpus}", "corpus.clips_per_shard=2", "video.num_frames=9", "video.height=64", "video.width=96",
        "teacher.image_size=64", f"encoders.model={model}", f"student.model={model}", "ray.num_workers=0"])
    assert student_grid(cfg).shape == (2, 4, 6)  # 3 latent frames padded to 4, / patch_size_t 2
    assert run_extract(cfg, url).failed_keys == set()
    enc = FeatureStore(url).column("encodings")
    assert enc.attrs["invert_scale_latents"] is True

    run = tmp_path / "run"
    dcfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={url}", f"out={run}", f"student.model={model}", "student.task=i2v",
        "data.num_workers=0", "train.steps=2", "data.holdout=0", "train.checkpoint_every=100"])
    trainer = Trainer(dcfg)
    assert trainer.data.image_scale == 1 / enc.attrs["scaling_factor"]
    history = trainer.run()
    assert trainer.grid == (2, 4, 6)
    assert all(np.isfinite(m.terms["diff"]) and m.terms["lgf"] > 0 for m in history)
    lora = trainer.finish()
    trainer.close()

    image = Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8))
    base, with_lora = _run(build_pipeline(model, model, None), image), _run(build_pipeline(model, model, lora), image)
    assert base.shape[1] == 4  # the padded latent frames
    assert (with_lora - base).abs().max() > 1e-3
    with safe_open(str(lora / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = {k.removeprefix("transformer."): v for k, v in json.loads(f.metadata()["lora_adapter_metadata"]).items()}
    state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    merged = build_pipeline(model, model, None)
    modules = dict(merged.transformer.named_modules())
    pairs = [k for k in state if k.endswith("lora_A.weight")]
    assert len(pairs) == 3 * 4  # 3 blocks x (q, k, v, out)
    for key in pairs:
        name = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        modules[name].weight.data += meta["lora_alpha"] / meta["r"] * state[key.replace("lora_A", "lora_B")] @ state[key]
    torch.testing.assert_close(with_lora, _run(merged, image), atol=1e-5, rtol=1e-4)


def test_teacher_frames_follow_the_15_padding():
    """Latent frames [f0, f1, f2] -> the 1.5 student's token frames (f0, f0 | f1, f2): stride takes each pair's
    last, mean its mean; the mask takes the stride frame."""
    from stages.core.grid import mask_to_token_grid, to_token_frames, to_token_grid, token_grid

    x = torch.arange(3.0).view(3, 1)
    assert to_token_frames(x, 2, "stride").flatten().tolist() == [0.0, 2.0]
    assert to_token_frames(x, 2, "mean").flatten().tolist() == [0.0, 1.5]
    assert to_token_frames(x, 1).data_ptr() == x.data_ptr()  # no temporal patch: unchanged
    grid = token_grid(9, 64, 96, 4, 8, 2, 2)
    assert grid.shape == (2, 4, 6) and grid.patch_t == 2
    features = torch.arange(9.0).view(9, 1, 1, 1).expand(9, 3, 8, 8)  # pixel frame i holds i
    out = to_token_grid(features, grid, 4, "stride")  # latent frames take pixel frames 0, 4, 8
    assert out.shape == (2, 4, 6, 3) and out[:, 0, 0, 0].tolist() == [0.0, 8.0]
    masks = torch.zeros(9, 16, 16, dtype=torch.bool)
    masks[8] = True
    assert mask_to_token_grid(masks, grid, 4)[:, 0, 0].tolist() == [0, 255]
