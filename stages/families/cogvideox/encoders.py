"""The CogVideoX VAE and T5 text encoder: loading, and the three encodings stage one stores.

Stage two (distillation) never loads these models: it reads what this module produces.

- `encode_video`: the VAE posterior of a whole clip, as diffusers' `DiagonalGaussianDistribution`
  parameters ([mean | logvar] on channels), unscaled, so a reader can draw a fresh latent sample
  every epoch exactly as the diffusers CogVideoX LoRA scripts do from their cached `latent_dist`.
- `encode_image`: the first frame with the I2V training noise (pixel noise of log-normal sigma,
  as in diffusers' `train_cogvideox_image_to_video_lora.py`), encoded, one seeded posterior sample.
- `encode_prompt`: T5 embeddings of the caption padded to `max_len` tokens, encoded without an
  attention mask as the CogVideoX pipelines do (the model was trained on padded sequences).

Models come from a diffusers-format folder or hub id (`vae/`, `text_encoder/`, `tokenizer/`)
or from the "tiny" preset: real architectures with random weights and tiny widths, built
deterministically into a cache folder and then loaded through the same `from_pretrained` path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import math
import os
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from diffusers import AutoencoderKLCogVideoX
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from stages.config.loader import config_hash
from stages.core.compiling import compile_modules, vae_compile_targets
from stages.core.devices import resolve_device, resolve_dtype
from stages.core.grid import latent_shape
from stages.families.base import EncodingsLayout
from stages.store import ArraySpec

log = logging.getLogger(__name__)

TINY = "tiny"
TINY_VERSION = 1  # bump when the tiny preset changes: it is part of the cache folder name and column hash

# A 4-down-block VAE so the compression is the real one (8x spatial, 4x temporal, 16 channels).
TINY_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [8, 8, 16, 16],
    "latent_channels": 16,
    "layers_per_block": 1,
    "norm_num_groups": 4,  # must divide every block width
    "temporal_compression_ratio": 4,
    "scaling_factor": 0.7,  # CogVideoX-5B(-I2V)'s value
}

# A T5 v1.1-style encoder (gated-GELU, relative attention) at toy width; vocab size follows the tokenizer.
TINY_T5_CONFIG: dict[str, Any] = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "tie_word_embeddings": False,
    "is_encoder_decoder": False,
    "use_cache": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

# Whole-word pieces of the tiny tokenizer; anything else falls back to single characters.
_TINY_WORDS = (
    "a an the of and in on at with to from is are its his her their this that it "
    "person man woman child people dog cat horse bird fish car ball animal subject camera "
    "walks walking runs running jumps jumping dances dancing swims swimming rides riding "
    "turns turning moves moving holds holding throws catches sits stands falls climbs "
    "left right up down slowly quickly field street water grass road room beach snow "
    "red blue green white black small large young old video scene background foreground"
).split()

_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5


@dataclass(frozen=True)
class VaeGeometry:
    """What the VAE's config says about latent shapes, read without loading weights."""

    latent_channels: int
    spatial: int  # spatial compression: 2 ** (number of down blocks - 1)
    temporal: int  # temporal compression
    scaling_factor: float
    invert_scale_latents: bool  # CogVideoX 1.5 I2V divides image latents by the factor instead

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> "VaeGeometry":
        full = {**_vae_defaults(), **dict(config)}
        return VaeGeometry(
            latent_channels=int(full["latent_channels"]),
            spatial=2 ** (len(full["block_out_channels"]) - 1),
            temporal=int(full["temporal_compression_ratio"]),
            scaling_factor=float(full["scaling_factor"]),
            invert_scale_latents=bool(full["invert_scale_latents"]),
        )


@dataclass(frozen=True)
class ModelConfigs:
    """The VAE and text-encoder configs of a model: enough for shapes and a cache key, no weights."""

    vae: dict[str, Any]  # as in vae/config.json (keys starting with "_" dropped)
    text_encoder: dict[str, Any]  # as in text_encoder/config.json (keys starting with "_" and versions dropped)

    @property
    def geometry(self) -> VaeGeometry:
        return VaeGeometry.from_config(self.vae)

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder["d_model"])


