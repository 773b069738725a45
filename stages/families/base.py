"""One interface for every student family: what differs between them lives behind it.

A family folder (stages/families/<family>/family.py, registered in stages/families/registry.py) says how to load its transformer and
training scheduler (diffusers folder, hub id or its tiny random preset), its geometry (VAE compression
and patch sizes, so the teacher's token grid follows from the configs), how one training step's
inputs and loss are built (objective: noise, target, weight), where the tap reads video tokens and
which modules LoRA adapts, and which stock pipeline loads the exported LoRA. The trainer, the tap,
the data checks and the CLI only wire them; the family comes from `student.family` or from the
registry (stages/families/registry.py), which asks each family what it knows.
It also says what stage one stores for it (`encodings_layout`, `load_encoders`: the one encodings producer,
stages/extract/columns/encodings.py, runs over them) and what the memory plan needs (configs on the meta device).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

import torch

from stages.core.grid import TokenGrid, token_grid as grid_for_clip
from stages.store import ArraySpec


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


@dataclass(frozen=True)
class EncodingsLayout:
    """What a family's encodings column holds, from config files alone (no weights): the producer config's
    family parts (hashed into the column key), the array schema, the column attrs, the VAE compression."""

    encoders: dict[str, Any]  # the encoders.* settings that determine the content (compute_dtype is added)
    model: dict[str, Any]  # the models' configs (vae, text encoder, ...), and a tiny preset's version
    schema: dict[str, ArraySpec]  # per-clip arrays: latents, prompt_embeds, prompt_mask, the task's condition
    attrs: dict[str, Any]  # what readers need: scaling / normalisation, compression, the prompt's encoding
    spatial: int  # VAE spatial compression (pixels per latent side)
    temporal: int  # VAE temporal compression


class Encoders(Protocol):
    """A family's VAE and text encoder(s), loaded once per extraction worker (stages/families/<family>/encoders.py)."""

    device: Any  # torch.device the models run on
    dtype: Any  # torch.dtype they compute in

    def check_layout(self, layout: EncodingsLayout, model: str) -> None:
        """Raise (one line) when the loaded weights disagree with the configs the layout came from."""

    def column_arrays(self, encoders_cfg: Any) -> dict[str, np.ndarray]:
        """Arrays stored once per column (the empty prompt's embeddings, for caption dropout)."""

    def encode_clip(self, frames: np.ndarray, key: str, caption: str, encoders_cfg: Any) -> tuple[dict[str, np.ndarray], dict]:
        """uint8 [F, H, W, 3] of one clip -> (the layout's arrays, record fields; "caption_truncated": tokens when cut)."""


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

    # -- what the registry asks (stages/families/registry.py): which names and classes are this family's
    tiny_presets: tuple[str, ...] = ()  # student.model names of the tiny random presets this family builds
    encoder_presets: tuple[str, ...] = ()  # encoders.model names of its tiny encoder presets
    vae_classes: tuple[str, ...] = ()  # diffusers VAE class names in vae/config.json's "_class_name"
    hub_name_prefixes: tuple[str, ...] = ()  # lower-case name prefixes of its published hub ids (no download)

    def tiny_encoders(self, task: str) -> str:
        """The tiny encoder preset (encoders.model) whose store the tiny student of `task` trains on."""
        raise NotImplementedError(f"the {self.family} family has no tiny encoder preset")

    def known_configs(self, model: str) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        """(transformer config, VAE config) of a tiny preset or known hub id without a download, else None."""
        return None

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

    def single_size(self, transformer_config: Mapping[str, Any]) -> str | None:
        """Why this model trains at one size only (video.buckets is then refused), or None (default: any size its
        geometry divides)."""
        return None

    @abstractmethod
    def token_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """(T, h, w) token grid of a stored latent of shape (..., T, H8, W8)."""

    @abstractmethod
    def input_grid(self, transformer_config: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """(T, h, w) token grid of a transformer input, in this family's layout."""

    def forward_grid(self, transformer_config: Any, model_kwargs: Mapping[str, Any]) -> tuple[int, int, int]:
        """(T, h, w) token grid of one forward's kwargs; default: from its hidden_states (input_grid). A family
        whose input is packed tokens without a grid reads it from its own kwargs instead."""
        return self.input_grid(transformer_config, model_kwargs["hidden_states"])

    def rotary(self, transformer_config: Any, latent_shape: Sequence[int], device: torch.device) -> Any:
        """Positional embedding computed outside the model once per run (None: the model computes its own)."""
        return None

    @abstractmethod
    def text_dim(self, transformer_config: Any) -> int: ...

    def condition_arrays(self, task: str) -> tuple[str, ...]:
        """The encodings arrays a task's condition reads besides latents and prompts (i2v: the first frame's)."""
        return ("image_latents",) if task == "i2v" else ()

    def starts_from_first_frame(self, task: str) -> bool:
        """Whether a sample of `task` starts from a real clip's first frame (image-to-video): evaluation then
        prompts its judge with that clip's frame-0 prompt; text-to-video samples are prompted on their own."""
        return bool(self.condition_arrays(task))

    def num_blocks(self, transformer_config: Any) -> int:
        return int(transformer_config.num_layers)

    def check_latent_grid(self, transformer_config: Any, latent_shape: Sequence[int]) -> str | None:
        """Why a stored latent grid (T, H8, W8) cannot train this model, or None (default: token_grid's refusal)."""
        try:
            self.token_grid(transformer_config, latent_shape)
        except ValueError as exc:
            return str(exc)
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

    # -- memory plan (the transformer on the meta device, its token count)
    def transformer_from_config(self, config: Mapping[str, Any]) -> torch.nn.Module:
        """The transformer from its config (on the current device: the memory plan builds it on meta)."""
        import diffusers

        return getattr(diffusers, self.transformer_class).from_config(dict(config))

    def plan_latent_shape(self, transformer_config: Any, model: str) -> tuple[int, int, int]:
        """The latent (T, H8, W8) a memory plan assumes when the run does not say: the model's sample size."""
        raise NotImplementedError(f"the {self.family} student has no default sample size: pass latent_shape")

    def attention_tokens(self, transformer_config: Any, video_tokens: int, text_len: int | None) -> int:
        """Tokens per sample the blocks attend over (joint text + video for some families); default video only."""
        return video_tokens

    # -- stage one: the encodings column (stages/extract/columns/encodings.py runs these)
    def encodings_layout(self, encoders_cfg: Any, video_cfg: Any) -> EncodingsLayout:
        """The column's layout for `encoders.*` and `video.*` (an ExtractConfig's), from config files alone."""
        raise NotImplementedError(f"the {self.family} family has no encoders for stage one")

    def load_encoders(self, encoders_cfg: Any, device: str) -> Encoders:
        """The VAE and text encoder(s) of encoders_cfg.model, in eval mode on `device` (a worker's)."""
        raise NotImplementedError(f"the {self.family} family has no encoders for stage one")

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

    # -- context parallelism (parallel.context > 1: stages/distill/parallel.py builds the mesh, the trainer calls this)
    context_parallel: bool = False  # whether its diffusers transformer has a context-parallel plan (a _cp_plan)

    def check_context_parallel(self, degree: int) -> None:
        """Refuse parallel.context=degree > 1 in one line when the family cannot split a sample's sequence (the
        trainer asks first, before any process group or model)."""
        if degree > 1 and not self.context_parallel:
            from stages.config.loader import ConfigError

            raise ConfigError(f"parallel.context={degree}: the {self.family} transformer ({self.transformer_class}) has no "
                              f"context-parallel plan in diffusers (no _cp_plan); use parallel.context=1")

    def enable_context_parallel(self, transformer: torch.nn.Module, mesh: Any, video_tokens: int) -> None:
        """Split each sample's token sequence over the mesh's context ranks (diffusers' context parallelism,
        stages/families/context_parallel.py). mesh: a DeviceMesh ("dp", "ring", "ulysses"); video_tokens: T*h*w."""
        self.check_context_parallel(mesh["ulysses"].size())
        raise NotImplementedError(f"the {self.family} family says context_parallel=True but does not enable it")

    def full_sequence(self, transformer: torch.nn.Module, video_tokens: torch.Tensor) -> torch.Tensor:
        """A block's video tokens as the whole sequence [B, T*h*w, D]: under context parallelism a block's output
        is this rank's shard, gathered here (the tap reads blocks); otherwise unchanged (this default)."""
        return video_tokens

    # -- validation (stages/distill/validation.py: the trainer's own objective at fixed timesteps and noise)
    def validation_inputs(self, ctx: Any, batch: Mapping[str, torch.Tensor], timestep: int, generator: torch.Generator) -> Any:
        """prepare_inputs at the fixed `timestep` (0..N-1, no t draw) and without image or caption dropout (the
        conditioning is the clip's own); every other draw (posterior, noise) from `generator`. loss_from_output scores it."""
        raise ValueError(f"student family {self.family!r} has no validation objective: set eval.every=0")

