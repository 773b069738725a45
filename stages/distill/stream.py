"""Stream committed store shards to the trainer with WebDataset, joined across columns by clip.

    shard list (seeded shuffle per epoch) -> split by node (rank) -> split by worker
      -> read one Zarr shard, clip by clip -> shuffle buffer -> batches (partial dropped)

in a DataLoader with workers. Nothing loads the whole store: each worker holds one shard's
records and reads arrays one clip (one Zarr chunk) at a time. Every rank gets exactly
`batches_per_epoch()` batches, computed from the commit records alone, so uneven shards never
leave one DDP rank waiting at the epoch's end. A position (epoch, batch) fully determines what
comes next, which is how a resumed run continues the same trajectory.

Every clip's arrays are checked against the CRC-32 in its commit record as they are read. A damaged
clip (or a shard whose commit record or metadata cannot be read) stops the run with a StoreError
naming store, column, shard, clip and array (on_corrupt="fail"), or is logged, counted and left
out (on_corrupt="skip").

Skipping keeps the epoch's length. Damage is only seen at read time, and only by the rank that reads
it, so a rank that left clips out would run out of batches first, start its next epoch a step early
and drift from the others (whose positions were then not the one checkpointed). Instead each rank's
epoch is fixed at `batches_per_epoch()`, counted from the commit records before anything is skipped,
and a rank that comes up short tops the epoch up (`_top_up`): further passes over its own shards,
read in this process, each with its own shuffle seed, until it has the epoch's batches (over every
rank's shards, wrap-around, when its own hold no full batch of readable clips). That needs no
communication between ranks, keeps every step a collective all ranks reach together, and keeps the
position (epoch, batch) the same on every rank and a pure function of the seed and the stored
bytes, so a resume inside a top-up continues it exactly. The alternative, trimming every rank's
epoch to the shortest one, needs a collective in the data path each step (no rank knows another's
damage) and drops good clips. A top-up pass meets the damage its first pass already counted, so
`skipped` counts each epoch's damaged clips once per rank; a top-up repeats clips within the epoch.

A mixed-size store (`video.buckets`: each clip's record names its bucket, its arrays are cropped to its own
shape on read) is batched by bucket instead: after the shuffle buffer, each bucket fills its own batch and a
batch is yielded when full, so a batch never mixes shapes (`bucket_batches`). What is left of a bucket at the
end of a worker's pass is dropped (never padded: padding would need made-up clips or a mask in every loss).
`batches_per_epoch()` then counts, per rank and worker, the full batches of each bucket from the shards'
records (read once, at start), and every rank still yields the minimum over ranks, its extra batches dropped;
ranks may train on different buckets at the same step (shapes differ between ranks, never the step count).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import multiprocessing
import multiprocessing.context
from dataclasses import dataclass
from typing import Collection, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from stages.store import Column, FeatureStore, StoreError, join_shard_data
from stages.store.integrity import column_gaps
from stages.store.schema import BUCKET, CLIP, COMMIT

log = logging.getLogger(__name__)


@dataclass
class StreamPosition:
    """Where the loader is: the next batch is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _split(items: list, index: int, count: int) -> list:
    return list(itertools.islice(items, index, None, count)) if count > 1 else list(items)


