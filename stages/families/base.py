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

FAMILIES = ("cogvideox", "wan")


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


def xformers_usable(transformer: torch.nn.Module, log: Any) -> bool:
    """Whether xformers can run `transformer` (CUDA and xformers importable); warns on `log` why not (SDPA then)."""
    if transformer.device.type != "cuda":
        log.warning("attention=xformers needs CUDA (model is on %s): using SDPA", transformer.device)
        return False
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        log.warning("attention=xformers but xformers is not installed: using SDPA")
        return False
    return True


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

    # -- inference (the stock pipeline of each task, and how to sample it: generate, in-training samples, evaluate)
    def export_pipeline_class(self, task: str | None = None):
        """The stock pipeline class whose save_lora_weights / lora_state_dict write and read this family's LoRA file
        (None: the family's first task; every task of a family shares its LoRA loader mixin)."""
        return self.pipeline_class(task or next(iter(self.pipeline_classes)))

    def inference_scheduler(self, student_model: str, task: str) -> Any:
        """The scheduler the stock pipeline of `task` samples with (from the student folder, or the tiny preset's)."""
        raise ValueError(f"student family {self.family!r} has no sampling pipeline")

    def pipeline_around(self, transformer: torch.nn.Module, student_model: str, encoders_model: str, task: str,
                        device: str | torch.device, dtype: torch.dtype, low_memory: bool = False) -> Any:
        """The stock diffusers pipeline of `task` around `transformer` (no copy; in-training samples pass the trainer's),
        with the encoders of `encoders_model`. low_memory: VAE slicing/tiling where the family has them."""
        raise ValueError(f"student family {self.family!r} has no sampling pipeline")

    def build_pipeline(self, student_model: str, encoders_model: str, lora_dir: str | Path | None, task: str,
                       device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
        """The stock pipeline of `task` from a student (folder, hub id or tiny preset), its encoders, and a LoRA
        folder loaded through the pipeline's own load_lora_weights (None: the base model)."""
        transformer, _ = self.load(student_model, task, dtype, device)
        pipe = self.pipeline_around(transformer, student_model, encoders_model, task, device, dtype)
        if lora_dir is not None:
            pipe.load_lora_weights(str(lora_dir))
        return pipe.to(device)

    def sample(self, pipe: Any, task: str, first_frame: Any, prompt: str, num_frames: int, height: int, width: int,
               steps: int, guidance: float, seed: int, max_text_len: int, dynamic_cfg: bool = False) -> Any:
        """uint8 [F, H, W, 3] from `pipe` (build_pipeline's): image-to-video tasks from first_frame (uint8 [H, W, 3],
        the sample's size), text-to-video ones from the prompt at height x width (first_frame ignored)."""
        raise ValueError(f"student family {self.family!r} has no sampling pipeline")

    # -- attention (configure_student calls it with student.attention)
    def set_attention(self, transformer: torch.nn.Module, backend: str) -> str:
        """Select `transformer`'s attention kernel; returns the backend used. "sdpa" (diffusers' default processors,
        torch SDPA) is every family's; a family that has another overrides this. Refuses the rest in one line."""
        if backend == "sdpa":
            return "sdpa"
        from stages.config.loader import ConfigError

        raise ConfigError(f"student.attention={backend}: the {self.family} student has no {backend} attention; use student.attention=sdpa")

    # -- validation (stages/distill/validation.py: the trainer's own objective at fixed timesteps and noise)
    def validation_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], timestep: int, generator: torch.Generator) -> Any:
        """prepare_inputs at the fixed `timestep` (0..N-1, no t draw) and without image or caption dropout (the
        conditioning is the clip's own); every other draw (posterior, noise) from `generator`. loss_from_output scores it."""
        raise ValueError(f"student family {self.family!r} has no validation objective: set eval.every=0")


def get_student(family: str) -> Student:
    if family == "cogvideox":
        from stages.families.cogvideox.family import CogVideoXStudent

        return CogVideoXStudent()
    if family == "wan":
        from stages.families.wan.family import WanStudent

        return WanStudent()
    raise ValueError(f"unknown student family {family!r}; valid: {', '.join(FAMILIES)}")


def family_of_class(class_name: str) -> str:
    """The family of a diffusers transformer class name (transformer/config.json's _class_name)."""
    for family in FAMILIES:
        if get_student(family).transformer_class == class_name:
            return family
    raise ValueError(f"transformer class {class_name!r} is no supported student; supported: CogVideoXTransformer3DModel, WanTransformer3DModel")


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
    from stages.families.wan.family import KNOWN_TRANSFORMERS as WAN_KNOWN

    if model in WAN_KNOWN:
        return "wan"
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
