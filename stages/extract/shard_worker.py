"""One extraction worker: decode each clip of a shard once, run every pending column's producer, commit.

Runs in-process (no Ray import here), so the same code serves a Ray actor, a single-GPU box
without Ray, and tests. Models are built once per worker, on first use, and reused across shards.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import traceback
import uuid
from dataclasses import dataclass, field

import numpy as np

from stages.media.corpus import ClipEntry
from stages.media.decode import DecodedClip, decode_clip
from stages.config.extract import ExtractConfig
from stages.core.fs import join
from stages.extract.overlap import BackgroundWriter, ClipPrefetcher, Decoded
from stages.store.lease import Lease, LeaseKeeper, LeaseOwner
from stages.extract.producer import ColumnProducer, load_registry
from stages.store import Column, FeatureStore
from stages.store.schema import BUCKET

log = logging.getLogger(__name__)


@dataclass
class ShardReport:
    shard: int
    clips: int = 0  # clips attempted
    ok: dict[str, int] = field(default_factory=dict)  # column -> clips written
    failed: dict[str, list[dict]] = field(default_factory=dict)  # column -> ledger rows
    seconds: float = 0.0  # wall time of run_shard
    skipped: bool = False  # every requested column was already committed (or became so while we waited)
    busy: list[str] = field(default_factory=list)  # columns whose shard another live run holds: retry later
    # where the wall time went; decode and write run in background threads, so they overlap the model
    model_s: dict[str, float] = field(default_factory=dict)  # column -> seconds in its producer (CUDA synchronised)
    decode_s: float = 0.0  # decoding, in the prefetch thread
    wait_s: float = 0.0  # the producers waiting for a decoded clip
    write_s: float = 0.0  # Zarr writes in the writer thread plus the commit
    flush_s: float = 0.0  # waiting at the end of the shard for the writer (the part of write_s not overlapped)
    load_s: float = 0.0  # building models (the worker's first shard only)
    # [key, share lost] of each clip whose centre crop lost more than video.max_crop (kept under fit=crop)
    cropped: list[list] = field(default_factory=list)
    # video.buckets: "FxHxW" -> clips of this shard decoded into that bucket (empty without buckets)
    buckets: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return self.__dict__.copy()


class ShardWorker:
    """Processes whole shards of one store for the configured columns.

    Per shard: a background thread decodes clips ahead (2 x clip_batch), the producers take them
    clip_batch at a time in shard order, and each finished group's rows go to a background writer
    thread while the next group computes. The commit records are written after the writer is
    flushed, so a worker killed at any point leaves no commit for a partly written shard.
    """

    def __init__(
        self, cfg: ExtractConfig, store_url: str, storage_options: dict | None = None, registry: str = "stages.extract.columns.registry", run_id: str | None = None
    ):
        self.cfg = cfg
        self.run_id = run_id or uuid.uuid4().hex[:12]  # the extraction run this worker belongs to (lease owner)
        self.store = FeatureStore(store_url, storage_options)
        self.snapshot = self.store.require_snapshot()
        self.registry = load_registry(registry)
        self.specs = {name: self.registry.column_spec(name, cfg) for name in cfg.columns}
        self.columns: dict[str, Column] = {
            name: self.store.create_column(name, s.config, s.schema, s.attrs) for name, s in self.specs.items()
        }
        self._producers: dict[str, ColumnProducer] = {}
        self.clip_batch = cfg.teacher.clip_batch  # clips per producer call: the teacher tracks them in lockstep
        import torch

        # intra-op threads = the worker's CPU share, in or out of Ray: the same config gives the same
        # bits (the summation order depends on the thread count) and workers sharing a node don't contend
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))

    def producer(self, name: str) -> ColumnProducer:
        if name not in self._producers:
            # each column's own device setting; the producer resolves "auto"
            device = {"teacher": self.cfg.teacher.device, "image_teacher": self.cfg.image_teacher.device}.get(name, self.cfg.encoders.device)
            self._producers[name] = self.registry.make_producer(name, self.cfg, device)
        return self._producers[name]

    def run_shard(self, shard: int) -> ShardReport:
        started = time.perf_counter()
        report = ShardReport(shard)
        pending = [n for n, c in self.columns.items() if c.commit_record(shard) is None]
        leases = self._claim(shard, pending, report)
        if not leases:
            report.skipped = not report.busy
            return report
        try:
            with LeaseKeeper(leases.values(), self.cfg.lease.heartbeat_s):
                self._run_claimed(shard, leases, report, started)
        except BaseException:
            for lease in leases.values():  # another run may take the shard at once (a killed worker's lease expires instead)
                try:
                    lease.release()
                except Exception:  # the original error matters more
                    pass
            raise
        report.seconds = time.perf_counter() - started
        return report

    def _claim(self, shard: int, pending: list[str], report: ShardReport) -> dict[str, Lease]:
        """Claim `shard` in each pending column; columns another live run holds go to report.busy."""
        owner = LeaseOwner.current(self.run_id)
        leases: dict[str, Lease] = {}
        for name in pending:
            column = self.columns[name]
            lease = column.claim(shard, owner, self.cfg.lease.seconds)
            if lease is None:
                report.busy.append(name)
            elif column.commit_record(shard) is not None:  # committed by another run between our check and our claim
                lease.release()
            else:
                leases[name] = lease
        if report.busy:
            log.info("shard %d: %s being written by another run; will check again", shard, ", ".join(report.busy))
        return leases

    def _run_claimed(self, shard: int, leases: dict[str, Lease], report: ShardReport, started: float) -> None:
        pending = list(leases)
        for name in pending:  # models load here, outside the per-clip guard: a bad checkpoint or device stops the run
            self.producer(name)
        report.load_s = time.perf_counter() - started
        report.model_s = {n: 0.0 for n in pending}
        items = [(i, ClipEntry.from_json(self.snapshot.clips[i])) for i in self.snapshot.shard_range(shard)]
        writers = {n: self.columns[n].open_shard(shard, len(items), leases[n]) for n in pending}
        outputs = {n: ([], []) for n in pending}  # column -> (records, failed)
        decode = self._decoder(pending)
        with ClipPrefetcher(items, decode, ahead=2 * self.clip_batch) as clips, BackgroundWriter() as writer:
            for group in _groups(clips, self.clip_batch):
                self._process_group(group, pending, outputs, writers, writer, report)
                for _ in group:
                    report.clips += 1
                    self._maybe_crash(shard, report.clips)
            t = time.perf_counter()
            writer.flush()  # every row is written before any commit record
            report.flush_s = time.perf_counter() - t
            for name in pending:
                records, failed = outputs[name]
                column = self.columns[name]
                if not column.has_column_arrays():
                    extra = self.producer(name).column_arrays()
                    if extra:
                        column.write_column_arrays(extra)
                writers[name].commit(records, failed)  # checks the attempt is whole and its lease ours, then releases it
                report.ok[name], report.failed[name] = len(records), failed
            report.write_s = writer.busy_s + time.perf_counter() - t - report.flush_s
            report.decode_s, report.wait_s = clips.decode_s, clips.wait_s

    def _decoder(self, pending: list[str]):
        video, options = self.cfg.video, self.cfg.corpus.storage_options
        pin = any(_device(self.producer(n)).type == "cuda" for n in pending)

        def decode(entry: ClipEntry) -> DecodedClip:
            clip = decode_clip(entry.url, video, options, start=entry.start, end=entry.end)
            if pin:  # page-locked frames: the uint8 copy to the GPU is a straight DMA (pinning happens here, off the model's thread)
                import torch

                clip.frames = torch.from_numpy(clip.frames).pin_memory().numpy()
            return clip

        return decode

    def _process_group(self, group: list[Decoded], pending: list[str], outputs: dict, writers: dict, writer: BackgroundWriter, report: ShardReport) -> None:
        usable = [d for d in group if d.error is None]
        results: dict[str, list] = {}
        for name in pending:
            producer = self.producer(name)
            t = time.perf_counter()
            results[name] = self._produce(producer, name, usable) if usable else []
            _synchronize(producer)  # GPU work counts as model time, not as whatever runs next
            report.model_s[name] += time.perf_counter() - t
        rows: dict[str, list[dict]] = {n: [] for n in pending}
        k = -1  # position of d among the usable clips
        for d in group:  # ledger rows and records in shard order, as a sequential worker writes them
            entry = d.entry
            base = {"key": entry.key, "index": d.index, "source": entry.url}
            if d.error is not None:
                log.warning("clip %s (%s) skipped: %s", entry.key, entry.url, d.error.reason)
                for name in pending:
                    outputs[name][1].append({**base, "stage": "decode", "reason": d.error.reason})
                continue
            k += 1
            if d.clip.bucket is not None:
                name_b = "x".join(map(str, d.clip.bucket))
                report.buckets[name_b] = report.buckets.get(name_b, 0) + 1
            if d.clip.fit == "crop" and d.clip.crop_loss > self.cfg.video.max_crop:
                report.cropped.append([entry.key, round(d.clip.crop_loss, 4)])
            # provenance: source fps, duration, size, rotation, fit and crop box, frame indices and times
            # (seconds from the source's first frame), and a window's range in its source
            record = {**base, "caption": entry.caption, **d.clip.record()}
            if entry.start is not None or entry.end is not None:
                record["range"] = [entry.offset, entry.end]
            for name in pending:
                result = results[name][k]
                if isinstance(result, BaseException):  # a failing clip must not take the shard down; the ledger says why
                    if getattr(result, "verdict", False):  # a finding about the clip (no subject found), not a bug: one line
                        log.warning("clip %s skipped in column %s: %s", entry.key, name, result)
                    else:
                        log.error("clip %s failed in column %s:\n%s", entry.key, name, "".join(traceback.format_exception(result)))
                    outputs[name][1].append({**base, "stage": name, "reason": f"{type(result).__name__}: {result}"})
                    continue
                arrays, extra = result
                rows[name].append(arrays)
                if d.clip.bucket is not None:  # mixed sizes: stored padded to the schema, cropped back on read to these
                    extra = {**extra, BUCKET.shapes: {k: list(np.shape(v)) for k, v in arrays.items()}}
                outputs[name][0].append({**record, **extra})
        for name, arrays in rows.items():
            if arrays:
                block = _stack(arrays, self.columns[name])
                writers[name].check(block, len(arrays))  # a schema mismatch stops the run here, not in the writer thread
                writer.submit(functools.partial(writers[name].append, block))

    def _produce(self, producer: ColumnProducer, name: str, usable: list[Decoded]) -> list:
        """One result per clip: (arrays, record) or the Exception that failed it in this column."""
        clips, entries = [d.clip for d in usable], [d.entry for d in usable]
        batch = getattr(producer, "produce_batch", None)
        if batch is not None:
            try:
                out = list(batch(clips, entries))
            except Exception:  # the batch as a whole failed: redo clip by clip so only the bad clip fails
                log.error("column %s: batch of %d clips failed, retrying one by one:\n%s", name, len(clips), traceback.format_exc())
            else:
                if len(out) != len(clips):
                    raise RuntimeError(f"column {name}: produce_batch returned {len(out)} results for {len(clips)} clips")
                return out
        out = []
        for clip, entry in zip(clips, entries):
            try:
                out.append(producer.produce(clip, entry))
            except Exception as exc:
                out.append(exc)
        return out

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
            out[key] = np.stack([_pad(np.asarray(r[key]), spec.shape) for r in rows]).astype(spec.dtype, copy=False)
        else:
            out[key] = np.zeros((0, *spec.shape), dtype=spec.dtype)
    return out


def _pad(values: np.ndarray, shape: tuple) -> np.ndarray:
    """A clip's array zero-padded at the end of each axis to the schema's `shape` (a mixed-size store's
    smaller buckets; its record's `shapes` keeps the real one). Unchanged when it has the shape already."""
    if values.shape == tuple(shape) or values.ndim != len(shape) or any(a > b for a, b in zip(values.shape, shape)):
        return values  # the schema check (ShardWriter.check) then names a real mismatch
    return np.pad(values, [(0, b - a) for a, b in zip(values.shape, shape)])


def _groups(clips, size: int):
    """Consecutive Decoded items holding up to `size` usable clips each (decode failures ride along in order)."""
    group: list[Decoded] = []
    usable = 0
    for d in clips:
        group.append(d)
        usable += d.error is None
        if usable == size:
            yield group
            group, usable = [], 0
    if group:
        yield group


def _device(producer):
    """The torch.device a producer computes on (its `device` attribute; CPU when it has none)."""
    import torch

    return torch.device(getattr(producer, "device", "cpu"))


def _synchronize(producer) -> None:
    """Wait for the producer's queued GPU work, so a timer read after it includes that work."""
    device = _device(producer)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
