"""One interface for every student family (CogVideoX, Wan): what differs between them lives behind it.

A family module (students/cogvideox.py, students/wan.py) says how to load its transformer and
training scheduler (diffusers folder, hub id or its tiny random preset), its geometry (VAE compression
and patch sizes, so the teacher's token grid follows from the configs), how one training step's
inputs and loss are built (objective: noise, target, weight), where the tap reads video tokens and
which modules LoRA adapts, and which stock pipeline loads the exported LoRA. The trainer, the tap,
the data checks and the CLI only wire them; the family comes from `student.family` or from the
transformer config's class name.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from stages.core.grid import TokenGrid, token_grid as grid_for_clip

FAMILIES = ("cogvideox", "wan", "ltx")


@dataclass(frozen=True)
class Geometry:
    """What the student's configs say about the token grid: VAE compression and patch sizes."""

    vae_spatial: int
    vae_temporal: int
    patch_size: int  # spatial
    patch_size_t: int | None  # temporal patch; None (or 1) = every latent frame is a token frame

    def token_grid(self, num_frames: int, height: int, width: int) -> TokenGrid:
        """(T, h, w) token grid for clips of num_frames x height x width pixels."""
        p_t = self.patch_size_t if self.patch_size_t and self.patch_size_t > 1 else None
        return grid_for_clip(num_frames, height, width, self.vae_temporal, self.vae_spatial, self.patch_size, p_t)