class ClipStream:
    """Batches of joined clips from `columns` of one store, for one rank of `world_size`."""

    def __init__(
        self,
        store: FeatureStore,
        columns: list[Column],
        arrays: dict[str, list[str]],  # column name -> arrays to read (others are never touched)
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 64,  # clips held per worker for shuffling
        num_workers: int = 0,
        on_corrupt: str = "fail",  # fail | skip: what a damaged clip does (see the module docstring)
        exclude: Collection[str] = (),  # clip keys never streamed nor counted (held-out clips, filtered clips)
        allow_partial_columns: bool = False,  # train on the shards every column committed (else refuse a gap)
        ranks: tuple[int, int] | None = None,  # (rank, world) of the data split; None: torch.distributed's (or RANK/WORLD_SIZE)
    ):
        if on_corrupt not in ("fail", "skip"):
            raise ValueError(f"on_corrupt must be fail or skip, got {on_corrupt!r}")
        self.store, self.columns, self.arrays = store, columns, arrays
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.num_workers, self.on_corrupt = num_workers, on_corrupt
        self.exclude = frozenset(exclude)
        # clips skipped as damaged, summed over this process and its DataLoader workers (shared memory)
        self._skipped = _worker_context().Value("q", 0)
        self._shard_keys: dict[int, list[str]] = {}  # shard -> its clip keys (snapshot), for messages
        # the data split: by default the process's rank (torch.distributed, or RANK/WORLD_SIZE); under context
        # parallelism the trainer passes the data-parallel rank, so the ranks of one context group read the same clips
        self.rank, self.world_size = ranks if ranks is not None else wds.utils.pytorch_worker_info()[:2]
        snapshots = {c.meta.get("snapshot") for c in columns}
        if len(snapshots) > 1:
            raise StoreError(f"columns {', '.join(c.dirname for c in columns)} were built from different corpus snapshots")
        check_column_coverage(store.url, {c.dirname: c.committed_shards() for c in columns}, allow_partial_columns)
        self.clip_counts = self._joined_counts()
        if not self.clip_counts:
            raise StoreError(f"no shard of {store.url} is committed in every column ({', '.join(c.dirname for c in columns)})")
        # a mixed-size store (video.buckets): batches never mix buckets, and the batch count comes from each
        # shard's clips per bucket (its records: one metadata read per shard, here, once); None otherwise
        bucketed = {c.dirname: is_bucketed([c]) for c in columns}
        if len(set(bucketed.values())) > 1:
            raise StoreError(f"{store.url}: columns {', '.join(n for n, b in bucketed.items() if b)} were extracted with video.buckets, "
                             f"{', '.join(n for n, b in bucketed.items() if not b)} without: extract them with the same video settings")
        self.bucket_counts = self._joined_bucket_counts() if any(bucketed.values()) else None

    @property
    def skipped(self) -> int:
        """Clips left out as damaged so far (on_corrupt=skip), over all epochs and workers."""
        return self._skipped.value

    def _damaged(self, err: StoreError, clips: int, cause: BaseException | None = None, count: bool = True) -> None:
        """on_corrupt=fail: raise `err`; skip: log it and count `clips` as left out (count=False: a top-up
        pass meeting damage its epoch's first pass counted, logged at debug level)."""
        if self.on_corrupt == "fail":
            raise err from cause
        if not count:
            log.debug("top-up pass skipped %d damaged clip(s) again: %s", clips, err)
            return
        with self._skipped.get_lock():
            self._skipped.value += clips
        log.warning("skipped %d damaged clip(s) (on_corrupt=skip): %s", clips, err)

    def _joined_counts(self) -> dict[int, int]:
        """Clips per shard present in every column, from the commit records (no array reads)."""
        records = [self._commit_records(c) for c in self.columns]
        shards = set.intersection(*(set(r) for r in records))
        unverified = sorted({c.dirname for c, r in zip(self.columns, records) for rec in r.values() if COMMIT.checksums not in rec})
        if unverified:
            log.warning("%s: commit records of %s hold no checksums (written before them): reads are unverified", self.store.url, ", ".join(unverified))
        excluded = self._excluded_indices()
        counts = {s: len(set.intersection(*(set(r[s][COMMIT.indices]) for r in records)) - excluded) for s in sorted(shards)}
        return {s: n for s, n in counts.items() if n > 0}

    def _joined_bucket_counts(self) -> dict[int, dict[tuple, int]]:
        """{shard: {bucket: clips}} of the clips every column committed, excluded keys left out (from the records
        of the first column; the join guarantees the other columns hold the same clips at the same buckets)."""
        out: dict[int, dict[tuple, int]] = {}
        column = self.columns[0]
        for shard in self.clip_counts:
            indices = set.intersection(*(set(c.commit_record(shard)[COMMIT.indices]) for c in self.columns))
            counts: dict[tuple, int] = {}
            try:
                records = column.shard_records(shard)
            except StoreError as exc:  # unreadable records: the shard counts no batch (on_corrupt=skip) or fails the run
                keys = self._keys_of(shard)
                self._damaged(StoreError(f"{self.store.url}: column {column.dirname}, shard {shard} (clips {', '.join(keys)}): {exc}"), len(keys), exc)
                records = []
            for rec in records:
                if rec[CLIP.index] in indices and rec[CLIP.key] not in self.exclude:
                    b = tuple(rec[BUCKET.bucket])
                    counts[b] = counts.get(b, 0) + 1
            out[shard] = counts
        return out

    def _worker_batches(self, shards: list[int]) -> int:
        """Full batches one worker's shards give: clips // batch_size, or per bucket with buckets (a bucket's
        remainder never fills a batch: it is dropped, as the last partial batch is without buckets)."""
        if self.bucket_counts is None:
            return sum(self.clip_counts[s] for s in shards) // self.batch_size
        per_bucket: dict[tuple, int] = {}
        for s in shards:
            for b, n in self.bucket_counts[s].items():
                per_bucket[b] = per_bucket.get(b, 0) + n
        return sum(n // self.batch_size for n in per_bucket.values())

    def _batcher(self):
        """The pipeline stage that turns samples into batches: one shape per batch (by bucket) or plain."""
        if self.bucket_counts is None:
            return wds.batched(self.batch_size, collation_fn=collate, partial=False)
        return functools.partial(bucket_batches, size=self.batch_size)

    def _excluded_indices(self) -> set[int]:
        """Snapshot indices of the excluded keys (the commit records list indices, not keys)."""
        if not self.exclude:
            return set()
        return {i for i, c in enumerate(self.store.require_snapshot().clips) if c[CLIP.key] in self.exclude}

    def _commit_records(self, column: Column) -> dict[int, dict]:
        """A column's readable commit records; a damaged one fails the stream or (skip) drops its shard."""
        out = {}
        for shard in sorted(column.committed_shards()):
            try:
                out[shard] = column.commit_record(shard)
            except StoreError as exc:
                keys = self._keys_of(shard)
                self._damaged(StoreError(f"{self.store.url}: column {column.dirname}, shard {shard} (clips {', '.join(keys)}): {exc}"), len(keys), exc)
        return out

    def _keys_of(self, shard: int) -> list[str]:
        if shard not in self._shard_keys:
            self._shard_keys[shard] = [c[CLIP.key] for c in self.store.require_snapshot().shard_clips(shard)]
        return self._shard_keys[shard]

    def shard_order(self, epoch: int) -> list[int]:
        """All shards in this epoch's order: the same on every rank, so the node split is disjoint."""
        order = sorted(self.clip_counts)
        np.random.default_rng(_seed(self.seed, epoch, "shards")).shuffle(order)
        return order

    def _rank_worker_shards(self, epoch: int, rank: int, worker: int) -> list[int]:
        return _split(_split(self.shard_order(epoch), rank, self.world_size), worker, max(self.num_workers, 1))

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches every rank yields this epoch: the minimum over ranks, so all ranks stop together (a rank whose
        shards give more drops its last ones: with buckets the per-rank counts differ more, by each bucket's
        remainder, and dropping keeps every step a collective that all ranks reach)."""
        per_rank = []
        for rank in range(self.world_size):
            per_rank.append(sum(self._worker_batches(self._rank_worker_shards(epoch, rank, w)) for w in range(max(self.num_workers, 1))))
        n = min(per_rank)
        if n == 0:
            raise StoreError(
                f"{self.store.url}: {sum(self.clip_counts.values())} clips in {len(self.clip_counts)} shards give rank(s) "
                f"no full batch of {self.batch_size} with {self.world_size} ranks x {max(self.num_workers, 1)} workers; "
                f"lower batch size or workers, or extract more clips"
            )
        return n

    def dataset(self, epoch: int) -> wds.DataPipeline:
        urls = [str(s) for s in self.shard_order(epoch)]  # shuffled here, once, identically on every rank
        return wds.DataPipeline(
            wds.SimpleShardList(urls),
            self._split_by_rank,
            wds.split_by_worker,
            self._read_shards,
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 8), seed=_seed(self.seed, epoch, self.rank)),
            self._batcher(),
        )

    def _split_by_rank(self, src: Iterator[dict]) -> Iterator[dict]:
        """This rank's shards of the epoch's list (wds.split_by_node's rule, shard i to rank i % world), for the
        split's own (rank, world): the counts above and the pipeline agree by construction."""
        return itertools.islice(src, self.rank, None, self.world_size)

    def _read_shards(self, src: Iterator[dict], count: bool = True) -> Iterator[dict]:
        for item in src:
            shard = int(item["url"])
            try:
                records, shards, rows = join_shard_data(self.columns, [c.read_shard(shard) for c in self.columns])
            except StoreError as exc:  # a commit, group or array metadata unreadable: every clip of the shard
                keys = self._keys_of(shard)
                self._damaged(StoreError(f"{self.store.url}: shard {shard} (clips {', '.join(keys)}): {exc}"), self.clip_counts.get(shard, len(keys)), exc, count)
                continue
            for i, record in enumerate(records):
                if record[CLIP.key] in self.exclude:
                    continue
                sample = {"__key__": record[CLIP.key], CLIP.index: record[CLIP.index]}
                if self.bucket_counts is not None:
                    sample[BUCKET_KEY] = tuple(record[BUCKET.bucket])
                try:
                    for j, col in enumerate(self.columns):
                        for name in self.arrays.get(col.name, []):
                            sample[name] = _read(col, shards[j], name, rows[j][i])
                except StoreError as exc:  # read_row's message names store, column, shard, clip and array
                    self._damaged(exc, 1, count=count)
                    continue
                yield sample

    def epoch(self, position: StreamPosition) -> Iterator[dict]:
        """The batches of `position.epoch`, starting at batch `position.batch`: `batches_per_epoch()` in all,
        on every rank, whatever on_corrupt=skip left out (topped up, see the module docstring)."""
        if position.batch >= self.batches_per_epoch(position.epoch):  # a checkpoint at an epoch's end: nothing to read
            return iter(())
        return _one_line_errors(itertools.islice(self._epoch_batches(position.epoch), position.batch, None))

    def _epoch_batches(self, epoch: int) -> Iterator[dict]:
        total = self.batches_per_epoch(epoch)
        loader = DataLoader(
            self.dataset(epoch), batch_size=None, num_workers=self.num_workers, persistent_workers=False,
            multiprocessing_context=_worker_context() if self.num_workers else None,
        )
        got = yield from _take(loader, total)
        passes, everyone = 0, False
        while got < total:  # only on_corrupt=skip comes up short: fail raised at the damage
            passes += 1
            more = yield from _take(iter(self._top_up(epoch, passes, everyone)), total - got)
            got += more
            if more == 0 and not everyone and self.world_size > 1:
                everyone = True  # the rank's own shards hold no full batch of readable clips: wrap around
            elif more == 0:
                raise StoreError(
                    f"{self.store.url}: rank {self.rank} has no readable clip left for epoch {epoch} (batch {got + 1} of {total}, "
                    f"batch size {self.batch_size}): the store is damaged throughout; `sam2videox inspect {self.store.url} --verify` "
                    f"lists the damage, `extract --repair` rewrites it"
                )

    def _top_up(self, epoch: int, attempt: int, everyone: bool) -> wds.DataPipeline:
        """Pass `attempt` (1, 2, ...) that tops up a rank's short epoch: over its own shards, or (everyone:
        when those hold no full batch of readable clips) over every rank's, read here without workers and
        shuffled with a seed of its own. Damage it meets is not counted again (`_damaged`)."""
        order = self.shard_order(epoch)
        shards = order if everyone else _split(order, self.rank, self.world_size)
        return wds.DataPipeline(
            wds.SimpleShardList([str(s) for s in shards]),
            functools.partial(self._read_shards, count=False),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 8), seed=_seed(self.seed, epoch, self.rank, "top-up", attempt)),
            self._batcher(),
        )


