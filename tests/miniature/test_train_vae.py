"""miniature/train_vae.py: the folder it writes loads through the user's path and encodes at the real
compression; the reconstruction loss it minimises goes down; its PSNR ranks reconstructions rightly."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from diffusers import AutoencoderKLCogVideoX

from miniature.train_vae import TrainConfig, loss_terms, psnr, random_crops, render_part, run, vae_config
from miniature.world import WORLD, render
from stages.families.cogvideox.encoders import encode_video, load_encoders


def test_smoke_run_writes_a_folder_that_loads_and_encodes(tmp_path):
    out = tmp_path / "encoders"
    cfg = TrainConfig(steps=2, batch=1, crop_height=32, crop_width=32, clips=2, scale_clips=1, probe_clips=1)
    record = run(out, cfg, "test")

    assert {p.name for p in out.iterdir()} >= {"vae", "text_encoder", "tokenizer", "encoders.json"}
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "encoders.json").read_text()) == json.loads(json.dumps(record))
    assert record["steps"] == 2 and math.isfinite(record["psnr_db"]["trained"])

    enc = load_encoders(str(out), "float32", "cpu")  # exactly as extraction loads `encoders.model: <folder>`
    assert enc.scaling_factor == record["scaling_factor"] == 1.0 / record["latent_std"]
    latents = encode_video(enc, render(WORLD.probe, 0).frames)
    # 16 channels as [mean | logvar], 17 frames -> 5 (4x temporal), 128x192 -> 16x24 (8x spatial)
    assert latents.shape == (32, 5, 16, 24)


def test_reconstruction_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX.from_config(vae_config(TrainConfig.widths))
    cfg = TrainConfig(batch=2, crop_frames=9, crop_height=32, crop_width=32)  # 9 frames: 3 latent frames (an even count decodes to 4k frames)
    x = random_crops(render_part(WORLD.teacher, 1), cfg, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(8):
        loss, l1, _ = loss_terms(vae, x, cfg.kl_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(l1)
    assert losses[-1] < 0.8 * losses[0], losses


def test_psnr_is_infinite_for_identical_frames_and_falls_with_noise():
    rng = np.random.default_rng(0)
    frames = render(WORLD.probe, 0).frames[:2]

    def noisy(sigma: float) -> np.ndarray:
        return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)

    assert psnr(frames, frames) == math.inf
    mild, strong = psnr(frames, noisy(2.0)), psnr(frames, noisy(20.0))
    assert 40 < mild < 50 and 20 < strong < 25 and strong < mild
