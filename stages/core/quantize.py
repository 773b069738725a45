"""Compact storage of feature stacks: int8 with one float32 scale per token (symmetric, per vector).

A teacher feature stack [T, h, w, C] at 256 channels is 9 MB per direction in float16 at the real
size (13 x 30 x 45 tokens); int8 halves that. The scale is per token (the last axis is quantised
together), so a token's direction, which is all the LGF relations read (cosine similarities), keeps
a relative error of about 1 / 254 per channel whatever the token's norm.

A column stores a quantised array `name` (int8 [..., C]) beside `name_scale` (float32 [..., 1]) and
lists it in its attrs as {"quantized": {"name": QUANT_INT8}}; readers dequantise with `dequantize`.
"""

from __future__ import annotations

import numpy as np

QUANT_INT8 = "int8-per-token"  # the one scheme so far; the attrs name it so a later one can be told apart


def scale_name(name: str) -> str:
    return f"{name}_scale"


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., C] -> (int8 [..., C], float32 scale [..., 1]) with x ~= q * scale.

    scale = max |x| / 127 over the last axis; an all-zero token gets scale 0 (and dequantises to 0).
    """
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("cannot quantise non-finite values")
    peak = np.abs(x).max(axis=-1, keepdims=True)
    scale = (peak / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(int8 [..., C], float32 [..., 1]) -> float32 [..., C]."""
    return q.astype(np.float32) * np.asarray(scale, dtype=np.float32)


def quantized_arrays(attrs: dict) -> dict[str, str]:
    """{array name: scheme} of a column's quantised arrays (none for columns written before quantisation)."""
    return dict(attrs.get("quantized") or {})
