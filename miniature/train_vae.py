"""Train the CogVideoX family's VAE at toy width for reconstruction on the miniature world.

Writes an encoders folder that loads through the user's path (`encoders.model: <folder>`, i.e.
`stages.families.cogvideox.encoders.load_encoders(folder)`): vae/ (the trained
AutoencoderKLCogVideoX, safetensors), text_encoder/ and tokenizer/ (the tiny preset's random T5 at
seed 0, a fixed text featuriser, copied as `save_tiny_encoders` writes them), and encoders.json (the
command, seed, steps, time, loss at start and end, PSNR of the trained VAE and of the random preset).

Why this shape of training: the VAE is convolutional, so it trains on small crops
(9 frames -> 3 latent frames, 64x64 pixels -> 8x8 latents) of the `teacher` part's 17x128x192 clips
and is evaluated at full size on the held-out `probe` part. The compression is the real one
(8x spatial, 4x temporal, 16 latent channels); the loss is L1 reconstruction plus a small KL, as
diffusers/CogVideoX VAEs train without their GAN/LPIPS terms. After training, `scaling_factor` is
set to 1 / std of posterior samples over training clips, as real VAEs set it, so scaled latents
have unit variance for the transformer.

Why subject-centred crops and a subject-weighted L1: the subject covers 3-7 % of a frame, so a
plain L1 over uniformly random crops (many with no subject at all) is dominated by background and
the first recipe (v1: PSNR 20.6 dB whole-frame) reconstructed textures but left the subjects as
faint grey ghosts, which blinds everything trained on the latents to them. So most crops
(`subject_crop_p`) are centred on the subject of their frame window (true masks come with the
rendered clips), and each pixel's L1 is weighted 1 + `subject_weight` inside the subject's mask
dilated by `mask_dilate` px (normalised by the weights' sum, so weight 0 is the plain mean L1).
The probe reports PSNR over whole frames and inside the dilated true mask (subject PSNR).

The recipes tried (probe part, 6 clips; whole / subject PSNR): v1 uniform crops, plain L1, 600 steps:
20.58 / 12.93 dB; v2 subject weight 10, 900 steps: 19.20 / 13.86 dB with colour casts; v3 (the
defaults, committed) subject weight 3, 1400 steps: 20.23 / 14.52 dB, the subjects drawn in their colours.

Usage:  python -m miniature.train_vae --out weights/miniature/encoders --steps N --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLCogVideoX

from miniature.world import WORLD, Part, render
from stages.families.cogvideox.encoders import TINY_VAE_CONFIG, load_encoders, save_tiny_encoders

log = logging.getLogger(__name__)

# Chosen by profiling one training step (batch 4 of 9x64x64 crops, 1 thread, 2 shared cores):
# [8, 8, 16, 16] (the preset) 0.9 s, [8, 16, 16, 16] 0.9 s, [8, 16, 32, 32] 1.55 s, [16, 16, 32, 32] 2.4 s.
# The full-resolution first block dominates the cost, so widening the three lower-resolution
# blocks to 16 doubles their capacity at no measurable cost; 32 would halve the steps in budget.
WIDTHS = (8, 16, 16, 16)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1400
    seed: int = 0
    batch: int = 4
    crop_frames: int = 9  # 1 + 4k: the causal VAE's frame count for k + 1 latent frames
    crop_height: int = 64
    crop_width: int = 64
    lr: float = 2e-3
    warmup: int = 30  # linear warmup steps, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-4
    kl_weight: float = 1e-5  # on the KL summed per sample / pixel values: small, as in SD/CogVideoX VAEs
    subject_crop_p: float = 0.8  # share of crops centred on the window's subject (the rest uniformly random)
    subject_weight: float = 3.0  # alpha: per-pixel L1 weight 1 + alpha inside the dilated subject mask
    mask_dilate: int = 2  # px the true mask is dilated by, for the loss weight and the subject PSNR
    clips: int = WORLD.teacher.clips  # teacher clips rendered for training
    scale_clips: int = 8  # training clips the latent std (-> scaling_factor) is measured on
    probe_clips: int = 6  # held-out probe clips (full size) PSNR is measured on
    widths: tuple[int, ...] = WIDTHS
    threads: int = 1  # one intra-op thread: tiny convs on shared cores run fastest single-threaded


def vae_config(widths: tuple[int, ...]) -> dict:
    """The preset's config at `widths` (4 blocks: the real 8x spatial compression); groups divide every width."""
    return {**TINY_VAE_CONFIG, "block_out_channels": list(widths), "norm_num_groups": math.gcd(*widths, 4)}


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> fp32 [3, F, H, W] in [-1, 1] (as encoders._pixels, without the batch axis)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of uint8-range images [..., H, W, 3] (peak 255); inf when identical. With a bool
    `mask` [..., H, W] only the pixels inside it count (all three channels); nan when it is empty."""
    err = (reference.astype(np.float64) - test.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return math.nan
        err = err[mask]  # [P, 3]: the masked pixels
    mse = float(np.mean(err))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def dilate(masks: np.ndarray, px: int) -> np.ndarray:
    """bool [..., H, W] grown by `px` pixels (square structuring element) in each frame."""
    if px <= 0:
        return masks.astype(bool)
    shape = masks.shape
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).reshape(-1, 1, *shape[-2:])
    return (torch.nn.functional.max_pool2d(m, 2 * px + 1, stride=1, padding=px) > 0).reshape(shape).numpy()


@dataclass(frozen=True)
class Clips:
    frames: np.ndarray  # uint8 [N, F, H, W, 3]
    masks: np.ndarray  # bool [N, F, H, W]: the subject's true mask


def render_part(part: Part, count: int) -> Clips:
    """The first `count` clips of `part` with their true masks, rendered in memory."""
    rendered = [render(part, i) for i in range(count)]
    return Clips(np.stack([r.frames for r in rendered]), np.stack([r.masks for r in rendered]).astype(bool))


def _subject_origin(window: np.ndarray, size: tuple[int, int], gen: torch.Generator) -> tuple[int, int] | None:
    """Top-left (y, x) of a crop of `size` centred on the subject of mask window bool [f, H, W],
    jittered by up to a quarter crop each way and kept inside the frame; None if the window is empty."""
    ys, xs = np.nonzero(window.any(0))
    if len(ys) == 0:
        return None
    (h, w), (H, W) = size, window.shape[1:]
    jy, jx = (torch.rand(2, generator=gen) - 0.5) * 0.5 * torch.tensor([h, w])  # +-h/4, +-w/4
    y = int(round((ys.min() + ys.max()) / 2 - h / 2 + float(jy)))  # box centre: a limb-heavy centroid would skew
    x = int(round((xs.min() + xs.max()) / 2 - w / 2 + float(jx)))
    return min(max(y, 0), H - h), min(max(x, 0), W - w)


def random_crops(clips: Clips, cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 pixels [B, 3, f, h, w], bool subject masks [B, 1, f, h, w] dilated by cfg.mask_dilate):
    per sample a clip and start frame drawn from `gen`, and a window centred on the window's subject
    with probability cfg.subject_crop_p (else, or if the window has no subject, uniformly random)."""
    n, f, h, w, _ = clips.frames.shape
    size = (cfg.crop_height, cfg.crop_width)
    pixels, masks = [], []
    for _ in range(cfg.batch):
        i = int(torch.randint(n, (), generator=gen))
        t = int(torch.randint(f - cfg.crop_frames + 1, (), generator=gen))
        window = clips.masks[i, t : t + cfg.crop_frames]
        # p == 0 draws nothing extra: the generator stream, hence the crops, are exactly v1's
        centred = cfg.subject_crop_p > 0 and float(torch.rand((), generator=gen)) < cfg.subject_crop_p
        origin = _subject_origin(window, size, gen) if centred else None
        if origin is None:
            origin = (int(torch.randint(h - size[0] + 1, (), generator=gen)), int(torch.randint(w - size[1] + 1, (), generator=gen)))
        y, x = origin
        pixels.append(to_pixels(clips.frames[i, t : t + cfg.crop_frames, y : y + size[0], x : x + size[1]]))
        # dilate on the full frame, then crop: a subject just outside the crop still weights its edge
        masks.append(torch.from_numpy(dilate(window, cfg.mask_dilate)[:, y : y + size[0], x : x + size[1]])[None])
    return torch.stack(pixels), torch.stack(masks)


