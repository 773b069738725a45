"""Selective activation checkpointing (student.checkpointing): which transformer blocks recompute their
activations in backward instead of keeping them.

    all        every block (diffusers' own checkpointing; the default, as student.gradient_checkpointing=true)
    none       no block (fastest, the most memory)
    every:N    blocks 0, N, 2N, ...
    blocks:K   K blocks spread evenly over the stack (i * L // K for i < K)
    auto       resolved before the model loads by the memory plan (memory_plan.MemoryPlan.fastest_fit):
               the fewest checkpointed blocks whose planned peak fits the GPU

Checkpointing changes where activations live, never the maths: the same loss and gradients (non-reentrant
torch.utils.checkpoint, as diffusers uses, so the feature tap keeps its graph; see tap.py). A block that is
not checkpointed runs as a plain call inside the family's forward (diffusers hands each block to
`_gradient_checkpointing_func` when checkpointing is on; ours checkpoints only the chosen ones).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stages.config.distill import parse_checkpointing


def checkpointed_blocks(spec: str, num_blocks: int) -> list[int]:
    """0-based indices of the blocks `spec` checkpoints ("auto" must be resolved first)."""
    kind, n = parse_checkpointing(spec)
    if kind == "all":
        return list(range(num_blocks))
    if kind == "none":
        return []
    if kind == "every":
        return list(range(0, num_blocks, n))
    if kind == "blocks":
        k = min(n, num_blocks)
        return [i * num_blocks // k for i in range(k)]
    raise ValueError("student.checkpointing=auto is resolved by the memory plan before the model is configured")


def spec_for(count: int, num_blocks: int) -> str:
    """The spec that checkpoints `count` of `num_blocks` blocks ("none", "all" or "blocks:K")."""
    return "none" if count <= 0 else "all" if count >= num_blocks else f"blocks:{count}"


def apply_checkpointing(transformer: nn.Module, blocks: Sequence[nn.Module], spec: str) -> list[int]:
    """Turn checkpointing on for the blocks `spec` names (off for the rest); returns their indices."""
    chosen = checkpointed_blocks(spec, len(blocks))
    if not chosen:
        transformer.disable_gradient_checkpointing()
    elif len(chosen) == len(blocks):
        transformer.enable_gradient_checkpointing()  # diffusers' default function: as before this switch
    else:
        selected = {id(blocks[i]) for i in chosen}  # the block objects (FSDP2 shards them in place: same objects)

        def some_blocks(module: nn.Module, *args):
            if id(module) in selected:
                return checkpoint(module.__call__, *args, use_reentrant=False)
            return module(*args)

        transformer.enable_gradient_checkpointing(some_blocks)
    return chosen