def _take(items: Iterator[dict], most: int):
    """Yield at most `most` of `items` (never reading one more); returns how many it yielded."""
    taken = 0
    if most <= 0:
        return taken
    for item in items:
        yield item
        taken += 1
        if taken == most:
            break
    return taken


def check_column_coverage(url: str, committed: dict[str, Collection[int]], allow_partial: bool) -> None:
    """Training joins the columns by clip, so a shard one column lacks is left out: refuse that in one
    line naming the column and its missing shards, or (data.allow_partial_columns) log what is left out."""
    gaps = column_gaps(committed)
    if not gaps:
        return
    every = set().union(*map(set, committed.values()))
    parts = "; ".join(f"column {name} lacks {len(missing)} of {len(every)} shards {_ids(missing)}" for name, missing in sorted(gaps.items()))
    if not allow_partial:
        raise StoreError(
            f"{url}: {parts}; extract them (`sam2videox extract --store {url}` with the same config), or pass "
            f"data.allow_partial_columns=true to train on the {len(set.intersection(*map(set, committed.values())))} shards every column committed"
        )
    log.warning("%s: %s: training on the shards every column committed (data.allow_partial_columns=true)", url, parts)


def _ids(shards: list[int], most: int = 20) -> str:
    return "[" + ", ".join(map(str, shards[:most])) + (f", ... {len(shards) - most} more" if len(shards) > most else "") + "]"


