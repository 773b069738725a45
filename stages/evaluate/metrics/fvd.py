"""Frechet video distance between two sets of videos, with a swappable feature backbone.

FVD = ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)) over backbone features of real
and generated videos (lower is better). Backbones (`build_fvd_backbone`):
- VideoMAE(-v2) through transformers' `VideoMAEModel`: a hub name ("MCG-NJU/videomae-base", read from
  the local HF cache: nothing is downloaded here) or a folder with config.json + weights; "tiny" is a
  tiny random-weight config for tests. Feature: the mean over tokens of the last hidden state [D].
  Input: frames resampled uniformly in time to its `num_frames`, resized to its `image_size`,
  normalised with the ImageNet mean/std of its image processor. VideoMAE-v2 weights load when they are
  in transformers' VideoMAE layout (converted); OpenGVLab's remote-code repositories are not loaded
  (no trust_remote_code).
- The StyleGAN-V I3D TorchScript file (i3d_torchscript.pt, the detector of the StyleGAN-V / DIGAN FVD
  protocol) when a path ending in .pt/.pth/.torchscript is given: `torch.jit.load`, called as
  `model(x, rescale=False, resize=False, return_features=True)` with x float [N, 3, T, 224, 224] in
  [-1, 1]; returns features [N, 400]. T defaults to 16 frames (the StyleGAN-V protocol).
Numbers from different backbones, frame counts or resolutions are not comparable: `fvd` returns the
protocol next to the value, and the report prints it.

No scipy in the project: the matrix square root's trace is computed from symmetric eigendecompositions
(tr sqrt(S1 S2) = tr sqrt(S1^(1/2) S2 S1^(1/2)), the latter symmetric PSD), in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript")


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix [D, D] (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); mu [D], sigma [D, D]."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _sqrt_psd(s1)
    middle = r1 @ s2 @ r1  # symmetric PSD with the same eigenvalues as S1 S2
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(w, 0, None)).sum())
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(value, 0.0)  # round-off can make the distance of identical sets a tiny negative


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, rows are samples) of features [N, D], N >= 2."""
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"FVD needs features [N >= 2, D], got {list(feats.shape)}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def _check_video(v: np.ndarray, i: int) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8 or len(v) == 0:
        raise ValueError(f"video {i} must be uint8 [F, H, W, 3], got {v.dtype} {list(v.shape)}")
    return v


def resample(video: np.ndarray, num_frames: int, size: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [T, 3, size, size] in [0, 1]: T frames picked uniformly in time (frames
    repeat when F < T), each resized (bilinear, antialiased) to size x size."""
    idx = np.linspace(0, len(video) - 1, num_frames).round().astype(int)
    x = torch.from_numpy(np.ascontiguousarray(video[idx])).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@dataclass
class FVDBackbone:
    """A feature extractor for FVD: `features(videos) -> float64 [N, D]`. Subclasses implement `_embed`."""

    name: str
    num_frames: int
    image_size: int
    device: torch.device
    batch_size: int = 8
    model: torch.nn.Module | None = field(default=None, repr=False)

    def _embed(self, clips: torch.Tensor) -> torch.Tensor:  # clips float [B, T, 3, S, S] in [0, 1] -> [B, D]
        raise NotImplementedError

    @torch.no_grad()
    def features(self, videos: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(videos), self.batch_size):
            batch = [resample(_check_video(v, start + i), self.num_frames, self.image_size) for i, v in enumerate(videos[start : start + self.batch_size])]
            out.append(self._embed(torch.stack(batch).to(self.device)).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0))

    def protocol(self) -> dict:
        return {"backbone": self.name, "frames": self.num_frames, "resolution": [self.image_size, self.image_size]}


class VideoMAEBackbone(FVDBackbone):
    """transformers' VideoMAEModel; the feature is the token mean of the last hidden state."""

    def _embed(self, clips: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=clips.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=clips.device).view(1, 1, 3, 1, 1)
        hidden = self.model(pixel_values=(clips - mean) / std).last_hidden_state  # [B, tokens, D]
        return hidden.float().mean(dim=1)


class I3DBackbone(FVDBackbone):
    """The StyleGAN-V I3D TorchScript detector: input [B, 3, T, 224, 224] in [-1, 1] -> features [B, 400]."""

    def _embed(self, clips: torch.Tensor) -> torch.Tensor:
        x = (clips * 2 - 1).permute(0, 2, 1, 3, 4).contiguous()  # [B, T, 3, S, S] -> [B, 3, T, S, S]
        return self.model(x, rescale=False, resize=False, return_features=True).float()


def tiny_videomae_config():
    """A tiny VideoMAE config (random weights) for tests: 4 frames of 32 x 32, 2 layers of width 32."""
    from transformers import VideoMAEConfig

    return VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def build_fvd_backbone(name_or_path: str, device: str | torch.device = "cpu", num_frames: int | None = None,
                       batch_size: int = 8, seed: int = 0) -> FVDBackbone:
    """Build an FVD backbone from "tiny", a VideoMAE hub name or folder, or an I3D TorchScript file.

    num_frames overrides the I3D frame count (default 16); VideoMAE always uses its config's num_frames
    (its position embeddings are sized for it). Errors are one-line ValueErrors naming the source.
    """
    device = torch.device(device)
    path = Path(str(name_or_path))
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        if not path.is_file():
            raise ValueError(f"FVD backbone: TorchScript file {path} not found")
        try:
            model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # a non-TorchScript file: say which, without a traceback
            raise ValueError(f"FVD backbone: {path} is not a loadable TorchScript file ({type(e).__name__}: {e})") from None
        return I3DBackbone(f"i3d-torchscript:{path.name}", num_frames or 16, 224, device, batch_size, model)
    from transformers import VideoMAEModel

    if name_or_path == "tiny":
        torch.manual_seed(seed)  # random weights, reproducible across calls
        model = VideoMAEModel(tiny_videomae_config())
    else:
        try:
            model = VideoMAEModel.from_pretrained(str(name_or_path), local_files_only=True)
        except Exception as e:
            raise ValueError(f"FVD backbone: cannot load VideoMAE from {name_or_path!r} (not a local folder or cached hub model: {type(e).__name__})") from None
    model = model.to(device).eval()
    cfg = model.config
    return VideoMAEBackbone(f"videomae:{name_or_path}", cfg.num_frames, cfg.image_size, device, batch_size, model)


def fvd(real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray], backbone: FVDBackbone) -> tuple[float, dict]:
    """FVD between real and generated videos (each uint8 [F, H, W, 3]) -> (value, protocol dict)."""
    if len(real_videos) < 2 or len(fake_videos) < 2:
        raise ValueError(f"FVD needs >= 2 videos per side, got {len(real_videos)} real and {len(fake_videos)} generated")
    real, fake = backbone.features(real_videos), backbone.features(fake_videos)
    value = frechet_distance(*feature_stats(real), *feature_stats(fake))
    protocol = backbone.protocol() | {
        "feature_dim": int(real.shape[1]),
        "num_real": len(real_videos),
        "num_generated": len(fake_videos),
        "frame_sampling": "uniform in time over each whole video",
    }
    if len(real_videos) < real.shape[1] or len(fake_videos) < fake.shape[1]:
        protocol["note"] = "fewer videos than feature dimensions: covariance is rank-deficient, FVD is biased high and only comparable at equal N"
    return value, protocol