@dataclass
class Encoders:
    """The loaded models, in eval mode on one device."""

    vae: AutoencoderKLCogVideoX
    text_encoder: T5EncoderModel
    tokenizer: Any  # a transformers tokenizer (T5's, or the tiny preset's)
    scaling_factor: float  # multiply stored (unscaled) latents by this before the transformer
    device: torch.device
    dtype: torch.dtype  # compute dtype of both models (fp32 on CPU)

    @property
    def geometry(self) -> VaeGeometry:
        return VaeGeometry.from_config(self.vae.config)

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.config.d_model)

    # -- the family's Encoders interface (stages/families/base.py), run by the one encodings producer
    def check_layout(self, layout: EncodingsLayout, model: str) -> None:
        """The loaded weights must match the config files the layout was computed from."""
        spec_geo = read_model_configs(model).geometry
        if self.geometry != spec_geo or self.text_dim != layout.schema["prompt_embeds"].shape[1]:
            raise ValueError(
                f"loaded encoders ({self.geometry}, text dim {self.text_dim}) do not match the configs "
                f"of {model} ({spec_geo}, {layout.schema['prompt_embeds']})"
            )

    def compile(self) -> None:
        compile_modules("encoders", vae_compile_targets(self.vae), self.device)

    def column_arrays(self, encoders_cfg: Any) -> dict[str, np.ndarray]:
        """The empty-prompt embedding, for classifier-free-guidance dropout of captions in stage two."""
        embeds, mask = encode_prompt(self, "", encoders_cfg.max_text_len)
        return {"empty_prompt_embeds": embeds, "empty_prompt_mask": mask}

    def encode_clip(self, frames: np.ndarray, key: str, caption: str, encoders_cfg: Any) -> tuple[dict[str, np.ndarray], dict]:
        """(latents, image_latents, prompt_embeds, prompt_mask; {"image_noise_sigma", "image_seed"[, "caption_truncated"]})."""
        e = encoders_cfg
        seed = clip_seed(e.seed, key)
        image = encode_image(self, frames[0], seed, e.image_noise_sigma_mean, e.image_noise_sigma_std)
        embeds, mask = encode_prompt(self, caption, e.max_text_len)
        tokens = caption_tokens(self, caption)
        arrays = {"latents": encode_video(self, frames), "image_latents": image.latents, "prompt_embeds": embeds, "prompt_mask": mask}
        record: dict[str, Any] = {"image_noise_sigma": image.sigma, "image_seed": seed}
        if tokens > e.max_text_len:
            record["caption_truncated"] = tokens
        return arrays, record


@dataclass(frozen=True)
class ImageEncoding:
    latents: np.ndarray  # float16 [C, 1, H/8, W/8]: one posterior sample of the noised frame, unscaled
    sigma: float  # the pixel-noise sigma that was drawn
    seed: int  # the seed every random draw of this encoding came from


# -- loading ---------------------------------------------------------------------------------


def load_encoders(
    model: str,
    dtype: str | torch.dtype = "bfloat16",
    device: str | torch.device = "auto",
    vae_slicing: bool = True,
    vae_tiling: bool = True,
) -> Encoders:
    """Load the VAE, T5 encoder and tokenizer of `model` (a diffusers folder / hub id, or "tiny")."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source = str(tiny_encoders_dir()) if model == TINY else model
    vae = AutoencoderKLCogVideoX.from_pretrained(source, subfolder="vae", torch_dtype=dt)
    text_encoder = T5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=dt)
    tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
    log.info("loaded encoders of %s on %s as %s", model, dev, dt)
    return _assemble(vae, text_encoder, tokenizer, dt, dev, vae_slicing, vae_tiling)


def build_encoders(
    vae_config: Mapping[str, Any],
    text_config: Mapping[str, Any],
    tokenizer: Any,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    vae_slicing: bool = True,
    vae_tiling: bool = True,
    seed: int = 0,
) -> Encoders:
    """Random-weight models from configs (tiny preset, real-size benchmarks); seeded, global RNG untouched."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device(dev):
        torch.manual_seed(seed)
        vae = AutoencoderKLCogVideoX.from_config(dict(vae_config))  # ignores metadata keys like "_class_name"
        text_encoder = T5EncoderModel(T5Config(**dict(text_config)))
    if dt != torch.float32:
        vae, text_encoder = vae.to(dt), text_encoder.to(dt)
    return _assemble(vae, text_encoder, tokenizer, dt, dev, vae_slicing, vae_tiling)


def _assemble(vae, text_encoder, tokenizer, dt, dev, vae_slicing: bool, vae_tiling: bool) -> Encoders:
    vae = vae.to(dev).eval().requires_grad_(False)
    text_encoder = text_encoder.to(dev).eval().requires_grad_(False)
    # Slicing splits a batch into single clips, tiling splits frames into overlapping spatial
    # tiles: both bound VAE memory at 480x720 (tiling changes the result slightly, so it is keyed).
    if vae_slicing:
        vae.enable_slicing()
    if vae_tiling:
        vae.enable_tiling()
    return Encoders(vae, text_encoder, tokenizer, float(vae.config.scaling_factor), dev, dt)


