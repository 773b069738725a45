"""Checkpoints of sharded (FSDP/HSDP) runs through torch.distributed.checkpoint (DCP), committed atomically.

    <out>/checkpoints/step-000006/
        .metadata, __0_0.distcp, ...     DCP: trainable weights + AdamW state (+ the EMA shadow), each rank writes its shards
        rng-rank<r>.safetensors          torch CPU (and CUDA) generator state of rank r
        state.json                       step, stream position, LR schedule, world size, config, format "dcp"

Every rank writes into one temporary folder on a filesystem all ranks share; rank 0 writes state.json
and renames the folder into place only after every rank finished (a barrier), so a crash leaves no
half checkpoint under a real name. Frozen base weights are not saved: they come from the model.

World size: DCP reshards on load, so weights and optimizer state resume on another world size (e.g.
8 -> 4 GPUs). The data order then differs (the stream splits shards by rank), so such a resume is a
continuation, not the same trajectory; the same world size resumes loss for loss.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from stages.distill.checkpoint.local import PREFIX, commit

log = logging.getLogger(__name__)

FORMAT = "dcp"


def _options(full: bool = False, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full, strict=strict)


def save_sharded(out_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler, extra: dict, keep_last: int,
                 tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Collective: every rank calls it. Returns the committed folder. tensors: more DCP entries
    ({"ema": {name: DTensor}}), saved and resharded like the weights."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank = dist.get_rank()
    root = Path(out_dir) / "checkpoints"
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{final.name}"  # one name all ranks agree on without a broadcast
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-write
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": model_state, "optim": optim_state, **(tensors or {})}, checkpoint_id=str(tmp))
    save_file(_rng_state(), str(tmp / f"rng-rank{rank}.safetensors"))
    dist.barrier()
    if rank == 0:
        commit(tmp, final, {"step": step, "format": FORMAT, "scheduler": scheduler.state_dict(), **extra}, keep_last)
    dist.barrier()
    return final


def load_sharded(path: Path, model: torch.nn.Module, optimizer, scheduler, tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> dict:
    """Collective: restore trainable weights, AdamW state, LR schedule and this rank's RNG; returns state.json.
    tensors: the extra DCP entries save_sharded was given, loaded in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("format") != FORMAT:
        raise ValueError(
            f"{path} was written by a {state.get('format', 'ddp')} run (rank-0 safetensors); "
            f"resume it with parallel.strategy=ddp, or start this sharded run in a new folder"
        )
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    holder = {"model": model_state, "optim": optim_state, **(tensors or {})}
    dcp.load(holder, checkpoint_id=str(path))
    # strict=False: the frozen base weights are not in the checkpoint (ignore_frozen_params), and a strict load
    # counts them as missing (a LoRA run under FSDP could not resume). Nothing trainable is skipped: holder holds
    # exactly the trainable keys, and dcp.load above fails on any the checkpoint lacks.
    set_state_dict(model, optimizer, model_state_dict=holder["model"], optim_state_dict=holder["optim"], options=_options(strict=False))
    scheduler.load_state_dict(state["scheduler"])
    rng = path / f"rng-rank{dist.get_rank()}.safetensors"
    if rng.exists():  # absent when resuming on more ranks than wrote the checkpoint
        _set_rng_state(load_file(str(rng)))
    return state


def gather_full_state(model: torch.nn.Module, frozen: bool) -> dict[str, torch.Tensor]:
    """Collective: the unsharded state dict on rank 0 (CPU, fp32 masters); {} on other ranks.

    frozen=False keeps only trainable parameters (a LoRA export); True includes every weight and
    buffer (a full fine-tune's diffusers folder).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=not frozen)
    return get_model_state_dict(model, options=options)


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
