"""Resumable training checkpoints: safetensors for tensors, JSON for the rest, committed atomically.

    <out>/checkpoints/step-000006/
        model.safetensors      trainable weights (LoRA or all) and the projector, by parameter name
        ema.safetensors        train.ema: the EMA shadow of the transformer's trainable weights (runs with EMA only)
        optimizer.safetensors  AdamW moments and step counters, keyed "<param index>.<name>"
        state.json             step, stream position, LR-scheduler state, optimizer param groups, config

A checkpoint is written into a temporary folder and renamed into place, so a crash mid-write
leaves no half checkpoint under a real name; the newest complete one wins on `--resume`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

PREFIX = "step-"


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """{"<module>.<param name>": tensor} of every parameter that requires grad."""
    out = {}
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            if p.requires_grad:
                out[f"{prefix}.{name}"] = p.detach().contiguous().cpu()
    return out


def load_trainable_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor], source: str) -> None:
    wanted = {f"{prefix}.{n}": p for prefix, m in modules.items() for n, p in m.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    if missing or extra:
        raise ValueError(f"{source}: checkpoint does not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for name, p in wanted.items():
            p.copy_(state[name].to(p.device, p.dtype))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slot in sd["state"].items():
        for name, value in slot.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(out_dir: Path, step: int, modules: dict[str, torch.nn.Module], optimizer, scheduler, extra: dict, keep_last: int,
                    files: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep_last`.
    files: more safetensors files of the checkpoint, {file name: tensors} (e.g. ema.safetensors)."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_file(trainable_state(modules), str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        for name, tensors in (files or {}).items():
            save_file(tensors, str(tmp / name))
        state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), **extra}
        return commit(tmp, final, state, keep_last)
    except (OSError, SafetensorError) as exc:  # disk full, quota, read-only: the committed checkpoints stay
        shutil.rmtree(tmp, ignore_errors=True)  # give back what the half write took
        raise CheckpointWriteError(final, exc) from None


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, permission, read-only filesystem), naming it.

    An OSError, so the CLI prints it as one line like any other I/O error; nothing committed is lost."""

    def __init__(self, final: Path, cause: BaseException):
        kept = [p.name for p in list_checkpoints(final.parent.parent)]
        super().__init__(
            f"could not write checkpoint {final} ({type(cause).__name__}: {cause}); its partial folder was removed, "
            f"committed checkpoints are intact ({', '.join(kept) or 'none yet'}): free space or fix the folder, then rerun with --resume"
        )


def commit(tmp: Path, final: Path, state: dict, keep_last: int) -> Path:
    """Write state.json (last: it marks a checkpoint complete), rename the folder into place, prune old ones."""
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(final.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temp(out_dir: Path) -> list[Path]:
    """Delete the temporary folders of checkpoint writes a killed run left behind (called at start,
    before this run writes any). Returns what was removed."""
    root = Path(out_dir) / "checkpoints"
    stale = sorted(root.glob(".tmp-*")) if root.exists() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by an interrupted checkpoint write", path)
    return stale


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are not listed)."""
    root = Path(out_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").exists())


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, scheduler) -> dict:
    """Restore weights, optimizer and LR schedule from `path`; returns its state.json."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    load_trainable_state(modules, load_file(str(path / "model.safetensors")), str(path))
    _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state
