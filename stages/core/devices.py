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
