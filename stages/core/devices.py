"""Where and in what precision a model runs: one rule for the teacher, the encoders and the student."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; anything else as torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The requested dtype on a GPU; float32 on CPU, where half-precision matmuls and 3D convolutions
    are slow or missing and gain nothing."""
    if torch.device(device).type == "cpu":
        return torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def compute_dtype(dtype: str, device: str, gpus_per_worker: float) -> str:
    """The dtype a worker will really compute in, decided from the config alone so the driver can key
    the column by it: the configured one on a GPU, float32 on CPU (where half precision is slow).

    Keying by the configured name alone would let CPU-filled and GPU-filled shards share one column.
    Producers check their actual dtype against this (`check_compute_dtype`).
    """
    on_gpu = device.startswith("cuda") or (device == "auto" and gpus_per_worker > 0)
    return dtype if on_gpu else "float32"


def check_compute_dtype(column: str, declared: str, actual: object, device: object) -> None:
    actual = str(actual).removeprefix("torch.")
    if actual != declared:
        raise ValueError(
            f"the {column} column is keyed for {declared} compute but this worker runs {actual} on {device}: "
            f"set {column}'s device and ray.gpus_per_worker consistently (a GPU worker needs ray.gpus_per_worker > 0)"
        )
