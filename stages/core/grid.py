"""The student's token grid, and the map of teacher features onto it (docs/method.md).

The grid comes from the clip size and the student's VAE compression and patch size: for
49x480x720 with 4x temporal / 8x spatial compression and patch 2, 13 latent frames of 30x45.
Teacher maps are indexed by pixel frame; latent frame i covers pixel frames 4i-3..4i (frame 0
alone, as CogVideoX's causal VAE groups them), and takes frame 4i (`stride`) or the group mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TokenGrid:
    frames: int  # token frames: latent frames T, or with a temporal patch ceil(T / patch_t)
    height: int  # token rows h
    width: int  # token columns w
    patch_t: int = 1  # latent frames per token frame (CogVideoX 1.5: 2, after padding the first frame in front)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


def latent_shape(num_frames: int, height: int, width: int, vae_temporal: int, vae_spatial: int) -> tuple[int, int, int]:
    """(T, H / s, W / s) latent grid of a num_frames x height x width clip: the causal video VAEs (CogVideoX, Wan,
    LTX) keep frame 0 on its own and compress each later group of `vae_temporal` frames into one latent frame."""
    return (num_frames - 1) // vae_temporal + 1, height // vae_spatial, width // vae_spatial


def pixel_shape(latent: tuple[int, int, int], vae_temporal: int, vae_spatial: int) -> tuple[int, int, int]:
    """(frames, height, width) of the clips whose latent grid is `latent` (T, H / s, W / s): latent_shape's inverse."""
    t, h, w = latent
    return (t - 1) * vae_temporal + 1, h * vae_spatial, w * vae_spatial


def token_grid(num_frames: int, height: int, width: int, vae_temporal: int, vae_spatial: int, patch_size: int, patch_size_t: int | None = None) -> TokenGrid:
    """The student's (T, h, w) token grid for clips of num_frames x height x width."""
    if (num_frames - 1) % vae_temporal:
        raise ValueError(f"num_frames={num_frames} must be {vae_temporal}k+1 for a VAE with {vae_temporal}x temporal compression")
    step = vae_spatial * patch_size
    if height % step or width % step:
        raise ValueError(f"{height}x{width} is not a multiple of {step} (VAE {vae_spatial}x times patch {patch_size})")
    frames = latent_shape(num_frames, height, width, vae_temporal, vae_spatial)[0]
    if patch_size_t and patch_size_t > 1:
        frames = -(-frames // patch_size_t)  # CogVideoX 1.5 pads latent frames up to a multiple of p_t
        return TokenGrid(frames, height // step, width // step, patch_size_t)
    return TokenGrid(frames, height // step, width // step)


def to_token_frames(x: torch.Tensor, patch_t: int, mode: Literal["stride", "mean"] = "stride") -> torch.Tensor:
    """[T, ...] per latent frame -> [ceil(T / p_t), ...] per token frame, as the CogVideoX 1.5 student sees them:
    the first latent frame repeated in front up to a multiple of p_t (the 1.5 pipeline's padding), then each
    group of p_t latent frames gives its last (`stride`) or its mean."""
    if patch_t <= 1:
        return x
    pad = (-x.shape[0]) % patch_t
    x = torch.cat([x[:1].expand(pad, *x.shape[1:]), x]) if pad else x
    groups = x.reshape(x.shape[0] // patch_t, patch_t, *x.shape[1:])
    if mode == "stride":
        return groups[:, -1]
    return groups.float().mean(1).to(x.dtype)


def latent_frame_groups(num_frames: int, vae_temporal: int) -> list[list[int]]:
    """Pixel frames covered by each latent frame: [[0], [1..4], [5..8], ...]."""
    groups = [[0]]
    for start in range(1, num_frames, vae_temporal):
        groups.append(list(range(start, min(start + vae_temporal, num_frames))))
    return groups


def to_latent_frames(x: torch.Tensor, vae_temporal: int, mode: Literal["stride", "mean"] = "stride") -> torch.Tensor:
    """[F, ...] per pixel frame -> [T, ...] per latent frame (frame 4i, or the mean of its group)."""
    groups = latent_frame_groups(x.shape[0], vae_temporal)
    if mode == "stride":
        return x[[g[-1] for g in groups]]
    if mode == "mean":
        return torch.stack([x[g].float().mean(0) for g in groups]).to(x.dtype)
    raise ValueError(f"unknown temporal mode '{mode}'; valid: stride, mean")


def to_token_grid(
    features: torch.Tensor,
    grid: TokenGrid,
    vae_temporal: int,
    mode: Literal["stride", "mean"] = "stride",
    resample: Literal["antialias", "bilinear"] = "antialias",
) -> torch.Tensor:
    """Teacher maps [F, C, H', W'] per pixel frame -> [T, h, w, C] on the student's token grid.

    resample "antialias": a triangle filter whose support widens with the downscale factor (PIL's
    bilinear resize; torch's antialias=True), so every teacher cell under a token contributes, as
    the token's pixels all do in the student's patch. SAM2's 64x64 maps at 1024 -> 30x45 tokens is
    a ~2x downscale where plain bilinear reads 4 cells per token and aliases. On upscaling both
    are the same. "bilinear": the plain 4-tap interpolation, as columns extracted before
    teacher.resample existed hold.
    """
    x = to_token_frames(to_latent_frames(features, vae_temporal, mode), grid.patch_t, mode)
    if x.shape[0] != grid.frames:
        raise ValueError(f"{features.shape[0]} pixel frames give {x.shape[0]} latent frames, the grid has {grid.frames}")
    if resample not in ("antialias", "bilinear"):
        raise ValueError(f"unknown resample '{resample}'; valid: antialias, bilinear")
    x = F.interpolate(x.float(), size=(grid.height, grid.width), mode="bilinear", align_corners=False, antialias=resample == "antialias")
    return x.permute(0, 2, 3, 1).contiguous()


def mask_to_token_grid(masks: torch.Tensor, grid: TokenGrid, vae_temporal: int) -> torch.Tensor:
    """Bool masks [F, H, W] -> uint8 coverage [T, h, w] (0..255 = share of the token's area inside the mask)."""
    x = to_token_frames(to_latent_frames(masks.float(), vae_temporal, "stride"), grid.patch_t, "stride").unsqueeze(1)
    cover = F.adaptive_avg_pool2d(x, (grid.height, grid.width)).squeeze(1)
    return (cover * 255).round().to(torch.uint8)
