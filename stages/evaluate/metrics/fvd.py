"""Frechet video distance (lower is better) through the field's own detectors and protocols.

FVD = ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)) over detector features of real and
generated videos, with the 1/N covariance of StyleGAN-V's / cd-fvd's `FeatureStats`. Three protocols
(`build_fvd_backbone`), each feeding its detector exactly what the reference code feeds it:

- "cd-fvd/videomae" (`videomae:PATH`, or "tiny"): cd-fvd's VideoMAE-v2 `VisionTransformer` (ViT-g/14,
  the SSv2-finetuned `vit_g_hybrid_pt_1200e_ssv2_ft.pth`), feature `forward_features` [B, 1408]. Input:
  16 consecutive frames, uint8 -> float / 255, bilinear resize to 224 x 224 (align_corners=False, no
  antialias, no mean/std normalisation) - cd-fvd's `preprocess_videomae`, re-done here because its
  module imports torchvision.
- "cd-fvd/i3d" (`i3d:PATH`): cd-fvd's `InceptionI3d(400)` with the `i3d_pretrained_400.pt` state dict,
  feature = its logits [B, 400]; input from cd-fvd's own `preprocess_i3d` (bilinear resize to 224, [-1, 1]).
- "stylegan-v/i3d" (`stylegan-v:PATH`): the StyleGAN-V TorchScript `i3d_torchscript.pt`, called as
  StyleGAN-V's compute_fvd does: uint8 [B, 3, 16, H, W], `rescale=True, resize=True, return_features=True`
  (the detector rescales and resizes itself) -> [B, 400].
A bare existing path is recognised from its content (a TorchScript archive, or a state dict's keys).
Frames: the first 16 consecutive frames of each video (StyleGAN-V's generator side and cd-fvd's
`preprocess` take frames 0..15; their random offset on the real side is not reproduced, for
determinism). Videos shorter than 16 frames make FVD not available. Numbers of different protocols,
or of different N, are not comparable: the result carries its protocol.

Small N: FD's plug-in estimate is biased by O(D/N) and its spread at small N swamps real differences
(two draws of one distribution at N=2 gave FD 3534 +- 206 while a real shift of 111 hid in it), so
below `MIN_VIDEOS` videos a side the value is None with the reason; above it a bootstrap interval over
videos comes with it (`bootstrap_interval`: centred on the point value, for the FD expected at that N). The model weights are never downloaded here: pass their files.
No scipy: tr sqrt(S_r S_f) is the nuclear norm of L_r^T L_f for any factors S = L L^T (see `_factor`).
"""

from __future__ import annotations

import argparse
import logging
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

NUM_FRAMES = 16  # both reference protocols: 16 consecutive frames
# Fewest videos a side for a reported FVD. Not tied to the feature dimension (400 or 1408: the field's
# N=2048 is out of reach here, and FD at equal N is what gets compared); it is where the mean's standard
# error has fallen to < 1/5 of the feature spread (1/sqrt(32)) and where a percentile bootstrap over
# videos stops being degenerate (at N=8 a resample holds ~5 distinct videos, at 32 ~20).
MIN_VIDEOS = 32
BOOTSTRAP_DRAWS = 200
CDFVD_INSTALL = "pip install --no-deps cd-fvd==0.1.1"
# cd-fvd's load_videomae_model: vit_giant_patch14_224(num_classes=174, all_frames=16, tubelet_size=2,
# use_mean_pooling=True); `VIT_G` is that factory's architecture.
VIT_G = {"patch_size": 14, "embed_dim": 1408, "depth": 40, "num_heads": 16, "mlp_ratio": 48 / 11}
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}  # random weights, tests
TINY_IMAGE_SIZE = 32


# ---------------------------------------------------------------- Frechet distance (1/N covariance)

