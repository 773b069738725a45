"""The parallelism layer of stage two: how ranks share the student, apart from the model code.

    ddp   DistributedDataParallel over the whole DistillModel (world 1: the bare module).
    fsdp  FSDP2: `fully_shard` on every transformer block, then the projector, then the root. Trainable
          parameters stay fp32 (the masters); frozen ones keep the student dtype. Blocks all-gather in
          the autocast dtype and reduce-scatter gradients in fp32 (MixedPrecisionPolicy).
    hsdp  the same on a 2-D mesh (replicate x shard): shards within a node, replicas across nodes.

The trainer calls `wrap`, `gradient_sync` and `is_sharded`; nothing else here knows about losses.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def ensure_process_group(device: torch.device) -> None:
    """FSDP needs a process group even for one process (a plain `sam2videox distill` on one GPU)."""
    if dist.is_initialized():
        return
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
    )


def device_mesh(strategy: str, world: int, device: torch.device, shard_size: int | None = None):
    """1-D mesh ("shard") for fsdp; 2-D ("replicate", "shard") for hsdp with `shard_size` ranks per group."""
    from torch.distributed.device_mesh import init_device_mesh

    if strategy == "fsdp":
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    size = shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world % size:
        raise ValueError(f"parallel.shard_size={size} does not divide the world size {world}")
    return init_device_mesh(device.type, (world // size, size), mesh_dim_names=("replicate", "shard"))


def wrap(
    model: nn.Module,
    strategy: str,
    world: int,
    device: torch.device,
    param_dtype: torch.dtype | None,
    shard_size: int | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Apply `strategy` to a DistillModel (attributes .transformer and .projector); returns the module to call.

    param_dtype: the dtype blocks compute in under FSDP (None: the parameters' own, e.g. fp32 on CPU).
    For fsdp/hsdp the model is sharded in place and returned itself (FSDP2 changes its class).
    """
    if strategy == "ddp":
        if world == 1:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if strategy not in ("fsdp", "hsdp"):
        raise ValueError(f"unknown parallel.strategy {strategy!r}; valid: ddp, fsdp, hsdp")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    ensure_process_group(device)
    mesh = device_mesh(strategy, world, device, shard_size)
    blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in _blocks(model.transformer):
        fully_shard(block, mesh=mesh, mp_policy=blocks, reshard_after_forward=reshard_after_forward)
    if model.projector is not None:
        # The projector is small and scores the loss: it computes in fp32, and stays gathered from its
        # forward to the backward because the loss also calls its mask head (a method, not forward).
        fully_shard(model.projector, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32), reshard_after_forward=False)
        register_fsdp_forward_method(model.projector, "mask_logits")
    fully_shard(model, mesh=mesh, mp_policy=blocks, reshard_after_forward=reshard_after_forward)
    log.info("FSDP2 (%s) over %d ranks: %d blocks sharded, all-gather %s", strategy, world,
             len(_blocks(model.transformer)), param_dtype or "param dtype")
    return model


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter of accumulation micro-steps (enabled=False)."""
    if enabled:
        yield
    elif isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    elif is_sharded(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (sharded parameter, partial norm) as the plain tensor it stands for; others unchanged."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def _blocks(transformer: nn.Module) -> nn.ModuleList:
    """The transformer's block list, each block one FSDP unit, as its family names it (Student.blocks)."""
    from stages.families.registry import student_of

    return student_of(transformer).blocks(transformer)
