"""The `image_teacher` column: the paper's image-only baseline teacher, DINOv2 patch features per frame.

Per clip (T latent frames, h x w tokens, C = the model's hidden size, K = k*k):
    fwd        int8    [T, h, w, C]     per-frame patch features on the student's token grid, quantised
    fwd_scale  float32 [T, h, w, 1]     its per-token scale (stages/core/quantize.py; the stream dequantises)
    lgf        float16 [T', h, w, K]    LGF target of the single stack (T' = sum_o (T - o))
The one stack is named `fwd` so the losses read it as they read the SAM2 column's forward pass, and
attrs {"directions": 1} says there is no `bwd`. Its LGF is `lgf_probs` of that stack: on a single
stack every fusion mode coincides (`fuse(x, x, ...)` == `lgf_probs(x)`: gram averages G with itself,
probs P with itself, feature x with itself), so the attrs record fusion "single" and the fusion is
not keyed. No mask: the image teacher does not segment (stage two refuses the mask loss on it).

Frames go through DINOv2 whole (resized, not cropped: short side `image_teacher.image_size`, both
sides multiples of the patch size) and its patch grid [H/14, W/14, C] is mapped onto the token grid
with the SAM2 teacher's mapping (stages/core/grid.py `to_token_grid`, teacher.temporal / teacher.resample).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stages.config.loader import to_dict
from stages.config.extract import ExtractConfig
from stages.extract.producer import ColumnSpec
from stages.core.quantize import QUANT_INT8, quantize
from stages.store import ArraySpec
from stages.store.schema import IMAGE_TEACHER, IMAGE_TEACHER_COLUMN
from stages.core.devices import check_compute_dtype, compute_dtype, resolve_device, resolve_dtype
from stages.core.grid import TokenGrid, latent_frame_groups, to_token_grid, token_grid
from stages.core.lgf import SINGLE_STACK, lgf_probs

log = logging.getLogger(__name__)

NAME = IMAGE_TEACHER_COLUMN
TINY = "tiny"
TINY_VERSION = 1  # bump when the tiny preset's architecture changes (it is keyed)
# ImageNet normalisation, as the DINOv2 image processor applies (BitImageProcessor image_mean / image_std)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# settings that change speed, not content: not the column key (allow_random_weights: a permission)
_NOT_KEYED = ("device", "image_batch", "allow_random_weights")

# The released DINOv2 backbones' architectures, so the spec (channels, depth) needs no download and
# random_weights runs build them offline. From the hub's config.json files (patch 14, 518 px, layerscale 1).
RELEASED = {
    "facebook/dinov2-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "facebook/dinov2-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "facebook/dinov2-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "facebook/dinov2-giant": {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "use_swiglu_ffn": True},
}
_TINY_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 224}


def dinov2_config(model: str, revision: str | None = None):
    """The Dinov2Config of `model` without its weights: tiny, a released id (built in), or a folder/hub config.json."""
    from transformers import Dinov2Config

    if model == TINY:
        return Dinov2Config(**_TINY_CONFIG)
    if model in RELEASED and not os.path.isdir(model):
        return Dinov2Config(image_size=518, patch_size=14, **RELEASED[model])
    try:
        config = Dinov2Config.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as exc:
        raise ValueError(f"image_teacher.model='{model}': no DINOv2 config.json found there ({exc.__class__.__name__}); "
                         f"name a folder written by save_pretrained, a hub id, or 'tiny'") from exc
    if config.model_type != "dinov2":
        raise ValueError(f"image_teacher.model='{model}' is a '{config.model_type}' model, not dinov2")
    return config


@dataclass(frozen=True)
class FrameGeometry:
    """The size DINOv2 sees: frames resized to height x width pixels, a patch grid of rows x cols."""

    height: int
    width: int
    patch: int

    @property
    def patches(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch


def frame_geometry(cfg: ExtractConfig, patch: int) -> FrameGeometry:
    """Short side image_size, long side the frame's aspect ratio rounded to the patch size (whole frame, no crop)."""
    size, video = cfg.image_teacher.image_size, cfg.video
    if size % patch:
        raise ValueError(f"image_teacher.image_size={size} must be a multiple of the DINOv2 patch size {patch}")
    short, long = sorted((video.height, video.width))
    other = max(patch, round(size * long / short / patch) * patch)
    height, width = (size, other) if video.height <= video.width else (other, size)
    return FrameGeometry(height, width, patch)