def loss_terms(
    vae: AutoencoderKLCogVideoX, x: torch.Tensor, kl_weight: float, mask: torch.Tensor | None = None, subject_weight: float = 0.0
) -> tuple[torch.Tensor, float, float]:
    """(total loss, weighted L1, KL per pixel value) of one batch [B, 3, F, H, W]: encode, sample,
    decode. Pixel weights 1 + subject_weight * mask (mask bool [B, 1, F, H, W]) normalised by their
    sum, so the L1 is the plain mean when there is no mask or the weight is 0."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    err = (recon - x).abs()
    if mask is None or subject_weight == 0.0:
        l1 = err.mean()
    else:
        weight = (1.0 + subject_weight * mask.float()).expand_as(err)
        l1 = (weight * err).sum() / weight.sum()
    kl = posterior.kl().mean() / x[0].numel()  # kl() sums over the latent's C, T, H, W
    return l1 + kl_weight * kl, l1.item(), kl.item()


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(vae: AutoencoderKLCogVideoX, clips: Clips, cfg: TrainConfig, log_every: int = 50) -> list[float]:
    """Train `vae` in place; returns the (subject-weighted) L1 loss of every step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    vae.train()
    losses = []
    start = time.monotonic()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, mask = random_crops(clips, cfg, gen)
        loss, l1, kl = loss_terms(vae, x, cfg.kl_weight, mask, cfg.subject_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(l1)
        if step % log_every == 0 or step == cfg.steps - 1:
            log.info("step %d/%d  l1 %.4f  kl %.3f  lr %.2e  %.0fs", step, cfg.steps, l1, kl, lr_at(step, cfg), time.monotonic() - start)
    vae.eval()
    return losses


@torch.no_grad()
def latent_std(vae: AutoencoderKLCogVideoX, clips: np.ndarray, seed: int) -> float:
    """Std of posterior samples over whole clips: scaling_factor = 1 / this, as real VAEs set it."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for clip in clips:
        dist = vae.encode(to_pixels(clip)[None]).latent_dist
        samples.append((dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)).flatten())
    return float(torch.cat(samples).std())


@torch.no_grad()
def reconstruct(folder: str | Path, frames: np.ndarray) -> np.ndarray:
    """uint8 [N, F, H, W, 3]: full clips encoded (posterior mean) and decoded through `folder` loaded
    as extraction loads it (load_encoders), rounded to uint8 as a viewer sees them."""
    enc = load_encoders(str(folder), "float32", "cpu")
    out = []
    for clip in frames:
        z = enc.vae.encode(to_pixels(clip)[None]).latent_dist.mode()
        recon = enc.vae.decode(z).sample[0].clamp(-1, 1)
        out.append(((recon.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy())
    return np.stack(out)


def probe_psnr(folder: str | Path, clips: Clips, mask_dilate: int = TrainConfig.mask_dilate) -> dict[str, float]:
    """Mean PSNR (dB) over clips of `folder`'s reconstructions: "whole" frames and "subject", inside
    the true masks dilated by `mask_dilate` px (per clip, then averaged)."""
    recon = reconstruct(folder, clips.frames)
    masks = dilate(clips.masks, mask_dilate)
    return {
        "whole": float(np.mean([psnr(c, r) for c, r in zip(clips.frames, recon)])),
        "subject": float(np.mean([psnr(c, r, m) for c, r, m in zip(clips.frames, recon, masks)])),
    }


def write_folder(out: Path, vae: AutoencoderKLCogVideoX, preset: Path) -> None:
    """vae/ from `vae`; text_encoder/ and tokenizer/ copied from the tiny preset folder `preset`."""
    if out.exists():
        for sub in ("vae", "text_encoder", "tokenizer"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    for sub in ("text_encoder", "tokenizer"):
        shutil.copytree(preset / sub, out / sub)


def run(out: Path, cfg: TrainConfig, command: str = "") -> dict:
    """Render, train, set scaling_factor, write the folder, measure PSNR; returns (and writes) encoders.json."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.monotonic()
    clips = render_part(WORLD.teacher, cfg.clips)
    log.info("rendered %d teacher clips %s in %.0fs", len(clips.frames), clips.frames.shape[1:], time.monotonic() - t0)
    vae = AutoencoderKLCogVideoX.from_config(vae_config(cfg.widths))
    t1 = time.monotonic()
    losses = train(vae, clips, cfg)
    train_s = time.monotonic() - t1
    std = latent_std(vae, clips.frames[: cfg.scale_clips], cfg.seed)
    vae.register_to_config(scaling_factor=1.0 / std)
    with tempfile.TemporaryDirectory() as tmp:
        preset = save_tiny_encoders(Path(tmp) / "preset", seed=0)  # the random tiny preset: baseline + T5/tokenizer
        write_folder(out, vae, preset)
        probe = render_part(WORLD.probe, cfg.probe_clips)
        trained_psnr, random_psnr = probe_psnr(out, probe, cfg.mask_dilate), probe_psnr(preset, probe, cfg.mask_dilate)
    # first/last 10 steps averaged: single crops are noisy
    record = {
        "command": command,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "config": {**asdict(cfg), "widths": list(cfg.widths)},
        "vae": {"block_out_channels": list(cfg.widths), "parameters": sum(p.numel() for p in vae.parameters())},
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "loss_start": float(np.mean(losses[:10])),
        "loss_end": float(np.mean(losses[-10:])),
        "latent_std": std,
        "scaling_factor": 1.0 / std,
        "psnr_db": {
            "probe": f"{WORLD.probe.name} part (seed {WORLD.probe.seed}), first {cfg.probe_clips} clips, "
            f"full {WORLD.frames}x{WORLD.height}x{WORLD.width}, posterior mean, via load_encoders",
            "trained": round(trained_psnr["whole"], 2),
            "random_tiny_preset": round(random_psnr["whole"], 2),
        },
        "subject_psnr_db": {
            "probe": f"as psnr_db, only the pixels inside the true subject mask dilated by {cfg.mask_dilate} px",
            "trained": round(trained_psnr["subject"], 2),
            "random_tiny_preset": round(random_psnr["subject"], 2),
        },
    }
    (out / "encoders.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "wrote %s: PSNR whole %.2f / subject %.2f dB (random preset %.2f / %.2f dB)",
        out, trained_psnr["whole"], trained_psnr["subject"], random_psnr["whole"], random_psnr["subject"],
    )
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--clips", type=int, default=TrainConfig.clips, help="teacher clips to train on")
    p.add_argument("--probe-clips", type=int, default=TrainConfig.probe_clips)
    p.add_argument("--scale-clips", type=int, default=TrainConfig.scale_clips)
    p.add_argument("--subject-crop-p", type=float, default=TrainConfig.subject_crop_p, help="share of subject-centred crops (0: v1's uniform crops)")
    p.add_argument("--subject-weight", type=float, default=TrainConfig.subject_weight, help="L1 weight 1 + this inside the dilated mask (0: v1's plain L1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(
        steps=args.steps,
        seed=args.seed,
        clips=args.clips,
        probe_clips=args.probe_clips,
        scale_clips=min(args.scale_clips, args.clips),
        subject_crop_p=args.subject_crop_p,
        subject_weight=args.subject_weight,
    )
    argv_used = sys.argv[1:] if argv is None else argv
    run(args.out, cfg, "python -m miniature.train_vae " + shlex.join(argv_used))
    return 0


if __name__ == "__main__":
    sys.exit(main())