def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix [D, D] (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _distance(mu1: np.ndarray, l1: np.ndarray, mu2: np.ndarray, l2: np.ndarray) -> float:
    """FD from means [D] and covariance factors L [D, r] (S = L L^T): tr S = ||L||_F^2 and
    tr sqrt(S1 S2) = sum of singular values of L1^T L2 [r1, r2] (the eigenvalues of S1 S2 are those of
    L1^T L2 L2^T L1, a Gram matrix), which is what scipy's sqrtm(S1 S2) trace computes, without it."""
    tr_covmean = float(np.linalg.svd(l1.T @ l2, compute_uv=False).sum())
    value = float(((mu1 - mu2) ** 2).sum() + (l1**2).sum() + (l2**2).sum() - 2 * tr_covmean)
    return max(value, 0.0)  # round-off can make the distance of identical sets a tiny negative


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); mu [D], sigma [D, D]."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    return _distance(mu1, _sqrt_psd(s1), mu2, _sqrt_psd(s2))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and the 1/N covariance [D, D] (FeatureStats' get_mean_cov) of features [N, D], N >= 2."""
    feats = _check_feats(feats)
    mu = feats.mean(0)
    xc = feats - mu
    return mu, xc.T @ xc / len(feats)


def _check_feats(feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"FVD needs features [N >= 2, D], got {list(feats.shape)}")
    return feats