def _read(col: Column, data, name: str, row: int) -> np.ndarray:
    """One clip's array, checked against the commit; a quantised one comes back dequantised (float32)."""
    return col.read_dequantized(data, name, row)


def _one_line_errors(batches: Iterator[dict]) -> Iterator[dict]:
    """A StoreError raised in a DataLoader worker comes back with the worker's traceback as its
    message: give it back its own one-line message (the CLI prints it as is)."""
    try:
        yield from batches
    except StoreError as exc:
        text = str(exc)
        if not text.startswith("Caught "):
            raise
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        raise StoreError(last.split(": ", 1)[1] if ": " in last else last) from None


def _worker_context() -> multiprocessing.context.BaseContext:
    """'fork' where the platform has it, named rather than left to Python's default (which turns to
    'forkserver' in 3.14): workers start each epoch, and a fork starts in milliseconds where a fresh
    interpreter re-imports torch. The store reopens its filesystem in each worker (FeatureStore.fs),
    so no file handle or S3 session is shared with the parent."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


BUCKET_KEY = "__bucket__"  # a sample's bucket (frames, height, width) in a mixed-size store; not collated


def column_buckets(column: Column) -> list[list[int]] | None:
    """The video.buckets a column was extracted with ([[frames, height, width], ...]), None for one size."""
    return (column.producer_config.get("video") or {}).get("buckets")


def is_bucketed(columns: list[Column]) -> bool:
    """Whether the columns were extracted with video.buckets (mixed sizes: per-clip shapes)."""
    return any(column_buckets(c) for c in columns)


def bucket_batches(samples: Iterator[dict], size: int) -> Iterator[dict]:
    """Batches of `size` samples of one bucket each, in the order buckets fill (the shuffled sample order, so
    seeded); what is left of each bucket at the end is dropped, as wds.batched(partial=False) drops a partial batch."""
    pending: dict[tuple, list[dict]] = {}
    for sample in samples:
        group = pending.setdefault(sample[BUCKET_KEY], [])
        group.append(sample)
        if len(group) == size:
            del pending[sample[BUCKET_KEY]]
            yield collate(group)


def collate(samples: list[dict]) -> dict:
    """Stack arrays into tensors; keep keys and indices as lists."""
    out: dict = {"keys": [s["__key__"] for s in samples], CLIP.index: [s[CLIP.index] for s in samples]}
    for name in samples[0]:
        if name not in ("__key__", CLIP.index, BUCKET_KEY):
            out[name] = torch.from_numpy(np.stack([s[name] for s in samples]))
    return out
