"""Build the SAM2 teacher without Hydra's global state, load/save its checkpoints, feed it frames.

Why not `sam2.build_sam.build_sam2_video_predictor`: it resolves configs through Hydra's global
config search (which `import sam2` initialises as a side effect, clashing with apps that use Hydra)
and appends `fill_hole_area=8`, a post-processing step that needs the CUDA-only `sam2._C`.
Here the YAML shipped inside the sam2 package is read with OmegaConf and instantiated with
`hydra.utils.instantiate`, with the stock predictor's other post-processing switches kept
(dynamic multimask fallback, binarised click masks for the memory encoder) so that the model
behaves as `build_sam2_video_predictor` documents, minus hole filling.

The object built is a `sam2.sam2_video_predictor.SAM2VideoPredictor`: the same instance serves
our `BidirectionalTracker` and the stock `init_state` / `propagate_in_video` API (parity tests,
benchmarks).

Also here: the model's input contract (resize + normalise exactly as SAM2's frame loader does)
and the batched image encoder, shared by the tracker and `prompts.auto_prompt`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from stages.core.devices import resolve_device

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def hydra_state_preserved() -> Iterator[None]:
    """Leave Hydra's GlobalHydra as it was found: cleared again if the body initialised it.

    `import sam2` calls `initialize_config_module("sam2")` when GlobalHydra is not initialised;
    an app that later initialises its own Hydra then fails. An app that had initialised Hydra
    before keeps its state untouched.
    """
    was_initialised = GlobalHydra.instance().is_initialized()
    try:
        yield
    finally:
        if not was_initialised and GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()


with hydra_state_preserved():
    from sam2.sam2_video_predictor import SAM2VideoPredictor

# SAM2's frame loader normalisation (sam2/utils/misc.py: load_video_frames)
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)

_PREDICTOR_TARGET = "sam2.sam2_video_predictor.SAM2VideoPredictor"


def tiny_preset() -> dict[str, Any]:
    """Overrides on sam2.1_hiera_t that make a ~10-15 ms/frame CPU model for tests and demos.

    Hiera embed 8, stages (1,1,2,1) (global attention on block 3, never the first block of a
    stage), d_model 32, mem_dim 16, one memory-attention layer, num_maskmem 3, image_size 64.
    Window sizes shrink with the feature maps so no window is mostly padding.
    """
    d_model, mem_dim = 32, 16
    return {
        "image_encoder": {
            "trunk": {
                "embed_dim": 8,
                "num_heads": 1,
                "stages": [1, 1, 2, 1],
                "global_att_blocks": [3],
                "window_pos_embed_bkg_spatial_size": [4, 4],
                "window_spec": [8, 4, 4, 2],
            },
            "neck": {
                "d_model": d_model,
                "backbone_channel_list": [64, 32, 16, 8],
                "position_encoding": {"num_pos_feats": d_model},
            },
        },
        "memory_attention": {
            "d_model": d_model,
            "num_layers": 1,
            "layer": {
                "d_model": d_model,
                "dim_feedforward": 64,
                "self_attention": {"embedding_dim": d_model},
                "cross_attention": {"embedding_dim": d_model, "kv_in_dim": mem_dim},
            },
        },
        "memory_encoder": {
            "out_dim": mem_dim,
            "in_dim": d_model,
            "position_encoding": {"num_pos_feats": mem_dim},
            "mask_downsampler": {"embed_dim": d_model},
            "fuser": {"num_layers": 1, "layer": {"dim": d_model}},
        },
        "num_maskmem": 3,
        "image_size": 64,
    }


def _stock_predictor_overrides() -> dict[str, Any]:
    """What build_sam2_video_predictor(apply_postprocessing=True) sets, minus fill_hole_area (sam2._C)."""
    return {
        "_target_": _PREDICTOR_TARGET,
        "sam_mask_decoder_extra_args": {
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
        "binarize_mask_from_pts_for_mem_enc": True,
        "fill_hole_area": 0,  # >0 needs the CUDA-only sam2._C extension
        "non_overlap_masks": False,  # single object per clip: nothing to make non-overlapping
        "compile_image_encoder": False,
    }


def config_yaml_text(model: str) -> str:
    """The YAML text of a released SAM2 config name, read from inside the installed sam2 package."""
    folder = "sam2.1" if model.startswith("sam2.1_") else "sam2"
    res = importlib.resources.files("sam2").joinpath("configs", folder, f"{model}.yaml")
    if not model.startswith("sam2") or not res.is_file():
        raise ValueError(
            f"unknown SAM2 model {model!r}: expected 'tiny' or a config name such as "
            "sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b+, sam2.1_hiera_l, sam2_hiera_l"
        )
    return res.read_text()


def model_config(
    model: str, image_size: int | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The resolved `model:` section (plain dict) for a config name or "tiny".

    Layers, later wins: the YAML, the tiny preset, the stock predictor's switches, `overrides`
    (nested dict merged into the model section), then the image_size override.
    """
    base = "sam2.1_hiera_t" if model == "tiny" else model
    cfg = OmegaConf.create(config_yaml_text(base)).model
    if model == "tiny":
        cfg = OmegaConf.merge(cfg, tiny_preset())
    cfg = OmegaConf.merge(cfg, _stock_predictor_overrides(), overrides or {})
    out = OmegaConf.to_container(cfg, resolve=True)
    if image_size is not None:
        _set_image_size(out, image_size)
    return out


