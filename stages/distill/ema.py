"""EMA of the student's trainable weights (train.ema.decay): a shadow copy updated after each optimiser step.

    shadow = decay * shadow + (1 - decay) * weight        (torch.lerp_, in fp32, in place)

The shadow covers the transformer's trainable parameters (the LoRA adapter, or every weight of a full
fine-tune; not the projector, which inference never uses). It is a clone of each fp32 master, so under
FSDP2 it is a DTensor sharded exactly like its parameter: no rank holds more than its shard, and DCP
saves and reshards it with the weights. Keys are the checkpoint's ("transformer.<parameter name>"), so
the export helpers that read trained weights read the shadow the same way.
"""

from __future__ import annotations

import torch
from torch import nn

PREFIX = "transformer."
FILE = "ema.safetensors"  # in a local (DDP) checkpoint folder, beside model.safetensors


class EMA:
    def __init__(self, transformer: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema.decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {PREFIX + n: p for n, p in transformer.named_parameters() if p.requires_grad}
        with torch.no_grad():  # starts at the initial weights (LoRA B = 0: the base model)
            self.shadow = {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step from the parameters' current values (call after optimizer.step)."""
        for key, p in self.params.items():
            self.shadow[key].lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors, local (CPU, contiguous) for a safetensors file."""
        return {k: v.detach().contiguous().cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        missing, extra = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
        if missing or extra:
            raise ValueError(f"{source}: EMA weights do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
        with torch.no_grad():
            for k, v in self.shadow.items():
                v.copy_(state[k].to(v.device, v.dtype))

    def full_state(self) -> dict[str, torch.Tensor]:
        """Collective under FSDP (every rank calls it): the unsharded shadow on CPU, without the prefix."""
        from stages.distill.parallel import full_tensor

        return {k[len(PREFIX):]: full_tensor(v.detach()).cpu() for k, v in self.shadow.items()}