def student_grid(cfg: ExtractConfig) -> TokenGrid:
    s, v = cfg.student, cfg.video
    return token_grid(v.num_frames, v.height, v.width, s.vae_temporal, s.vae_spatial, s.patch_size, s.patch_size_t)


def image_teacher_spec(cfg: ExtractConfig) -> ColumnSpec:
    """Name, hashed producer config and schema of the image_teacher column, without loading DINOv2."""
    if cfg.video.buckets is not None:  # its frame size follows one video size (image_size x aspect): not bucketed yet
        raise ValueError("video.buckets: the image_teacher column takes one video size only; extract it from a store without buckets")
    it = cfg.image_teacher
    config = dinov2_config(it.model, it.revision)
    if it.layer is not None and it.layer > config.num_hidden_layers:
        raise ValueError(f"image_teacher.layer={it.layer} but {it.model} has {config.num_hidden_layers} blocks")
    grid = student_grid(cfg)
    geo = frame_geometry(cfg, config.patch_size)
    rows, cols = geo.patches
    if rows < grid.height or cols < grid.width:
        raise ValueError(
            f"image_teacher.image_size={it.image_size} gives a {rows}x{cols} patch grid, coarser than the student's "
            f"{grid.height}x{grid.width} tokens: raise it to at least {_min_size(cfg, grid, config.patch_size)}"
        )
    channels = config.hidden_size
    pairs = sum(grid.frames - o for o in cfg.lgf.offsets)
    k2 = cfg.lgf.kernel**2
    teacher = {k: v for k, v in to_dict(it).items() if k not in _NOT_KEYED}
    teacher["compute_dtype"] = compute_dtype(it.dtype, it.device, cfg.ray.gpus_per_worker)
    teacher["random_weights"] = it.random_weights or it.model == TINY
    if not teacher["random_weights"]:
        teacher.pop("seed")  # loaded weights do not depend on it
    if it.model == TINY:
        teacher["tiny_version"] = TINY_VERSION
    lgf = {"kernel": cfg.lgf.kernel, "tau": cfg.lgf.tau, "offsets": list(cfg.lgf.offsets), "fusion": SINGLE_STACK}
    key = {
        "image_teacher": teacher,
        "frames": {"height": geo.height, "width": geo.width, "patch": geo.patch},
        "mapping": {"temporal": cfg.teacher.temporal, "resample": cfg.teacher.resample},
        "video": cfg.video.key(),
        "student": to_dict(cfg.student),
        "lgf": lgf,
    }
    schema = {
        IMAGE_TEACHER.fwd: ArraySpec((*grid.shape, channels), "int8"),
        IMAGE_TEACHER.fwd_scale: ArraySpec((*grid.shape, 1), "float32"),
        IMAGE_TEACHER.lgf: ArraySpec((pairs, grid.height, grid.width, k2), "float16"),
    }
    attrs = {
        "grid": list(grid.shape),
        "channels": channels,
        "directions": 1,  # one stack, named fwd; no bwd, no mask
        "lgf": lgf,
        "quantized": {IMAGE_TEACHER.fwd: QUANT_INT8},
        "model": it.model,
        "layer": it.layer if it.layer is not None else "last_hidden_state",
        "frame_size": [geo.height, geo.width],
        "patch_grid": [rows, cols],
    }
    return ColumnSpec(NAME, key, schema, attrs)


def _min_size(cfg: ExtractConfig, grid: TokenGrid, patch: int) -> int:
    """The smallest image_size (a patch multiple) whose patch grid covers the token grid."""
    short_px, long_px = sorted((cfg.video.height, cfg.video.width))
    short_tok, long_tok = sorted((grid.height, grid.width))
    need = max(short_tok * patch, math.ceil(long_tok * patch * short_px / long_px))
    return math.ceil(need / patch) * patch


def load_dinov2(model: str, revision: str | None, random_weights: bool, seed: int, device: torch.device):
    """Dinov2Model in eval mode: from_pretrained(model) (a folder or hub id), or seeded random weights."""
    from transformers import Dinov2Model

    if model == TINY or random_weights:
        config = dinov2_config(model, revision)
        with torch.random.fork_rng(devices=[]):  # the same weights in every worker, global RNG untouched
            torch.manual_seed(seed)
            net = Dinov2Model(config)
    else:
        net = Dinov2Model.from_pretrained(model, revision=revision)
    return net.to(device).eval().requires_grad_(False)