def _set_image_size(cfg: dict[str, Any], image_size: int) -> None:
    """Set image_size and the sizes derived from it.

    Dependents: the RoPE tables of memory attention are built for image_size/16 feature maps
    (`feat_sizes`); the SAM prompt encoder / mask decoder sizes derive from `image_size` inside
    SAM2Base. Constraints: the stride-32 Hiera stage needs image_size % 32 == 0, and Hiera tiles
    its first-stage window position embedding over the image_size/4 map, so that map must be a
    multiple of window_spec[0]. Resizing keeps every parameter shape (checkpoints still load).
    """
    window0 = cfg["image_encoder"]["trunk"].get("window_spec", [8])[0]
    multiple = int(np.lcm(32, 4 * window0))
    if image_size < multiple or image_size % multiple:
        raise ValueError(
            f"image_size {image_size} is not supported by this config: it must be a positive "
            f"multiple of {multiple} (Hiera stride 32 and a first-stage window of {window0})"
        )
    stride = cfg.get("backbone_stride", 16)
    cfg["image_size"] = image_size
    layer = cfg["memory_attention"]["layer"]
    for attn in ("self_attention", "cross_attention"):
        if "feat_sizes" in layer[attn]:
            layer[attn]["feat_sizes"] = [image_size // stride, image_size // stride]


def feature_channels(model: str, feature: str) -> int:
    """Channels of a teacher feature kind for a config name, without building the model.

    "maskmem": the memory encoder's out_dim (mem_dim: 64 for released configs, 16 for tiny);
    "memory_attention" and "backbone": the neck's d_model (hidden_dim: 256, tiny 32).
    """
    cfg = model_config(model)
    if feature == "maskmem":
        return int(cfg["memory_encoder"]["out_dim"])
    if feature in ("memory_attention", "backbone"):
        return int(cfg["image_encoder"]["neck"]["d_model"])
    raise ValueError(f"feature must be maskmem, memory_attention or backbone, got {feature!r}")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (wrong format, missing/unexpected/misshapen keys)."""


def build_sam2(
    model: str,
    checkpoint: str | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> SAM2VideoPredictor:
    """Build a SAM2 video predictor from a config name (or "tiny"), in eval mode, frozen.

    model: "sam2.1_hiera_{t,s,b+,l}", "sam2_hiera_{t,s,b+,l}" or "tiny" (see `tiny_preset`).
    checkpoint: local path or fsspec URL of an official SAM2 checkpoint ({"model": state_dict});
        None keeps random weights (tests, speed figures).
    image_size: input resolution override (released configs: 1024; tiny: 64).
    seed: makes random weights reproducible without touching the caller's global RNG.
    overrides: nested dict merged into the config's `model:` section (e.g. {"num_maskmem": 5}).
    """
    cfg = model_config(model, image_size, overrides)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, hydra_state_preserved():
        if seed is not None:
            torch.manual_seed(seed)
        net = instantiate(cfg, _recursive_=True)
    if checkpoint is not None:
        load_checkpoint(net, checkpoint)
    else:
        _prime_random_presence(net)
    net = net.to(resolve_device(device)).eval()
    net.requires_grad_(False)
    logger.info("built SAM2 %s (image_size %d, checkpoint %s)", model, net.image_size, checkpoint)
    return net


RANDOM_PRESENCE_LOGIT = 4.0


def _prime_random_presence(net: SAM2VideoPredictor) -> None:
    """Random weights only: bias the object-presence head to "present".

    A random SAM2 scores the subject as absent about half the time; SAM2 then blanks the mask, and
    the memories of both directions become the same function of the image alone, so every fusion
    mode would give the same target. Real checkpoints never come here.
    """
    head = getattr(net.sam_mask_decoder, "pred_obj_score_head", None)
    last = head.layers[-1] if hasattr(head, "layers") else head
    if last is not None:
        with torch.no_grad():
            last.bias.fill_(RANDOM_PRESENCE_LOGIT)


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load an official-format SAM2 checkpoint ({"model": state_dict}) strictly, with clear errors."""
    with fsspec.open(path, "rb") as f:
        blob = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise CheckpointError(f"{path}: not a SAM2 checkpoint (expected a dict with a 'model' state_dict)")
    state = blob["model"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"{path} does not fit this SAM2 config: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(misshapen)} keys with another shape {misshapen[:5]}"
        )
    model.load_state_dict(state, strict=True)


def save_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Write the model in SAM2's official checkpoint format: {"model": state_dict} (CPU tensors)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with fsspec.open(path, "wb") as f:
        torch.save({"model": state}, f)


# ---------------------------------------------------------------------------------------------
# Input side: frames -> normalised model input -> per-frame image features


def _unit_lut(device: torch.device) -> torch.Tensor:
    """uint8 -> float32 of value/255 computed in float64, as SAM2's loader does (numpy `/ 255.0`).

    A table (256 entries) reproduces the loader's float64 division bit for bit without
    materialising float64 frames.
    """
    return torch.from_numpy((np.arange(256) / 255.0).astype(np.float32)).to(device)


def preprocess_frames(frames: torch.Tensor, image_size: int, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, S, S] normalised exactly like SAM2's JPEG loader.

    The loader resizes the uint8 image with PIL's default (bicubic, antialiased) to S x S, then
    divides by 255 and normalises by IMG_MEAN / IMG_STD. Frames already S x S are not resized
    (PIL returns a copy), so pixels are identical to stock; other sizes use torch's antialiased
    bicubic, rounded back to uint8 levels like PIL (close to, not bit-equal with, PIL).
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [B, H, W, 3], got {tuple(frames.shape)} {frames.dtype}")
    x = frames.to(device).permute(0, 3, 1, 2)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    x = _unit_lut(device)[x.long()]
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32, device=device)[:, None, None]
    return (x - mean) / std


