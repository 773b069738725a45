"""Projector to SAM2 space (F̂_diff = projector(block-L tokens)) and the mask-baseline head.

REPA-style MLP applied per token: D -> hidden -> ... -> hidden -> C_teacher with SiLU between
layers (method.md: 3072 -> 2048 -> 2048 -> 64 for CogVideoX-5B and maskmem features; 256 for the
memory_attention features extracted by default now). Trained with
the LoRA, never used at inference. Saved as safetensors + a JSON config, so loading needs no pickle
and no code beyond this file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_NAME = "projector.safetensors"
CONFIG_NAME = "projector.json"


@dataclass(frozen=True)
class ProjectorSpec:
    in_dim: int  # D: the student's width (num_attention_heads * attention_head_dim)
    out_dim: int  # C_teacher: channels of the teacher features
    hidden: int = 2048  # width of the hidden layers
    layers: int = 2  # hidden layers (2: D -> hidden -> hidden -> C)
    mask_head: bool = False  # add the 1-logit mask head (the mask-supervision baseline)


class Projector(nn.Module):
    """[..., D] -> [..., C] per token; works on [B, T, h, w, D] directly (Linear acts on the last axis)."""

    def __init__(self, spec: ProjectorSpec):
        super().__init__()
        if min(spec.in_dim, spec.out_dim, spec.hidden, spec.layers) < 1:
            raise ValueError(f"invalid projector spec {spec}")
        self.spec = spec
        dims = [spec.in_dim] + [spec.hidden] * spec.layers
        body: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.SiLU()]
        self.mlp = nn.Sequential(*body, nn.Linear(dims[-1], spec.out_dim))
        # Mask baseline: one logit per token from the projected (SAM2-space) features.
        self.mask_head = nn.Linear(spec.out_dim, 1) if spec.mask_head else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, T, h, w, D] (any dtype) -> projected [B, T, h, w, C] in the projector's dtype."""
        # a fresh tensor, not a view of the last Linear's: FSDP's backward hook must see the output itself
        return self.mlp(features.to(self.mlp[0].weight.dtype)).clone()

    def mask_logits(self, projected: torch.Tensor) -> torch.Tensor:
        """projected [B, T, h, w, C] -> subject-mask logits [B, T, h, w]."""
        if self.mask_head is None:
            raise RuntimeError("this projector was built without a mask head (ProjectorSpec.mask_head=False)")
        return self.mask_head(projected).squeeze(-1).clone()  # not a view (see forward)


def save_projector(projector: Projector, directory: str | Path) -> Path:
    """Write projector.safetensors + projector.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in projector.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(projector.spec), indent=2, sort_keys=True))
    return directory


def load_projector(directory: str | Path, device: str | torch.device = "cpu") -> Projector:
    """Rebuild a projector written by `save_projector` (weights in their saved dtype)."""
    directory = Path(directory)
    spec = ProjectorSpec(**json.loads((directory / CONFIG_NAME).read_text()))
    projector = Projector(spec)
    state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
    projector.to(device=device, dtype=next(iter(state.values())).dtype)
    projector.load_state_dict(state)
    return projector
