"""`teacher.compile` / `encoders.compile` / `student.compile`: torch.compile of a model's heavy modules.

Producers (teacher, encoders) compile on CUDA only: on CPU the switch is ignored with a logged note,
because inductor reorders float sums and CPU stores are meant to be bit-identical run to run and to
the eager path (the switch is not part of the column key, like `image_batch`). The student
(`student.compile`, regional: each transformer block) compiles on CPU too (`cpu=True`): training
makes no bit-identity promise, and the CPU tests compare compiled steps with eager ones.
Modules are compiled in place (`nn.Module.compile`), so state-dict keys do not change, the module
object stays the one hooks and FSDP2 units were attached to, and lazily: the first call of each
compiled module pays the compile time.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)


def compile_modules(what: str, modules: dict[str, tuple[torch.nn.Module, dict[str, Any]]], device: torch.device,
                    cpu: bool = False) -> list[str]:
    """Compile each module (name -> (module, torch.compile kwargs)) in place on CUDA (and on CPU with
    cpu=True); return the names compiled."""
    if device.type != "cuda" and not cpu:
        log.warning("%s.compile=true ignored on %s: torch.compile is applied on CUDA only (CPU keeps the eager path)", what, device)
        return []
    for module, kwargs in modules.values():
        module.compile(**kwargs)
    names = list(modules)
    shown = ", ".join(names) if len(names) <= 4 else f"{len(names)} modules ({names[0]} .. {names[-1]})"
    log.info("%s: torch.compile on %s (compiled on first use)", what, shown)
    return names


def block_compile_targets(blocks: Sequence[torch.nn.Module], kwargs: dict[str, Any]) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """Regional compilation of a transformer: every block (name "blocks.i") with the same torch.compile kwargs.

    The blocks share one class, so dynamo traces one of them and reuses the graph for the others (with
    inline_inbuilt_nn_modules, torch's default since 2.5, a block's parameters are graph inputs, not
    constants): compile time is one block's, not the model's, as diffusers' `compile_repeated_blocks`."""
    return {f"blocks.{i}": (block, dict(kwargs)) for i, block in enumerate(blocks)}


def sam2_compile_targets(model: torch.nn.Module, loop: bool = False) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """SAM2's image encoder (static shapes: image_batch frames, the last batch smaller) and memory
    attention (dynamic: the number of memories and object pointers grows over the first frames), as
    SAM2's own VOS predictor compiles them. loop (teacher.compile_loop): also the rest of the per-frame
    loop, the memory encoder, prompt encoder and mask decoder (static shapes per clip batch, as the VOS
    predictor compiles them: it reports an accuracy regression with dynamic shapes). Default mode, not the VOS
    predictor's max-autotune: its CUDA graphs would overwrite the memories the tracking state keeps."""
    targets = {
        "image_encoder": (model.image_encoder, {"dynamic": False}),
        "memory_attention": (model.memory_attention, {"dynamic": True}),
    }
    if loop:
        targets |= {name: (getattr(model, name), {"dynamic": False}) for name in ("memory_encoder", "sam_prompt_encoder", "sam_mask_decoder")}
    return targets


def vae_compile_targets(vae: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """The CogVideoX VAE encoder (tiles and frame chunks vary in shape: torch decides what is dynamic)."""
    return {"vae.encoder": (vae.encoder, {})}