@dataclass
class FrameFeatures:
    """One frame's image features in the layout SAM2's tracking methods take, for B clips.

    vision_feats / vision_pos: per level, finest first, flattened to [H_l*W_l, B, C_l]
    (what `_prepare_backbone_features` returns; row b is clip b's frame); feat_sizes:
    [(H_l, W_l)] per level. The last level is the stride-16 map (hidden_dim channels) that
    memory attention reads. The positional encodings depend only on the map shape: one
    [H_l*W_l, 1, C_l] copy expanded to B rows (a view, as SAM2's predictor expands them per object).
    """

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]

    @property
    def batch(self) -> int:
        return int(self.vision_feats[-1].shape[1])

    def backbone_map(self, row: int = 0) -> torch.Tensor:
        """Row `row`'s lowest-resolution image feature as [C, Hf, Wf]."""
        h, w = self.feat_sizes[-1]
        return self.vision_feats[-1][:, row].permute(1, 0).reshape(-1, h, w)

    def backbone_maps(self) -> torch.Tensor:
        """Every row's lowest-resolution image feature as [B, C, Hf, Wf]."""
        h, w = self.feat_sizes[-1]
        return self.vision_feats[-1].permute(1, 2, 0).reshape(self.batch, -1, h, w)

    def rows(self, rows: list[int]) -> FrameFeatures:
        """The features of the clips `rows` only (rows of one clip are a view, several a copy)."""
        if len(rows) == 1:
            r = rows[0]
            return FrameFeatures([f[:, r : r + 1] for f in self.vision_feats], [p[:, :1] for p in self.vision_pos], self.feat_sizes)
        index = torch.tensor(rows, device=self.vision_feats[-1].device)
        feats = [f.index_select(1, index) for f in self.vision_feats]
        return FrameFeatures(feats, [p[:, :1].expand(-1, len(rows), -1) for p in self.vision_pos], self.feat_sizes)