def _factor(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and a factor L of the 1/N covariance (L L^T = S): the centred features / sqrt(N), [D, N],
    when N <= D (cheap, exact, and what keeps the bootstrap fast), else the symmetric root [D, D]."""
    n, d = feats.shape
    mu = feats.mean(0)
    xc = feats - mu
    return mu, (xc.T / np.sqrt(n) if n <= d else _sqrt_psd(xc.T @ xc / n))


def fd_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FD between feature sets [N_r, D] and [N_f, D] (1/N covariances)."""
    real, fake = _check_feats(real), _check_feats(fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    return _distance(*_factor(real), *_factor(fake))


def bootstrap_interval(real: np.ndarray, fake: np.ndarray, draws: int = BOOTSTRAP_DRAWS, level: float = 0.95,
                       seed: int = 0) -> dict:
    """The FD's sampling spread over videos: each draw resamples the feature rows (videos) of each side
    with replacement, independently, and recomputes the FD.

    A resample's duplicate videos lower its effective N, so every draw carries more of FD's small-N bias
    than the point value: the raw percentile interval of the draws sits above the point value (on
    Gaussian features, D=400, N=32..128, it excluded it in 30/30 cases). So the interval reported is the
    draws' `level` percentile interval shifted to put their median on the point value: a range for the
    FD expected at this N (what equal-N comparisons need; it covered that in 93-100% of 30 repeats),
    not for the infinite-N FD. Returns {"low", "high", "draws_low", "draws_median", "draws_high"}."""
    rng = np.random.default_rng(seed)
    values = [fd_from_features(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
              for _ in range(draws)]
    q_low, q_mid, q_high = (float(q) for q in np.percentile(values, [50 * (1 - level), 50, 50 * (1 + level)]))
    point = fd_from_features(real, fake)
    return {"low": max(point + q_low - q_mid, 0.0), "high": point + q_high - q_mid,
            "draws_low": q_low, "draws_median": q_mid, "draws_high": q_high}


# ---------------------------------------------------------------- detectors and their protocols

def _check_video(v: np.ndarray, i: int) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8 or len(v) == 0:
        raise ValueError(f"video {i} must be uint8 [F, H, W, 3], got {v.dtype} {list(v.shape)}")
    return v


def consecutive_frames(video: np.ndarray, num_frames: int = NUM_FRAMES, i: int = 0) -> np.ndarray:
    """uint8 [F, H, W, 3] -> its first num_frames consecutive frames [T, H, W, 3] (frames 0..T-1)."""
    video = _check_video(video, i)
    if len(video) < num_frames:
        raise ValueError(f"video {i} has {len(video)} frames; the FVD protocol takes {num_frames} consecutive frames")
    return video[:num_frames]


def _same_shape_batches(clips: list[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive clips of one shape stacked into uint8 [B, T, H, W, 3] (the references batch arrays)."""
    start = 0
    while start < len(clips):
        end = start + 1
        while end < len(clips) and end - start < batch_size and clips[end].shape == clips[start].shape:
            end += 1
        yield np.stack(clips[start:end])
        start = end


@dataclass
class FVDBackbone:
    """A detector and its protocol: `features(videos) -> float64 [N, D]`. Subclasses implement `_embed`."""

    name: str  # what was loaded: "videomae:tiny", "i3d:i3d_pretrained_400.pt", ...
    protocol_name: str  # "cd-fvd/videomae" | "cd-fvd/i3d" | "stylegan-v/i3d"
    model: torch.nn.Module = field(repr=False)
    device: torch.device
    batch_size: int = 8
    num_frames: int = NUM_FRAMES
    preprocessing: str = ""

    def _embed(self, clips: np.ndarray) -> torch.Tensor:  # uint8 [B, T, H, W, 3] -> [B, D]
        raise NotImplementedError

    @torch.inference_mode()
    def features(self, videos: Sequence[np.ndarray]) -> np.ndarray:
        clips = [consecutive_frames(v, self.num_frames, i) for i, v in enumerate(videos)]
        # float32 as FeatureStats.append stores them, then float64 for the statistics
        out = [self._embed(batch).float().cpu().numpy().astype(np.float64) for batch in _same_shape_batches(clips, self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0))

    def protocol(self) -> dict:
        return {"protocol": self.protocol_name, "backbone": self.name, "frames": self.num_frames,
                "frame_sampling": f"first {self.num_frames} consecutive frames (0..{self.num_frames - 1})",
                "preprocessing": self.preprocessing, "covariance": "1/N (FeatureStats.get_mean_cov)"}


@dataclass
class CdFvdVideoMAE(FVDBackbone):
    """cd-fvd's VideoMAE-v2 ViT; image_size is 224 for the protocol (32 only for the tiny test model)."""

    image_size: int = 224

    def _embed(self, clips: np.ndarray) -> torch.Tensor:
        # cd-fvd's preprocess_videomae: per video [T, H, W, C] -> [C, T, H, W] / 255, then a 4-d bilinear
        # resize (C as the batch, T as channels) to image_size -> [B, 3, T, S, S]
        x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).to(torch.float32) / 255
        x = torch.stack([F.interpolate(v, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False) for v in x])
        return self.model.forward_features(x.to(self.device))


@dataclass
class CdFvdI3D(FVDBackbone):
    """cd-fvd's InceptionI3d; its logits [B, 400] are the feature (cd-fvd's get_i3d_logits)."""

    def _embed(self, clips: np.ndarray) -> torch.Tensor:
        from cdfvd.third_party.i3d.utils import preprocess_i3d

        return self.model(preprocess_i3d(clips).to(self.device))  # [B, 3, T, 224, 224] in [-1, 1]


@dataclass
class StyleGANVI3D(FVDBackbone):
    """The StyleGAN-V I3D TorchScript, given uint8 [B, 3, T, H, W] and left to rescale and resize itself."""

    def _embed(self, clips: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()  # [B, T, H, W, 3] -> [B, 3, T, H, W]
        return self.model(x.to(self.device), rescale=True, resize=True, return_features=True)


# ---------------------------------------------------------------- loading

def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _cdfvd(module: str):
    """Import a cd-fvd module, or say how to install it (its metadata pulls torchvision: --no-deps)."""
    import importlib

    try:
        return importlib.import_module(f"cdfvd.{module}")
    except ImportError as e:
        raise ValueError(f"FVD backbone needs cd-fvd ({CDFVD_INSTALL}): {_one_line(e)}") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, weights only: a .safetensors file, or a torch.save file holding the state
    dict bare or under 'model' / 'module' (VideoMAE-v2's layout; an argparse.Namespace of training args
    beside it is allowed). Any failure is a one-line ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"FVD backbone: checkpoint {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"FVD backbone: cannot load {path} as a weights-only checkpoint ({_one_line(e)})") from None
    for key in ("model", "module"):
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"FVD backbone: {path} holds no state dict (tensors, bare or under 'model'/'module')")
    return obj


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> torch.nn.Module:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"FVD backbone: {path} does not fit {what} ({_one_line(e)})") from None
    return model


def _check_vit_shapes(state: dict[str, torch.Tensor], arch: dict, path: Path, what: str) -> None:
    """Refuse a ViT checkpoint of another size before building the model (building ViT-g costs seconds)."""
    proj = state.get("patch_embed.proj.weight")  # [D, 3, tubelet, patch, patch]
    fc1 = state.get("blocks.0.mlp.fc1.weight")  # [hidden, D]
    if proj is None or fc1 is None or proj.dim() != 5:
        return  # load_state_dict names what is missing
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    found = {"patch_size": proj.shape[-1], "embed_dim": proj.shape[0], "depth": depth, "mlp_hidden": fc1.shape[0]}
    wanted = {"patch_size": arch["patch_size"], "embed_dim": arch["embed_dim"], "depth": arch["depth"],
              "mlp_hidden": int(arch["embed_dim"] * arch["mlp_ratio"])}
    if found != wanted:
        raise ValueError(f"FVD backbone: {path} does not fit {what} (checkpoint {found}, model {wanted})")


def videomae_model(arch: dict | None = None, image_size: int = 224) -> torch.nn.Module:
    """cd-fvd's VisionTransformer as load_videomae_model builds it (ViT-g by default), random weights."""
    vit = _cdfvd("third_party.VideoMAEv2.videomaev2_finetune")
    arch = dict(VIT_G if arch is None else arch)
    return vit.VisionTransformer(img_size=image_size, num_classes=174, all_frames=NUM_FRAMES, tubelet_size=2,
                                 use_mean_pooling=True, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **arch)


def i3d_model() -> torch.nn.Module:
    """cd-fvd's InceptionI3d(400, in_channels=3) as load_i3d_model builds it, random weights."""
    return _cdfvd("third_party.i3d.pytorch_i3d").InceptionI3d(400, in_channels=3)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a code/ folder; a torch.save state dict has none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/")[1:2] == ["code"] for n in z.namelist())


def _kind_of(path: Path) -> str:
    if _is_torchscript(path):
        return "stylegan-v"
    keys = load_state_dict(path).keys()
    if any(k.startswith("Conv3d_1a_7x7.") for k in keys):
        return "i3d"
    if "patch_embed.proj.weight" in keys:
        return "videomae"
    raise ValueError(f"FVD backbone: {path} is neither an I3D nor a VideoMAE-v2 state dict nor a TorchScript file")


def build_fvd_backbone(name_or_path: str, device: str | torch.device = "cpu", batch_size: int = 8, seed: int = 0,
                       videomae_arch: dict | None = None) -> FVDBackbone:
    """An FVD detector: "tiny" (a random-weight small cd-fvd ViT at 32 x 32, tests and demos only),
    "videomae:PATH" (cd-fvd's ViT-g checkpoint; videomae_arch overrides the architecture),
    "i3d:PATH" (cd-fvd's I3D state dict), "stylegan-v:PATH" (StyleGAN-V's i3d_torchscript.pt), or a bare
    PATH recognised from its content. Errors are one-line ValueErrors naming the file."""
    device = torch.device(device)
    source = str(name_or_path)
    if source == "tiny":
        torch.manual_seed(seed)  # random weights, reproducible across calls
        model = videomae_model(TINY_VIT, TINY_IMAGE_SIZE).to(device).eval()
        return CdFvdVideoMAE("videomae:tiny", "cd-fvd/videomae", model, device, batch_size,
                             preprocessing=f"/255, bilinear resize to {TINY_IMAGE_SIZE}x{TINY_IMAGE_SIZE} (tiny random-weight ViT: not the real protocol's 224)",
                             image_size=TINY_IMAGE_SIZE)
    kind, _, rest = source.partition(":")
    if kind in ("i3d", "videomae", "stylegan-v") and rest:
        path = Path(rest)
    else:
        kind, path = "", Path(source)
    if not path.is_file():
        raise ValueError(f"FVD backbone: {path} not found (give 'tiny' or a checkpoint file: [i3d:|videomae:|stylegan-v:]PATH)")
    kind = kind or _kind_of(path)
    log.info("FVD backbone %s from %s", kind, path)
    if kind == "stylegan-v":
        try:
            model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:
            raise ValueError(f"FVD backbone: {path} is not a loadable TorchScript file ({_one_line(e)})") from None
        return StyleGANVI3D(f"stylegan-v:{path.name}", "stylegan-v/i3d", model, device, batch_size,
                            preprocessing="uint8 [B, 3, T, H, W] to the detector with rescale=True, resize=True (it resizes to 224)")
    state = load_state_dict(path)
    if kind == "i3d":
        model = _load_into(i3d_model(), state, path, "cd-fvd's InceptionI3d(400)")
        return CdFvdI3D(f"i3d:{path.name}", "cd-fvd/i3d", model.to(device).eval(), device, batch_size,
                        preprocessing="cd-fvd preprocess_i3d: bilinear resize to 224x224, scaled to [-1, 1]")
    what = "cd-fvd's VideoMAE-v2 ViT-g/14" if videomae_arch is None else f"cd-fvd's VisionTransformer {videomae_arch}"
    _check_vit_shapes(state, VIT_G if videomae_arch is None else videomae_arch, path, what)
    with torch.device(device):  # ViT-g's random init (1B parameters) is slow on CPU: do it where it will run
        model = _load_into(videomae_model(videomae_arch), state, path, what)
    name = f"videomae:{path.name}" + ("" if videomae_arch is None else " (custom architecture)")
    return CdFvdVideoMAE(name, "cd-fvd/videomae", model.to(device).eval(), device, batch_size,
                         preprocessing="/255, bilinear resize to 224x224 (cd-fvd preprocess_videomae, no mean/std)")


# ---------------------------------------------------------------- the metric

@dataclass(frozen=True)
class FVDResult:
    """FVD and its uncertainty. value is None when not available (too few or too short videos; the
    reason is protocol["skipped"]); low/high bound the bootstrap interval of `bootstrap_interval` (None when
    skipped or with bootstrap=0). protocol: the detector, frames, preprocessing, covariance, N and interval.
    Unpacks as `value, protocol = fvd(...)` (the former return)."""

    value: float | None
    low: float | None
    high: float | None
    n_real: int
    n_fake: int
    protocol: dict

    def __iter__(self) -> Iterator:
        return iter((self.value, self.protocol))


def fvd(real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray], backbone: FVDBackbone, *,
        min_videos: int = MIN_VIDEOS, bootstrap: int = BOOTSTRAP_DRAWS, level: float = 0.95, seed: int = 0) -> FVDResult:
    """FVD between real and generated videos (each uint8 [F, H, W, 3], F >= 16) under the backbone's protocol.

    Fewer than min_videos (>= 2) a side, or a video shorter than the protocol's frames: value None and
    protocol["skipped"] says why (nothing is computed). Otherwise the point FD of all videos plus a
    `bootstrap`-draw interval at `level` (`bootstrap_interval`; seeded; bootstrap=0 skips it)."""
    n_real, n_fake = len(real_videos), len(fake_videos)
    protocol = backbone.protocol() | {"num_real": n_real, "num_generated": n_fake, "min_videos": max(min_videos, 2)}
    short = min((len(v) for v in [*real_videos, *fake_videos]), default=0)
    if min(n_real, n_fake) < max(min_videos, 2):
        reason = f"n/a (N={n_real} real, {n_fake} generated; FVD needs >= {max(min_videos, 2)} videos a side)"
    elif short < backbone.num_frames:
        reason = f"n/a (a video has {short} frames; the {backbone.protocol_name} protocol takes {backbone.num_frames} consecutive frames)"
    else:
        reason = ""
    if reason:
        return FVDResult(None, None, None, n_real, n_fake, protocol | {"skipped": reason})
    real, fake = backbone.features(real_videos), backbone.features(fake_videos)
    value = fd_from_features(real, fake)
    protocol["feature_dim"] = int(real.shape[1])
    low = high = None
    if bootstrap > 0:
        interval = bootstrap_interval(real, fake, bootstrap, level, seed)
        low, high = interval["low"], interval["high"]
        protocol["interval"] = interval | {"level": level, "draws": bootstrap, "seed": seed,
                                           "method": "bootstrap over videos (each side resampled with replacement), "
                                                     "percentile interval shifted so the draws' median is the point value"}
    return FVDResult(value, low, high, n_real, n_fake, protocol)


def fvd_cell(result: FVDResult) -> dict:
    """A report cell: {"value", "low", "high"}, or {"value": None, "skipped": "n/a (N=..)"} (the full reason is in the protocol)."""
    if result.value is not None:
        return {"value": result.value, "low": result.low, "high": result.high}
    short = result.protocol["skipped"].startswith("n/a (N=")
    return {"value": None, "skipped": f"n/a (N={min(result.n_real, result.n_fake)})" if short else result.protocol["skipped"]}