def read_model_configs(model: str) -> ModelConfigs:
    """The VAE and T5 configs of `model` from its config.json files (or the tiny preset): no weights."""
    if model == TINY:
        return ModelConfigs(dict(TINY_VAE_CONFIG), tiny_t5_config())
    vae = AutoencoderKLCogVideoX.load_config(model, subfolder="vae")
    text, _ = T5Config.get_config_dict(model, subfolder="text_encoder")
    drop = {"transformers_version"}
    return ModelConfigs(
        {k: v for k, v in vae.items() if not k.startswith("_")},
        {k: v for k, v in text.items() if not k.startswith("_") and k not in drop},
    )


def _vae_defaults() -> dict[str, Any]:
    sig = inspect.signature(AutoencoderKLCogVideoX.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


# -- tiny preset ----------------------------------------------------------------------------


def _tiny_pieces() -> list[tuple[str, float]]:
    """(piece, log-probability) of the tiny Unigram vocabulary; ids 0-2 are T5's <pad>, </s>, <unk>."""
    pieces = [(s, 0.0) for s in _SPECIALS] + [("▁", -6.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces += [("▁" + ch, -9.0), (ch, -8.0)]
    return pieces + [("▁" + w, -3.0) for w in _TINY_WORDS]  # higher score: a known word stays one piece


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A T5-like Unigram tokenizer built offline: whole words from a fixed list, else characters."""
    tok = Tokenizer(Unigram(_tiny_pieces(), unk_id=_SPECIALS.index("<unk>"), byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    eos = _SPECIALS.index("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5_config() -> dict[str, Any]:
    return {**TINY_T5_CONFIG, "vocab_size": len(_tiny_pieces())}


def save_tiny_encoders(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny preset (random weights from `seed`) in diffusers/transformers format."""
    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    enc = build_encoders(TINY_VAE_CONFIG, tiny_t5_config(), tokenizer, "float32", "cpu", False, False, seed)
    enc.vae.save_pretrained(directory / "vae")
    enc.text_encoder.save_pretrained(directory / "text_encoder")
    tokenizer.save_pretrained(directory / "tokenizer")
    return directory


def cache_root() -> Path:
    return Path(os.environ.get("SAM2VIDEOX_CACHE") or Path.home() / ".cache" / "sam2videox")


def tiny_encoders_dir(seed: int = 0) -> Path:
    """The tiny preset's folder in the cache, built on first use (safe for concurrent workers: publish_cached)."""
    preset = {"vae": TINY_VAE_CONFIG, "t5": tiny_t5_config(), "words": _TINY_WORDS, "seed": seed, "v": TINY_VERSION}
    return publish_cached(cache_root() / f"tiny-encoders-{config_hash(preset)}", lambda tmp: save_tiny_encoders(tmp, seed))


def publish_cached(final: Path, save: Callable[[Path], Any]) -> Path:
    """`final`, built by `save(folder)` on first use: into a temporary folder beside it, then renamed
    into place, so concurrent workers never see a half-written folder (a rename onto a folder another
    worker already published fails, and the loser's copy, identical being seeded, is dropped)."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the published cache is readable like any other
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- encoding -------------------------------------------------------------------------------


def clip_seed(base_seed: int, key: str) -> int:
    """A per-clip seed from (config seed, clip key) with a stable hash, so reruns are bit-identical."""
    digest = hashlib.sha256(f"{base_seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _pixels(frames: np.ndarray, enc: Encoders) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> fp32 [1, 3, F, H, W] in [-1, 1] on the device (uint8 travels: 4x less)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(enc.device)
    return x.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0


def _to_fp16(t: torch.Tensor, what: str) -> np.ndarray:
    out = t.float().cpu().numpy().astype(np.float16)
    if not np.isfinite(out).all():  # fp16 overflow or a NaN: fail this clip rather than store garbage
        raise ValueError(f"{what}: non-finite values after the float16 cast")
    return out


@torch.inference_mode()
def encode_video(enc: Encoders, frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> float16 [2*C, T, H/s, W/s]: posterior [mean | logvar], unscaled.

    T = (F - 1) // temporal + 1. The layout is `DiagonalGaussianDistribution.parameters`, so a
    reader rebuilds the distribution from it and samples (then multiplies by the scaling factor).
    """
    x = _pixels(frames, enc).to(enc.dtype)
    params = enc.vae.encode(x).latent_dist.parameters
    return _to_fp16(params[0], "video latents")


@torch.inference_mode()
def encode_image(
    enc: Encoders, frame: np.ndarray, seed: int, sigma_mean: float = -3.0, sigma_std: float = 0.5
) -> ImageEncoding:
    """uint8 [H, W, 3] -> one posterior sample float16 [C, 1, H/s, W/s] of the noised frame, unscaled.

    As in CogVideoX I2V training: sigma = exp(N(sigma_mean, sigma_std)), pixels + sigma * N(0, 1)
    in [-1, 1], VAE-encoded, then sampled. Every draw comes from one CPU generator seeded with
    `seed`, so the result is the same on any device and in any rerun.
    """
    gen = torch.Generator("cpu").manual_seed(seed)
    sigma = math.exp(sigma_mean + sigma_std * torch.randn((), generator=gen).item())
    x = _pixels(frame[None], enc)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(enc.device)
    params = enc.vae.encode((x + sigma * noise).to(enc.dtype)).latent_dist.parameters.float()
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # the clamp DiagonalGaussianDistribution applies
    eps = torch.randn(mean.shape, generator=gen, dtype=torch.float32).to(enc.device)
    return ImageEncoding(_to_fp16((mean + std * eps)[0], "image latents"), sigma, seed)


def caption_tokens(enc: Encoders, text: str) -> int:
    """Tokens of `text` untruncated (special tokens included): more than max_text_len means encode_prompt truncates it."""
    return len(enc.tokenizer(text).input_ids)


@torch.inference_mode()
def encode_prompt(enc: Encoders, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """text -> (float16 [max_len, D] T5 last hidden state, uint8 [max_len] token mask).

    Padded to `max_len` and encoded without an attention mask, as diffusers' CogVideoX pipelines
    and training scripts do; the mask is stored for readers that want to know where text ends.
    """
    tokens = enc.tokenizer(
        text, padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True, return_tensors="pt"
    )
    hidden = enc.text_encoder(input_ids=tokens.input_ids.to(enc.device))[0]
    mask = tokens.attention_mask[0].numpy().astype(np.uint8)
    return _to_fp16(hidden[0], "prompt embeddings"), mask


# -- the encodings column (its one producer: stages/extract/columns/encodings.py) --------------


def encodings_layout(encoders_cfg: Any, video: Any) -> EncodingsLayout:
    """The column's layout from the VAE and T5 configs alone: latents [2C, T, H/s, W/s] (posterior), the noised
    first frame's latents [C, 1, H/s, W/s], T5 prompt embeddings [L, D] and their mask [L]."""
    enc = encoders_cfg
    models = read_model_configs(enc.model)
    geo = models.geometry
    t, h, w = latent_shape(video.num_frames, video.height, video.width, geo.temporal, geo.spatial)
    c, length = geo.latent_channels, enc.max_text_len
    schema = {
        "latents": ArraySpec((2 * c, t, h, w), "float16"),
        "image_latents": ArraySpec((c, 1, h, w), "float16"),
        "prompt_embeds": ArraySpec((length, models.text_dim), "float16"),
        "prompt_mask": ArraySpec((length,), "uint8"),
    }
    # the device never changes content, nor compile (speed only; CPU ignores it)
    encoders = {k: v for k, v in dataclasses.asdict(enc).items() if k not in ("device", "compile")}
    model: dict[str, Any] = {"vae": models.vae, "text_encoder": models.text_encoder}
    if enc.model == TINY:
        model["tiny_version"] = TINY_VERSION
    return EncodingsLayout(encoders, model, schema, _column_attrs(enc, geo, models.text_dim), geo.spatial, geo.temporal)


def _column_attrs(enc: Any, geo: VaeGeometry, text_dim: int) -> dict[str, Any]:
    return {
        "scaling_factor": geo.scaling_factor,
        "latent_channels": geo.latent_channels,
        "temporal_compression": geo.temporal,
        "spatial_compression": geo.spatial,
        "invert_scale_latents": geo.invert_scale_latents,
        "latents": "VAE posterior parameters [mean | logvar] on channels (DiagonalGaussianDistribution), "
        "unscaled: sample, then multiply by scaling_factor",
        "image_noise": {
            "sigma": "exp(N(mean, std)) per clip, seeded by (encoders.seed, clip key)",
            "mean": enc.image_noise_sigma_mean,
            "std": enc.image_noise_sigma_std,
            "space": "pixels in [-1, 1], noise added before VAE encoding",
            "image_latents": "one posterior sample of the noised first frame, unscaled",
        },
        "prompt": {
            "max_text_len": enc.max_text_len,
            "text_dim": text_dim,
            "encoded_with_attention_mask": False,  # as diffusers' CogVideoX pipelines
        },
    }


def load_column_encoders(encoders_cfg: Any, device: str) -> Encoders:
    e = encoders_cfg
    return load_encoders(e.model, e.dtype, device, e.vae_slicing, e.vae_tiling)
