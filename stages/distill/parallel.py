"""The parallelism layer of stage two: how ranks share the student, apart from the model code.

    ddp   DistributedDataParallel over the whole DistillModel (world 1: the bare module).
    fsdp  FSDP2: `fully_shard` on every transformer block, then the projector, then the root. Trainable
          parameters stay fp32 (the masters); frozen ones keep the student dtype. Blocks all-gather in
          the autocast dtype and reduce-scatter gradients in fp32 (MixedPrecisionPolicy).
    hsdp  the same on a 2-D mesh (replicate x shard): shards within a node, replicas across nodes.
    fsdp with parallel.context = n > 1: a ("dp", "ring", "ulysses") mesh of world/n x 1 x n; each run of n
          consecutive ranks is one context group (the family splits a sample's tokens over it, diffusers' plan)
          and reads one batch. The transformer is sharded over all ranks and its gradients reduced as
          sum / dp: a context rank's gradient is its tokens' share (stages/families/context_parallel.py), so
          the group's is their sum and the data-parallel mean is that over dp. The projector sees the gathered
          tokens, the same on every rank of a group: it is sharded over "dp" alone, its gradients the mean over dp.

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


def context_mesh(world: int, context: int, device: torch.device):
    """The ("dp", "ring", "ulysses") mesh of world/context x 1 x context (diffusers' context parallelism names
    "ring" and "ulysses"; ring stays 1: see stages/families/context_parallel.py). Rank r is in context group r // context."""
    from torch.distributed.device_mesh import init_device_mesh

    if world % context:
        from stages.config.loader import ConfigError

        raise ConfigError(f"parallel.context={context} does not divide the world size {world} (torchrun --nproc_per_node x nodes)")
    ensure_process_group(device)
    return init_device_mesh(device.type, (world // context, 1, context), mesh_dim_names=("dp", "ring", "ulysses"))


def data_rank(rank: int, world: int, context: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel world): the ranks of one context group read the same batches
    (context_mesh's layout: rank r is group r // context)."""
    return rank // context, max(world // context, 1)


def wrap(
    model: nn.Module,
    strategy: str,
    world: int,
    device: torch.device,
    param_dtype: torch.dtype | None,
    shard_size: int | None = None,
    reshard_after_forward: bool = True,
    context_mesh: object | None = None,
) -> nn.Module:
    """Apply `strategy` to a DistillModel (attributes .transformer and .projector); returns the module to call.

    param_dtype: the dtype blocks compute in under FSDP (None: the parameters' own, e.g. fp32 on CPU).
    For fsdp/hsdp the model is sharded in place and returned itself (FSDP2 changes its class).
    context_mesh: `context_mesh(...)`'s mesh when parallel.context > 1 (fsdp only), else None.
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
    if context_mesh is not None and strategy != "fsdp":
        raise ValueError(f"parallel.context > 1 needs parallel.strategy=fsdp, got {strategy}")
    # context: the transformer over every rank (gradients sum / dp), the projector over "dp" (mean over dp)
    mesh = device_mesh(strategy, world, device, shard_size) if context_mesh is None else context_mesh._flatten("dp_cp")
    projector_mesh = mesh if context_mesh is None else context_mesh["dp"]
    divide = None if context_mesh is None else float(context_mesh["dp"].size())
    blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in _blocks(model.transformer):
        fully_shard(block, mesh=mesh, mp_policy=blocks, reshard_after_forward=reshard_after_forward)
        if divide is not None:
            _divide_gradients(block, divide, device)
    if model.projector is not None:
        # The projector is small and scores the loss: it computes in fp32, and stays gathered from its
        # forward to the backward because the loss also calls its mask head (a method, not forward).
        fully_shard(model.projector, mesh=projector_mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32), reshard_after_forward=False)
        register_fsdp_forward_method(model.projector, "mask_logits")
    fully_shard(model, mesh=mesh, mp_policy=blocks, reshard_after_forward=reshard_after_forward)
    if divide is not None:
        _divide_gradients(model, divide, device)  # the root's own: the transformer's weights outside the blocks
    log.info("FSDP2 (%s) over %d ranks: %d blocks sharded, all-gather %s%s", strategy, world,
             len(_blocks(model.transformer)), param_dtype or "param dtype",
             f"; context groups of {context_mesh['ulysses'].size()} ranks" if context_mesh is not None else "")
    return model


def _divide_gradients(module: nn.Module, factor: float, device: torch.device) -> None:
    """Reduce `module`'s gradients as sum / factor. A custom factor is NCCL's PreMulSum, which gloo lacks: on
    CPU the reduction is a plain sum with the division apart (FSDP2's force-sum mode)."""
    module.set_gradient_divide_factor(factor)
    if device.type != "cuda":
        module.set_force_sum_reduction_for_comms(True)


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