def encode_frames(model: SAM2VideoPredictor, frames: torch.Tensor, batch: int) -> list[FrameFeatures]:
    """Run SAM2's image encoder (`forward_image`) once per frame, `batch` frames at a time.

    frames: uint8 [F, H, W, 3] (any device; moved batch by batch, so at most `batch` frames
    of float input exist at once). Returns F one-row FrameFeatures on the model's device.
    """
    return encode_clips(model, [frames], batch)


def encode_clips(model: SAM2VideoPredictor, clips: list[torch.Tensor], batch: int) -> list[FrameFeatures]:
    """The image encoder over B clips of the same shape, `batch` frames per call across clips.

    clips: B x uint8 [F, H, W, 3]. The clips' frames are taken in order (clip 0's frames, then
    clip 1's, ...) and cut into calls of `batch` frames, so a call may hold the end of one
    clip and the start of the next. Returns F FrameFeatures, frame t's with B rows (row b =
    clip b). One clip keeps views into the encoder's output (no copy); several are gathered
    into [H_l*W_l, B, C_l] tensors per frame, filled as the calls come.
    """
    b, n = len(clips), int(clips[0].shape[0])
    if any(c.shape != clips[0].shape for c in clips):
        raise ValueError(f"clips batched together must have one shape, got {[tuple(c.shape) for c in clips]}")
    order = [(i, t) for i in range(b) for t in range(n)]
    out: list[FrameFeatures | None] = [None] * n
    pos: list[torch.Tensor] | None = None
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        # the call's frames: one slice per clip it touches (a copy only when it spans clips)
        spans: dict[int, list[int]] = {}
        for i, t in chunk:
            spans.setdefault(i, []).append(t)
        slices = [clips[i][ts[0] : ts[-1] + 1] for i, ts in spans.items()]
        frames = slices[0] if len(slices) == 1 else torch.cat(slices)
        images = preprocess_frames(frames, model.image_size, model.device)
        backbone_out = model.forward_image(images)
        if pos is None:
            pos = [p[:1] for p in backbone_out["vision_pos_enc"]]
        # [K, C, H, W] per level -> [H*W, K, C] (K = frames of this call)
        _, feats, poss, sizes = model._prepare_backbone_features({"backbone_fpn": backbone_out["backbone_fpn"], "vision_pos_enc": pos})
        for k, (i, t) in enumerate(chunk):
            if b == 1:
                out[t] = FrameFeatures([f[:, k : k + 1] for f in feats], poss, sizes)
                continue
            if out[t] is None:
                out[t] = FrameFeatures([f.new_empty(f.shape[0], b, f.shape[2]) for f in feats], [p.expand(-1, b, -1) for p in poss], sizes)
            for dst, src in zip(out[t].vision_feats, feats):
                dst[:, i] = src[:, k]
    return out


def describe(model: SAM2VideoPredictor) -> dict[str, Any]:
    """JSON-able facts of a built model (for records and logs)."""
    return {
        "image_size": int(model.image_size),
        "hidden_dim": int(model.hidden_dim),
        "mem_dim": int(model.mem_dim),
        "num_maskmem": int(model.num_maskmem),
        "feature_stride": int(model.backbone_stride),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


__all__ = [
    "CheckpointError",
    "FrameFeatures",
    "IMG_MEAN",
    "IMG_STD",
    "SAM2VideoPredictor",
    "build_sam2",
    "config_yaml_text",
    "describe",
    "encode_clips",
    "encode_frames",
    "feature_channels",
    "hydra_state_preserved",
    "load_checkpoint",
    "model_config",
    "preprocess_frames",
    "resolve_device",
    "save_checkpoint",
    "tiny_preset",
]
