"""What a column producer must provide to the extraction worker.

A column has a cheap *spec* (name, producer config, array schema, attrs), computable in the
driver without loading any model, and a heavy *producer*, built once per worker, that turns a
decoded clip into that column's arrays. The stage code registers both in a registry module
(default `stages.extract.columns.registry`), resolved by name so Ray workers import it themselves.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stages.store import ArraySpec


@dataclass
class ColumnSpec:
    name: str
    config: dict  # everything that determines the column's content: hashed into the cache key
    schema: dict[str, ArraySpec]  # per-clip arrays (leading clip axis implied)
    attrs: dict = field(default_factory=dict)  # descriptive metadata readers need (e.g. VAE scaling factor)


class ColumnProducer(Protocol):
    def column_arrays(self) -> dict[str, np.ndarray]:
        """Arrays computed once per column (e.g. the empty-prompt embedding); {} if none."""

    def produce(self, clip: Any, entry: Any) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays of one clip, without the clip axis; JSON-able record fields) for a DecodedClip and ClipEntry.

        Raise to fail this clip in this column only; the worker records the reason in the ledger.

        Optional, found by the worker with getattr: `produce_batch(clips, entries)` -> one result per
        clip, `(arrays, record)` or the Exception that failed that clip (the worker then hands it
        groups of `teacher.clip_batch` clips); `device`, the torch device it computes on (the worker
        synchronises CUDA before reading the column's model timer).
        """


class ColumnRegistry(Protocol):
    def column_spec(self, name: str, cfg: Any) -> ColumnSpec: ...

    def make_producer(self, name: str, cfg: Any, device: str) -> ColumnProducer: ...


def load_registry(module: str) -> ColumnRegistry:
    """Import the registry module (`column_spec` and `make_producer` functions) by name."""
    mod = importlib.import_module(module)
    for fn in ("column_spec", "make_producer"):
        if not hasattr(mod, fn):
            raise ImportError(f"column registry {module} has no function '{fn}'")
    return mod  # type: ignore[return-value]