def preprocess(frames: torch.Tensor, geo: FrameGeometry) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> normalised pixel_values [N, 3, geo.height, geo.width] (bicubic, antialiased)."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (geo.height, geo.width):
        x = F.interpolate(x, size=(geo.height, geo.width), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def patch_features(net, pixel_values: torch.Tensor, layer: int | None, patches: tuple[int, int]) -> torch.Tensor:
    """DINOv2 patch tokens [N, C, rows, cols] of pixel_values [N, 3, H, W] (the CLS token dropped)."""
    out = net(pixel_values=pixel_values, output_hidden_states=layer is not None)
    tokens = out.last_hidden_state if layer is None else out.hidden_states[layer]  # [N, 1 + rows*cols, C]
    rows, cols = patches
    if tokens.shape[1] != 1 + rows * cols:
        raise ValueError(f"DINOv2 gave {tokens.shape[1]} tokens for a {rows}x{cols} patch grid (+1 CLS)")
    return tokens[:, 1:].reshape(tokens.shape[0], rows, cols, -1).permute(0, 3, 1, 2).float()


class ImageTeacherProducer:
    """Built once per worker: loads DINOv2 and turns decoded clips into image_teacher arrays."""

    def __init__(self, cfg: ExtractConfig, device: str):
        self.cfg = cfg
        self.spec = image_teacher_spec(cfg)
        self.grid = student_grid(cfg)
        it = cfg.image_teacher
        dev = self.device = resolve_device(device)
        self.dtype = resolve_dtype(it.dtype, dev)
        check_compute_dtype(NAME, self.spec.config["image_teacher"]["compute_dtype"], self.dtype, dev)
        self.net = load_dinov2(it.model, it.revision, it.random_weights, it.seed, dev)
        if self.net.config.hidden_size != self.spec.attrs["channels"]:
            raise ValueError(f"loaded {it.model} has {self.net.config.hidden_size} channels, its config says {self.spec.attrs['channels']}")
        height, width = self.spec.attrs["frame_size"]
        self.geo = FrameGeometry(height, width, self.net.config.patch_size)

    def column_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def frame_indices(self, num_frames: int) -> list[int]:
        """Pixel frames the token grid reads: the last of each latent group (stride) or all (mean)."""
        if self.cfg.teacher.temporal == "stride":
            return [g[-1] for g in latent_frame_groups(num_frames, self.cfg.student.vae_temporal)]
        return list(range(num_frames))

    @torch.inference_mode()
    def features(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> features [T, h, w, C] on the student's token grid (fp32, CPU)."""
        cfg, it = self.cfg, self.cfg.image_teacher
        picked = self.frame_indices(frames.shape[0])
        maps = []
        for start in range(0, len(picked), it.image_batch):
            batch = torch.from_numpy(np.ascontiguousarray(frames[picked[start : start + it.image_batch]])).to(self.device)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                maps.append(patch_features(self.net, preprocess(batch, self.geo), it.layer, self.geo.patches).cpu())
        x = torch.cat(maps)  # [F', C, rows, cols]
        # stride: only frames 4i were run, so the temporal step is the identity (vae_temporal 1); mean: all frames
        vt, mode = (1, "stride") if cfg.teacher.temporal == "stride" else (cfg.student.vae_temporal, "mean")
        return to_token_grid(x, self.grid, vt, mode, cfg.teacher.resample)

    def produce(self, clip, entry) -> tuple[dict[str, np.ndarray], dict]:
        video = self.cfg.video
        frames = np.asarray(clip.frames)
        expected = (video.num_frames, video.height, video.width, 3)
        if frames.shape != expected:
            raise ValueError(f"clip {entry.key}: frames {frames.shape}, expected {expected}")
        feats = self.features(frames)  # [T, h, w, C]
        if not torch.isfinite(feats).all():
            raise ValueError(f"clip {entry.key}: non-finite DINOv2 features")
        lgf = lgf_probs(feats[None], self.cfg.lgf.kernel, self.cfg.lgf.tau, self.cfg.lgf.offsets)[0]
        q, scale = quantize(feats.numpy())
        arrays = {IMAGE_TEACHER.fwd: q, IMAGE_TEACHER.fwd_scale: scale, IMAGE_TEACHER.lgf: lgf.numpy().astype(np.float16)}
        for key, spec in self.spec.schema.items():
            if arrays[key].shape != spec.shape or arrays[key].dtype != np.dtype(spec.dtype):
                raise ValueError(f"clip {entry.key}: {key} is {arrays[key].dtype}{arrays[key].shape}, schema says {spec}")
        return arrays, {}
