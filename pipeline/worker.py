"""One extraction worker: decode each clip of a shard once, run every pending column's producer, commit.

Runs in-process (no Ray import here), so the same code serves a Ray actor, a single-GPU box
without Ray, and tests. Models are built once per worker, on first use, and reused across shards.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from pipeline.corpus import ClipEntry
from pipeline.decode import ClipError, decode_clip
from pipeline.extract_config import ExtractConfig
from pipeline.fs import join
from pipeline.producer import ColumnProducer, load_registry
from pipeline.store import Column, FeatureStore

log = logging.getLogger(__name__)


@dataclass
class ShardReport:
    shard: int
    clips: int = 0  # clips attempted
    ok: dict[str, int] = field(default_factory=dict)  # column -> clips written
    failed: dict[str, list[dict]] = field(default_factory=dict)  # column -> ledger rows
    seconds: float = 0.0
    skipped: bool = False  # every requested column was already committed

    def to_json(self) -> dict:
        return self.__dict__.copy()


class ShardWorker:
    """Processes whole shards of one store for the configured columns."""

    def __init__(self, cfg: ExtractConfig, store_url: str, storage_options: dict | None = None, registry: str = "stages.extract.columns"):
        self.cfg = cfg
        self.store = FeatureStore(store_url, storage_options)
        self.snapshot = self.store.require_snapshot()
        self.registry = load_registry(registry)
        self.specs = {name: self.registry.column_spec(name, cfg) for name in cfg.columns}
        self.columns: dict[str, Column] = {
            name: self.store.create_column(name, s.config, s.schema, s.attrs) for name, s in self.specs.items()
        }
        self._producers: dict[str, ColumnProducer] = {}
        import torch

        # intra-op threads = the worker's CPU share, in or out of Ray: the same config gives the same
        # bits (the summation order depends on the thread count) and workers sharing a node don't contend
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))

    def producer(self, name: str) -> ColumnProducer:
        if name not in self._producers:
            device = self.cfg.teacher.device if name == "teacher" else self.cfg.encoders.device  # the producer resolves "auto"
            self._producers[name] = self.registry.make_producer(name, self.cfg, device)
        return self._producers[name]

    def run_shard(self, shard: int) -> ShardReport:
        started = time.perf_counter()
        report = ShardReport(shard)
        pending = [n for n, c in self.columns.items() if c.commit_record(shard) is None]
        if not pending:
            report.skipped = True
            return report
        for name in pending:  # models load here, outside the per-clip guard: a bad checkpoint or device stops the run
            self.producer(name)
        outputs = {n: ([], [], []) for n in pending}  # column -> (arrays, records, failed)
        for done, index in enumerate(self.snapshot.shard_range(shard)):
            entry = ClipEntry.from_json(self.snapshot.clips[index])
            self._process_clip(entry, index, pending, outputs)
            report.clips += 1
            self._maybe_crash(shard, done + 1)
        for name in pending:
            arrays, records, failed = outputs[name]
            column = self.columns[name]
            if not column.has_column_arrays():
                extra = self.producer(name).column_arrays()
                if extra:
                    column.write_column_arrays(extra)
            column.write_shard(shard, _stack(arrays, column), records, failed)
            report.ok[name], report.failed[name] = len(records), failed
        report.seconds = time.perf_counter() - started
        return report

    def _process_clip(self, entry: ClipEntry, index: int, pending: list[str], outputs: dict) -> None:
        base = {"key": entry.key, "index": index, "source": entry.url}
        try:
            clip = decode_clip(entry.url, self.cfg.video, self.cfg.corpus.storage_options)
        except ClipError as exc:
            log.warning("clip %s (%s) skipped: %s", entry.key, entry.url, exc.reason)
            for name in pending:
                outputs[name][2].append({**base, "stage": "decode", "reason": exc.reason})
            return
        record = {**base, "caption": entry.caption, "frame_indices": list(clip.frame_indices)}
        for name in pending:
            try:
                arrays, extra = self.producer(name).produce(clip, entry)
            except Exception as exc:  # a failing clip must not take the shard down; the ledger says why
                log.error("clip %s failed in column %s:\n%s", entry.key, name, traceback.format_exc())
                outputs[name][2].append({**base, "stage": name, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            outputs[name][0].append(arrays)
            outputs[name][1].append({**record, **extra})

    def _maybe_crash(self, shard: int, clips_done: int) -> None:
        """Test-only fault injection: exit hard mid-shard, once per store (a marker file says it happened)."""
        n = self.cfg.debug.crash_after_clips
        if n is None or clips_done != n:
            return
        marker = join(self.store.path, "_debug", "crashed")
        if self.store.fs.exists(marker):
            return
        self.store.fs.makedirs(join(self.store.path, "_debug"), exist_ok=True)
        self.store.fs.pipe_file(marker, f"shard {shard} after {n} clips".encode())
        log.error("debug.crash_after_clips=%d: exiting hard in shard %d", n, shard)
        os._exit(17)


def _stack(rows: list[dict[str, np.ndarray]], column: Column) -> dict[str, np.ndarray]:
    """Per-clip arrays -> arrays with a leading clip axis, cast to the schema's dtypes (empty shards too)."""
    out = {}
    for key, spec in column.schema.items():
        if rows:
            out[key] = np.stack([np.asarray(r[key]) for r in rows]).astype(spec.dtype, copy=False)
        else:
            out[key] = np.zeros((0, *spec.shape), dtype=spec.dtype)
    return out