class Student(ABC):
    """A student family. Stateless: methods take the transformer (or its config) they act on."""

    family: str
    transformer_class: str  # diffusers class name in transformer/config.json's "_class_name"
    pipeline_classes: Mapping[str, str]  # task -> the stock diffusers pipeline class that loads the LoRA

    # -- loading
    @abstractmethod
    def load(self, model: str, task: str, dtype: torch.dtype, device: str | torch.device) -> tuple[torch.nn.Module, Any]:
        """(transformer, training scheduler) from a diffusers folder / hub id or this family's tiny preset."""

    @abstractmethod
    def save_tiny(self, directory: str | Path, task: str) -> Path:
        """Write the tiny random preset in diffusers format (transformer/, scheduler/)."""

    # -- geometry
    @abstractmethod
    def geometry(self, transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> Geometry: ...

    @abstractmethod
    def token_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """(T, h, w) token grid of a stored latent of shape (..., T, H8, W8)."""

    @abstractmethod
    def input_grid(self, transformer_config: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """(T, h, w) token grid of a transformer input, in this family's layout."""

    def forward_grid(self, transformer_config: Any, model_kwargs: Mapping[str, Any]) -> tuple[int, int, int]:
        """(T, h, w) token grid of one forward's kwargs (LTX: packed tokens, the grid is in num_frames/height/width)."""
        return self.input_grid(transformer_config, model_kwargs["hidden_states"])

    def rotary(self, transformer_config: Any, latent_shape: Sequence[int], device: torch.device) -> Any:
        """Positional embedding computed outside the model once per run (None: the model computes its own)."""
        return None

    @abstractmethod
    def text_dim(self, transformer_config: Any) -> int: ...

    def num_blocks(self, transformer_config: Any) -> int:
        return int(transformer_config.num_layers)

    def check_latent_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> str | None:
        """Why a stored latent grid (T, H8, W8) cannot train this model, or None."""
        return None

    # -- tap and LoRA
    @abstractmethod
    def blocks(self, transformer: torch.nn.Module) -> torch.nn.ModuleList: ...

    @abstractmethod
    def video_tokens(self, block_output: Any) -> torch.Tensor:
        """A block's output -> its video tokens [B, T*h*w, D], ordered (frame, row, column)."""

    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    # -- objective
    @abstractmethod
    def prepare_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> Any:
        """Sample one step's noise and timestep; the inputs' `model_kwargs` go to transformer(**kwargs)."""

    @abstractmethod
    def loss_from_output(self, ctx: Any, output: torch.Tensor, inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L_diff, aux) from the transformer's output."""

    # -- export and sampling
    def pipeline_class(self, task: str):
        import diffusers

        return getattr(diffusers, self.pipeline_classes[task])


def get_student(family: str) -> Student:
    if family == "cogvideox":
        from stages.families.cogvideox.family import CogVideoXStudent

        return CogVideoXStudent()
    if family == "wan":
        from stages.families.wan.family import WanStudent

        return WanStudent()
    if family == "ltx":
        from stages.families.ltx.family import LtxStudent

        return LtxStudent()
    raise ValueError(f"unknown student family {family!r}; valid: {', '.join(FAMILIES)}")


def family_of_class(class_name: str) -> str:
    """The family of a diffusers transformer class name (transformer/config.json's _class_name)."""
    for family in FAMILIES:
        if get_student(family).transformer_class == class_name:
            return family
    raise ValueError(f"transformer class {class_name!r} is no supported student; supported: CogVideoXTransformer3DModel, WanTransformer3DModel, LTXVideoTransformer3DModel")


def infer_family(model: str, family: str | None = None) -> str:
    """`family` when given, else from the model: "tiny" (CogVideoX), "tiny-<family>", or the folder's
    transformer/config.json class name (hub ids are read through diffusers' config loader, no weights)."""
    if family:
        get_student(family)  # validates the name
        return family
    if model == "tiny":
        return "cogvideox"
    if model.startswith("tiny-"):
        return infer_family(model, model.removeprefix("tiny-"))
    from stages.families.cogvideox.family import COGVIDEOX_15_KNOWN
    from stages.families.ltx.family import KNOWN_TRANSFORMERS as LTX_KNOWN
    from stages.families.wan.family import KNOWN_TRANSFORMERS as WAN_KNOWN

    if model in WAN_KNOWN:
        return "wan"
    if model in LTX_KNOWN:
        return "ltx"
    if model in COGVIDEOX_15_KNOWN:
        return "cogvideox"
    path = Path(model) / "transformer" / "config.json"
    if path.is_file():
        return family_of_class(json.loads(path.read_text()).get("_class_name", ""))
    from diffusers import ConfigMixin

    class _Any(ConfigMixin):
        config_name = "config.json"

    return family_of_class(_Any.load_config(model, subfolder="transformer").get("_class_name", ""))


def model_configs(model: str, family: str | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, transformer config, VAE config) of a student model: config files only, no weights.

    "tiny" / "tiny-wan" give the tiny presets' configs; a folder or hub id its transformer/ and vae/
    config.json (a student folder without vae/ cannot say its compression: pass a full model folder).
    """
    family = infer_family(model, family)
    if model == "tiny":
        from stages.families.cogvideox.transformer import tiny_transformer_config
        from stages.families.cogvideox.encoders import TINY_VAE_CONFIG

        return family, tiny_transformer_config(), dict(TINY_VAE_CONFIG)
    if model == "tiny-wan":
        from stages.families.wan.family import tiny_transformer_config as tiny_wan
        from stages.families.wan.encoders import TINY_WAN_VAE_CONFIG

        return family, tiny_wan(), dict(TINY_WAN_VAE_CONFIG)
    if family == "ltx":
        from stages.families.ltx.family import model_configs as ltx_configs

        known = ltx_configs(model)
        if known is not None:
            return family, *known
    from stages.families.cogvideox.family import COGVIDEOX_15_KNOWN, COGVIDEOX_15_VAE
    from stages.families.wan.family import KNOWN_TRANSFORMERS as WAN_KNOWN, KNOWN_VAES as WAN_VAES, WAN21_VAE

    if model in WAN_KNOWN:  # published configs known without a download
        return family, dict(WAN_KNOWN[model]), dict(WAN_VAES.get(model, WAN21_VAE))
    if model in COGVIDEOX_15_KNOWN:
        return family, dict(COGVIDEOX_15_KNOWN[model]), dict(COGVIDEOX_15_VAE)
    from diffusers import ConfigMixin

    class _Any(ConfigMixin):
        config_name = "config.json"

    try:
        return family, dict(_Any.load_config(model, subfolder="transformer")), dict(_Any.load_config(model, subfolder="vae"))
    except (OSError, EnvironmentError) as exc:
        raise ValueError(f"student.model={model!r}: cannot read transformer/config.json and vae/config.json ({exc})") from None


def geometry_of(model: str, family: str | None = None) -> Geometry:
    """The token-grid geometry of a student model, from its configs (see model_configs)."""
    family, transformer, vae = model_configs(model, family)
    return get_student(family).geometry(transformer, vae)


def student_for(model: str, family: str | None = None) -> Student:
    return get_student(infer_family(model, family))
