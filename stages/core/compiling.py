"""`teacher.compile` / `encoders.compile`: torch.compile of a producer's heavy modules, on CUDA only.

On CPU the switch is ignored with a logged note: inductor reorders float sums, and CPU stores are
meant to be bit-identical run to run and to the eager path (the switch is not part of the column
key, like `image_batch`). Modules are compiled in place (`nn.Module.compile`), so state-dict keys
do not change, and lazily: the first call of each compiled module pays the compile time.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def compile_modules(what: str, modules: dict[str, tuple[torch.nn.Module, dict[str, Any]]], device: torch.device) -> list[str]:
    """Compile each module (name -> (module, torch.compile kwargs)) in place on CUDA; return the names compiled."""
    if device.type != "cuda":
        log.warning("%s.compile=true ignored on %s: torch.compile is applied on CUDA only (CPU keeps the eager path)", what, device)
        return []
    for module, kwargs in modules.values():
        module.compile(**kwargs)
    log.info("%s: torch.compile on %s (compiled on first use)", what, ", ".join(modules))
    return list(modules)


def sam2_compile_targets(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """SAM2's image encoder (static shapes: image_batch frames, the last batch smaller) and memory
    attention (dynamic: the number of memories and object pointers grows over the first frames), as
    SAM2's own VOS predictor compiles them."""
    return {
        "image_encoder": (model.image_encoder, {"dynamic": False}),
        "memory_attention": (model.memory_attention, {"dynamic": True}),
    }


def vae_compile_targets(vae: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """The CogVideoX VAE encoder (tiles and frame chunks vary in shape: torch decides what is dynamic)."""
    return {"vae.encoder": (vae.encoder, {})}
