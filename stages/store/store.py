"""The feature store: a corpus snapshot plus columns of per-clip arrays, sharded, in Zarr.

Layout (any fsspec URL: a local folder, s3://bucket/prefix, ...):

    store.json                                 format version
    corpus/snapshot.json                       frozen listing: clips in shard order
    columns/<name>-<hash>/column.json          producer config, its hash, schema, attrs
    columns/<name>-<hash>/column.zarr/         column-level arrays (written once, e.g. empty-prompt embedding)
    columns/<name>-<hash>/shards/<sid>.<attempt>.zarr/   one attempt at a shard: arrays [n, ...]
    columns/<name>-<hash>/commits/<sid>.json   commit record: names the attempt, its clips and its failures,
                                               and per clip and array a checksum and the chunk key

A shard is written whole by one worker into a directory of its own attempt, then committed by one
atomic JSON write (rename locally, a single PUT on object stores). Readers only follow commit
records, so a crash mid-shard leaves an invisible attempt that the next run redoes, and two
attempts at the same shard never touch the same files. The error ledger is the union of the
commit records' failures. A column is keyed by the hash of its producer config: a different
config is a different column, never a silent reuse.

Integrity: Zarr returns a missing chunk as its fill value and decodes a damaged one without
complaint when its bytes still decompress, so the commit record carries, per clip and array, the
CRC-32 of the clip's values as written (cheap to recompute on every read of one clip) and the
chunk's key. `Column.read_row` checks them; records written before them read as "unverified".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import fsspec
import numpy as np
import zarr

from stages.config.loader import config_hash
from stages.core.fs import filesystem, is_local, join, write_json_atomic
from stages.store.lease import Lease, LeaseOwner, claim, lease_alive, sweep_temp_files

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SNAPSHOT_VERSION = 1


CHECKSUM = "crc32"  # of each clip's array values as written (C order, schema dtype): ~6 GB/s, one pass per read


class StoreError(RuntimeError):
    """The store is missing, inconsistent, or does not match what was asked of it."""


def checksum(values: np.ndarray) -> str:
    """CRC-32 (hex) of an array's bytes in C order: what a commit record holds per clip and array."""
    return f"{zlib.crc32(np.ascontiguousarray(values).data):08x}"


def read_json(fs: fsspec.AbstractFileSystem, path: str, required: tuple[str, ...] = ()) -> Any:
    """A store JSON file, or a StoreError naming it (unreadable, not JSON, or missing a required key)."""
    try:
        with fs.open(path, "r") as f:
            obj = json.load(f)
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not valid JSON (truncated or damaged): {exc}") from exc
    except OSError as exc:
        raise StoreError(f"{path}: unreadable: {exc}") from exc
    missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise StoreError(f"{path}: damaged, no {', '.join(repr(k) for k in missing)}")
    return obj


COMMIT_KEYS = ("attempt", "clips", "indices", "failed")
COLUMN_KEYS = ("name", "hash", "config", "schema")


class ShardBusy(StoreError):
    """Another live run holds the claim on this shard of this column."""


@dataclass(frozen=True)
class ArraySpec:
    """Per-clip shape and dtype of one column array (the leading clip axis is implied)."""

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> "ArraySpec":
        return ArraySpec(tuple(d["shape"]), d["dtype"])


@dataclass
class Snapshot:
    """The corpus listing frozen at the first run: clip i of shard s is the same clip in every column.

    A growing bucket is added to with `append` (`extract --append`): the new clips go after the
    existing ones and start a new shard, so no committed shard ever changes its clips. `appended`
    holds the snapshot index where each appended batch starts; shards never straddle one.
    """

    source: str
    clips_per_shard: int
    clips: list[dict]  # ClipEntry.to_json() rows, in shard order
    created: float = field(default_factory=time.time)
    appended: list[int] = field(default_factory=list)  # start index of each appended batch of clips
    dropped: list[str] = field(default_factory=list)  # keys an append left out as copies of stored clips (corpus.dedupe)

    def _segments(self) -> list[tuple[int, int]]:
        """[start, end) clip ranges sharded independently: the first listing, then each append."""
        bounds = [0, *self.appended, len(self.clips)]
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]

    @property
    def num_shards(self) -> int:
        return sum(-(-(b - a) // self.clips_per_shard) for a, b in self._segments())

    @property
    def id(self) -> str:
        # the first listing's id, kept across appends: they change no existing shard, so every
        # column built on this store (before or after an append) still joins with the others
        base = self.appended[0] if self.appended else len(self.clips)
        return config_hash({"clips": self.clips[:base], "clips_per_shard": self.clips_per_shard})

    def find(self, key: str) -> int:
        """Snapshot index of clip `key`, or of the Nth clip for "@N"; a StoreError names the first keys."""
        if key.startswith("@") and key[1:].isdigit():
            index = int(key[1:]) if int(key[1:]) < len(self.clips) else None
        else:
            index = next((i for i, c in enumerate(self.clips) if c["key"] == key), None)
        if index is None:
            raise StoreError(f"no clip '{key}' in the snapshot of {self.source}; first keys: {', '.join(c['key'] for c in self.clips[:5])}")
        return index

    def shard_range(self, shard: int) -> range:
        first = 0  # number of the segment's first shard
        for a, b in self._segments():
            n = -(-(b - a) // self.clips_per_shard)
            if shard < first + n:
                start = a + (shard - first) * self.clips_per_shard
                return range(start, min(start + self.clips_per_shard, b))
            first += n
        return range(0)

    def shard_of(self, index: int) -> int:
        """The shard holding snapshot index `index`."""
        first = 0
        for a, b in self._segments():
            if index < b:
                return first + (index - a) // self.clips_per_shard
            first += -(-(b - a) // self.clips_per_shard)
        raise StoreError(f"snapshot index {index} is past the {len(self.clips)} clips of {self.source}")

    def shard_clips(self, shard: int) -> list[dict]:
        return [self.clips[i] for i in self.shard_range(shard)]

    def duplicates(self) -> dict[str, list[str]]:
        """{key of the first copy: keys of the other copies}: identical files, flagged or dropped at listing."""
        out: dict[str, list[str]] = {}
        for c in self.clips:
            if c.get("duplicate_of"):
                out.setdefault(c["duplicate_of"], []).append(c["key"])
            if c.get("duplicates"):
                out.setdefault(c["key"], []).extend(c["duplicates"])
        return out

    def append(self, rows: list[dict], dropped: list[str] = ()) -> "Snapshot":
        """This snapshot with `rows` (ClipEntry.to_json() rows of new keys) added as new shards after the existing ones.

        dropped: new keys left out as copies of stored clips, remembered so later runs do not count them as new.
        """
        have = {c["key"] for c in self.clips}
        clash = [r["key"] for r in rows if r["key"] in have]
        if clash:
            raise StoreError(f"cannot append clips already in the snapshot of {self.source}: {', '.join(clash[:5])}")
        if not rows and not dropped:
            return self
        starts = [*self.appended, len(self.clips)] if rows else self.appended
        return Snapshot(self.source, self.clips_per_shard, [*self.clips, *rows], self.created, starts, [*self.dropped, *dropped])

    def to_json(self) -> dict:
        out = {"version": SNAPSHOT_VERSION, "id": self.id, **dataclasses.asdict(self)}
        for key in ("appended", "dropped"):
            if not out[key]:
                del out[key]  # a never-appended snapshot is written as before
        return out

    @staticmethod
    def from_json(d: dict) -> "Snapshot":
        return Snapshot(d["source"], d["clips_per_shard"], d["clips"], d.get("created", 0.0), list(d.get("appended", [])), list(d.get("dropped", [])))


@dataclass
class ClipDamage:
    """One damaged piece of a committed shard: a clip's array (key and array set) or a whole shard/file."""

    column: str  # column dirname
    shard: int | None
    cause: str  # what is wrong, naming the file
    key: str | None = None  # clip key (None: the whole shard or column)
    array: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        where = f"{self.column}" + (f" shard {self.shard}" if self.shard is not None else "")
        where += f" clip {self.key}" if self.key else ""
        where += f" array {self.array}" if self.array else ""
        return f"{where}: {self.cause}"


@dataclass
class ShardData:
    """One committed shard of a column: lazy Zarr arrays plus the per-clip records."""

    shard: int
    arrays: dict[str, zarr.Array]
    records: list[dict]  # one per stored clip, in array order; each has "key" and "index" (snapshot position)
    failed: list[dict]
    commit: dict = field(default_factory=dict)  # the commit record (checksums, chunk keys; none in old stores)
    missing: dict = field(default_factory=dict)  # (array, row) -> path of a chunk the commit lists but the attempt lacks

    @property
    def verified(self) -> bool:
        """Whether the commit holds checksums (stores written before them read unverified)."""
        return "checksums" in self.commit

    def __len__(self) -> int:
        return len(self.records)


class Column:
    """One column of the store: the output of one producer config over the whole snapshot."""

    def __init__(self, store: "FeatureStore", meta: dict):
        self.store = store
        self.meta = meta
        self.name: str = meta["name"]
        self.hash: str = meta["hash"]
        self.dirname = f"{self.name}-{self.hash}"
        self.url = join(store.url, "columns", self.dirname)
        self.schema = {k: ArraySpec.from_json(v) for k, v in meta["schema"].items()}

    @property
    def attrs(self) -> dict:
        return self.meta.get("attrs", {})

    @property
    def producer_config(self) -> dict:
        return self.meta["config"]

    def _path(self, *parts: str) -> str:
        return join(self.store.path, "columns", self.dirname, *parts)

    def commit_record(self, shard: int) -> dict | None:
        """The shard's commit record, None when not committed, a StoreError naming the file when damaged."""
        path = self._path("commits", f"{shard:05d}.json")
        fs = self.store.fs
        return read_json(fs, path, COMMIT_KEYS) if fs.exists(path) else None

    def uncommit(self, shard: int | None) -> None:
        """Drop a (damaged) shard's commit (None: the column arrays'): its attempt becomes garbage, the shard pending."""
        path = self._path("commits", "column.json" if shard is None else f"{shard:05d}.json")
        if self.store.fs.exists(path):
            self.store.fs.rm(path)

    def committed_shards(self) -> set[int]:
        fs, base = self.store.fs, self._path("commits")
        if not fs.exists(base):
            return set()
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)]
        return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}

    def write_shard(self, shard: int, arrays: dict[str, np.ndarray], records: list[dict], failed: list[dict]) -> dict:
        """Write one whole shard and commit it. Arrays have a leading clip axis matching `records`."""
        self._check_arrays(shard, arrays, len(records))
        writer = self.open_shard(shard, len(records))
        writer.append(arrays)
        return writer.commit(records, failed)

    def open_shard(self, shard: int, capacity: int, lease: Lease | None = None) -> "ShardWriter":
        """Start a new attempt at `shard` with room for `capacity` clips, written in pieces, then committed.

        `lease`: a claim from `claim()` (the attempt's name comes from it); without one this call
        claims the shard for this process (ShardBusy when a live owner of another run holds it).
        """
        if lease is None:
            lease = self.claim(shard, LeaseOwner.current(uuid.uuid4().hex[:12]))
            if lease is None:
                raise ShardBusy(f"shard {shard} of column {self.dirname} in {self.store.url} is being written by another run")
        return ShardWriter(self, shard, capacity, lease)

    def claim(self, shard: int, owner: LeaseOwner, lease_s: float = 60.0) -> Lease | None:
        """Claim `shard` for a new attempt (see stages/store/lease.py); None while another live run holds it."""
        attempt = f"{shard:05d}.{uuid.uuid4().hex[:12]}.zarr"
        return claim(self.store.fs, self._path("claims", f"{shard:05d}.json"), shard, attempt, owner, lease_s)

    def claims(self) -> dict[int, dict]:
        """{shard: claim record} of every claim file (held, or left by a dead owner)."""
        fs, base = self.store.fs, self._path("claims")
        out = {}
        for p in fs.ls(base, detail=False) if fs.exists(base) else []:
            name = p.rsplit("/", 1)[-1]
            if name.endswith(".json") and name[:-5].isdigit():
                try:
                    out[int(name[:-5])] = read_json(fs, p)
                except (FileNotFoundError, ValueError, StoreError):  # released or being replaced this instant
                    continue
        return out

    def read_shard(self, shard: int) -> ShardData:
        record = self.commit_record(shard)
        if record is None:
            raise StoreError(f"shard {shard} of column {self.dirname} in {self.store.url} is not committed")
        attempt = join("shards", record["attempt"])
        group = self._open_group(attempt)
        arrays = {}
        for k in self.schema:
            try:
                arrays[k] = group[k]
            except Exception as exc:  # noqa: BLE001 - zarr raises KeyError, FileNotFoundError, ValueError, JSON errors
                raise StoreError(f"{self._path(attempt, k, 'zarr.json')}: array '{k}' unreadable ({_why(exc)})") from exc
        records = self._clip_records(group, record, attempt)
        return ShardData(shard, arrays, records, record["failed"], record, self.missing_chunks(record))

    def shard_records(self, shard: int) -> list[dict]:
        """The per-clip records of a committed shard (its group's attrs) without opening any array:
        what a metadata-only reader (the teacher-quality filter) needs."""
        record = self.commit_record(shard)
        if record is None:
            raise StoreError(f"shard {shard} of column {self.dirname} in {self.store.url} is not committed")
        attempt = join("shards", record["attempt"])
        return self._clip_records(self._open_group(attempt), record, attempt)

    def _clip_records(self, group: zarr.Group, record: dict, attempt: str) -> list[dict]:
        records = group.attrs.get("records")
        if not isinstance(records, list) or len(records) != len(record["clips"]):
            raise StoreError(f"{self._path(attempt, 'zarr.json')}: no clip records for the {len(record['clips'])} committed clips")
        return list(records)

    def missing_chunks(self, record: dict) -> dict[tuple[str, int], str]:
        """{(array, row): path} of the chunks a commit lists that its attempt lacks (one listing of the attempt).

        A missing chunk reads as the fill value: for an all-zero clip even its checksum would agree.
        Commits written before chunk lists have nothing to compare: {}.
        """
        if "chunks" not in record:
            return {}
        fs, attempt = self.store.fs, self._path("shards", record["attempt"])
        present = {fs._strip_protocol(p) for p in fs.find(attempt)}
        out = {}
        for name, keys in record["chunks"].items():
            for row, rel in enumerate(keys):
                path = f"{attempt}/{name}/{rel}"
                if fs._strip_protocol(path) not in present:
                    out[(name, row)] = path
        return out

    def read_row(self, data: ShardData, name: str, row: int) -> np.ndarray:
        """Array `name` of the clip at `row`, checked against the commit's checksum.

        A StoreError names store, column, shard, clip, array and the cause: an unreadable chunk, a
        missing chunk (Zarr would return its fill value), or values that are not the ones committed.
        """
        key = data.records[row].get("key") if row < len(data.records) else f"row {row}"
        where = f"{self.store.url}: column {self.dirname}, shard {data.shard}, clip {key}, array {name}"
        chunk = self.chunk_path(data, name, row)

        def damaged(cause: str) -> StoreError:
            err = StoreError(f"{where}: {cause}")
            err.cause = cause  # what `inspect --verify` lists beside the clip and array
            return err

        if (name, row) in data.missing:
            raise damaged(f"missing chunk {data.missing[(name, row)]}")
        try:
            values = np.asarray(data.arrays[name][row])
        except Exception as exc:  # noqa: BLE001 - codec errors (blosc, zstd) come as RuntimeError/ValueError/...
            raise damaged(f"unreadable chunk {chunk} ({_why(exc)})") from exc
        sums = data.commit.get("checksums", {}).get(name)
        if sums is not None:
            if row >= len(sums):
                raise damaged(f"commit record lists {len(sums)} checksums for {len(data.records)} clips")
            got = checksum(values)
            if got != sums[row]:
                if not self.store.fs.exists(chunk):
                    raise damaged(f"missing chunk {chunk}")
                raise damaged(f"checksum mismatch in {chunk} (committed {sums[row]}, read {got})")
        return values

    def read_dequantized(self, data: ShardData, name: str, row: int) -> np.ndarray:
        """`read_row`, with an array the column stores quantised (attrs "quantized": int8 plus
        `<name>_scale`, stages/core/quantize.py) dequantised to float32; any other array as stored."""
        from stages.core.quantize import dequantize, quantized_arrays, scale_name

        values = self.read_row(data, name, row)
        if name in quantized_arrays(self.attrs):
            values = dequantize(values, self.read_row(data, scale_name(name), row))
        return values

    def schema_bytes_per_clip(self) -> int:
        """Bytes of one clip's arrays as the schema defines them (uncompressed): sum of prod(shape) * itemsize."""
        return schema_bytes(self.schema)

    def chunk_path(self, data: ShardData, name: str, row: int) -> str:
        """Path of the chunk holding `row` of array `name` (one clip per chunk)."""
        chunks = data.commit.get("chunks", {}).get(name)
        rel = chunks[row] if chunks is not None and row < len(chunks) else "c/" + "/".join(["%d" % row] + ["0"] * len(self.schema[name].shape))
        return self._path("shards", data.commit["attempt"], name, rel)

    def _open_group(self, rel: str) -> zarr.Group:
        try:
            return zarr.open_group(self._zarr_target(rel), mode="r", **self._zarr_kwargs())
        except Exception as exc:  # noqa: BLE001 - missing or garbled zarr.json, in whatever form zarr reports it
            raise StoreError(f"{self._path(rel, 'zarr.json')}: group unreadable ({_why(exc)})") from exc

    def write_column_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Column-level arrays computed once (e.g. the empty-prompt embedding), committed like a shard.

        Workers that start at the same time may each write them (they are deterministic): each
        writes its own attempt and the last commit wins, so no reader ever sees a partial group.
        """
        name = f"column.{uuid.uuid4().hex[:12]}.zarr"
        group = zarr.open_group(self._zarr_target(name), mode="w", **self._zarr_kwargs())
        sums = {}
        for key, value in arrays.items():
            value = np.asarray(value)
            group.create_array(key, data=value, compressors=_compressors())
            sums[key] = checksum(value)
        record = {"attempt": name, "keys": sorted(arrays), "checksum": CHECKSUM, "checksums": sums}
        write_json_atomic(self.store.fs, self._path("commits", "column.json"), record)

    def has_column_arrays(self) -> bool:
        return self.store.fs.exists(self._path("commits", "column.json"))

    def column_arrays(self) -> dict[str, np.ndarray]:
        if not self.has_column_arrays():
            return {}
        path = self._path("commits", "column.json")
        record = read_json(self.store.fs, path, ("attempt", "keys"))
        group = self._open_group(record["attempt"])
        out = {}
        for k in record["keys"]:
            try:
                out[k] = np.asarray(group[k][...])
            except Exception as exc:  # noqa: BLE001 - missing/garbled metadata or chunk
                raise StoreError(f"{self._path(record['attempt'], k)}: column array '{k}' unreadable ({_why(exc)})") from exc
            want = record.get("checksums", {}).get(k)
            if want is not None and checksum(out[k]) != want:
                raise StoreError(f"{self._path(record['attempt'], k)}: column array '{k}' checksum mismatch (committed {want}, read {checksum(out[k])})")
        return out

    def commit_records(self) -> dict[int, dict]:
        """Every commit record, each read once: {shard: record} (one round trip each on object stores)."""
        return {shard: self.commit_record(shard) for shard in sorted(self.committed_shards())}

    def ledger(self, records: dict[int, dict] | None = None) -> list[dict]:
        """Every failed clip of every committed shard: key, index, reason."""
        records = self.commit_records() if records is None else records
        return [row for record in records.values() for row in record["failed"]]

    def collect_garbage(self, column_grace_s: float = 600.0) -> int:
        """Remove attempt folders no commit and no live lease names (left by dead workers). Returns how many.

        Safe while other runs write: an attempt is only removed when its lease's owner is gone. The
        order matters: attempts are listed first, then claims, then commits, so an attempt that
        appears, or commits, while this runs is seen as claimed or committed. Column-level attempts
        (no lease: a few small arrays) are removed only when older than `column_grace_s`.
        """
        fs = self.store.fs
        attempts = fs.ls(self._path("shards"), detail=False) if fs.exists(self._path("shards")) else []
        columns = [p for p in fs.ls(self._path(), detail=False) if p.rsplit("/", 1)[-1].startswith("column.") and p.endswith(".zarr")]
        claims = self.claims()
        committed = self.committed_shards()
        live = {self.commit_record(s)["attempt"] for s in committed}
        if self.has_column_arrays():
            live.add(read_json(fs, self._path("commits", "column.json"))["attempt"])
        leased = {c["attempt"] for c in claims.values() if lease_alive(c)}
        removed = 0
        for path in attempts:
            name = path.rsplit("/", 1)[-1]
            if name not in live and name not in leased:
                fs.rm(path, recursive=True)
                removed += 1
        for path in columns:
            if path.rsplit("/", 1)[-1] not in live and _age(fs, path) > column_grace_s:
                fs.rm(path, recursive=True)
                removed += 1
        # claims of committed shards whose owner died between commit and release, and takeover markers
        for shard, record in claims.items():
            if shard in committed and not lease_alive(record):
                fs.rm(self._path("claims", f"{shard:05d}.json"))
        base = self._path("claims")
        for path in fs.ls(base, detail=False) if fs.exists(base) else []:
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".takeover") and name[:5].isdigit() and int(name[:5]) in committed:
                fs.rm(path)
        sweep_temp_files(fs, base, column_grace_s)  # temp claim files a kill left before their rename
        return removed

    def _check_arrays(self, shard: int, arrays: dict[str, np.ndarray], n: int) -> None:
        missing = set(self.schema) - set(arrays)
        extra = set(arrays) - set(self.schema)
        if missing or extra:
            raise StoreError(f"shard {shard} of {self.dirname}: arrays {sorted(arrays)} do not match schema {sorted(self.schema)}")
        for key, spec in self.schema.items():
            if tuple(arrays[key].shape) != (n, *spec.shape):
                raise StoreError(
                    f"shard {shard} of {self.dirname}: array '{key}' has shape {tuple(arrays[key].shape)}, "
                    f"schema says {(n, *spec.shape)}"
                )

    def _zarr_target(self, rel: str) -> Any:
        full = join(self.url, rel)
        return full if not is_local(self.store.fs) else self.store.fs._strip_protocol(full)

    def _zarr_kwargs(self) -> dict:
        return {} if is_local(self.store.fs) else {"storage_options": self.store.storage_options}

    def summary(self, records: dict[int, dict] | None = None) -> dict:
        records = self.commit_records() if records is None else records
        return {
            "name": self.name,
            "hash": self.hash,
            "dir": self.dirname,
            "committed_shards": len(records),
            "clips": sum(len(r["clips"]) for r in records.values()),
            "failed": len(self.ledger(records)),
            "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.schema.items()},
            "bytes_per_clip": self.bytes_per_clip(records),
            "schema_bytes_per_clip": self.schema_bytes_per_clip(),
            "config": self.producer_config,
        }

    def bytes_per_clip(self, records: dict[int, dict] | None = None) -> float:
        """Stored bytes of the committed attempts per stored clip."""
        records = self.commit_records() if records is None else records
        clips = sum(len(r["clips"]) for r in records.values())
        if not clips:
            return 0.0
        return sum(self.store.fs.du(self._path("shards", r["attempt"])) for r in records.values()) / clips


class ShardWriter:
    """One attempt at a shard of a column: rows appended in clip order (by one thread), then one commit.

    The arrays are created at the shard's capacity and trimmed to the rows written at commit
    (a metadata-only resize: chunks are one clip each), so a shard written piece by piece is
    byte-identical to one written whole. Nothing is visible to readers before `commit`, which
    writes the commit record last; an attempt abandoned before it is garbage.
    """

    def __init__(self, column: Column, shard: int, capacity: int, lease: Lease):
        self.column, self.shard, self.lease = column, shard, lease
        self.name = lease.attempt
        self.group = zarr.open_group(column._zarr_target(join("shards", self.name)), mode="w", **column._zarr_kwargs())
        # one chunk per clip: streaming reads clip by clip
        # write_empty_chunks: every clip gets a chunk file, even an all-zero one, so the commit can list
        # them all and a missing file is damage (Zarr would silently read it as the fill value)
        self.arrays = {
            key: self.group.create_array(
                key, shape=(capacity, *spec.shape), dtype=spec.dtype, chunks=(1, *spec.shape), compressors=_compressors(),
                config={"write_empty_chunks": True},
            )
            for key, spec in column.schema.items()
        }
        self.checksums: dict[str, list[str]] = {key: [] for key in column.schema}  # per row, of the values written
        self.capacity = capacity
        self.rows = 0

    def check(self, arrays: dict[str, np.ndarray], n: int) -> None:
        """Raise StoreError unless `arrays` are n rows of this column's schema (callers check before queueing)."""
        self.column._check_arrays(self.shard, arrays, n)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Write the next rows: arrays [n, ...] per schema key, cast to the schema dtype."""
        n = len(next(iter(arrays.values()))) if arrays else 0
        self.check(arrays, n)
        if self.rows + n > self.capacity:
            raise StoreError(f"shard {self.shard} of {self.column.dirname}: {self.rows + n} rows exceed its {self.capacity} clips")
        if n:
            for key, spec in self.column.schema.items():
                block = np.asarray(arrays[key]).astype(spec.dtype, copy=False)
                self.arrays[key][self.rows : self.rows + n] = block
                self.checksums[key] += [checksum(row) for row in block]
        self.rows += n

    def commit(self, records: list[dict], failed: list[dict]) -> dict:
        """Trim to the rows written, store the records, then write the commit record (atomically, last)."""
        if len(records) != self.rows:
            raise StoreError(f"shard {self.shard} of {self.column.dirname}: {len(records)} records for {self.rows} written rows")
        if self.rows != self.capacity:
            for arr in self.arrays.values():
                arr.resize((self.rows, *arr.shape[1:]))
        self.group.attrs["records"] = records
        self._check_intact()
        record = {
            "shard": self.shard,
            "attempt": self.name,
            "clips": [r["key"] for r in records],
            "indices": [r["index"] for r in records],
            "failed": failed,
            "committed": time.time(),
            "column": self.column.dirname,
            "checksum": CHECKSUM,
            "checksums": self.checksums,
            "chunks": {
                key: [arr.metadata.encode_chunk_key((row,) + (0,) * (arr.ndim - 1)) for row in range(self.rows)]
                for key, arr in self.arrays.items()
            },
        }
        write_json_atomic(self.column.store.fs, self.column._path("commits", f"{self.shard:05d}.json"), record)
        self.lease.release()
        return record

    def _check_intact(self) -> None:
        """Refuse to commit an attempt whose lease is no longer ours or whose folder lost an array:
        a commit record must never name data that is not all there."""
        fs = self.column.store.fs
        base = self.column._path("shards", self.name)
        missing = [key for key in ("", *self.column.schema) if not fs.exists(join(base, key, "zarr.json") if key else join(base, "zarr.json"))]
        problem = self.lease.check()
        if missing:
            problem = f"arrays {', '.join(m or '<group>' for m in missing)} are missing from it" + (f" and {problem}" if problem else "")
        if problem:
            raise StoreError(
                f"shard {self.shard} of column {self.column.dirname} in {self.column.store.url}: attempt {self.name} "
                f"not committed: {problem}; rerun extract to redo the shard"
            )


class FeatureStore:
    """A store at `url`: `FeatureStore(url).create_column(...)`, `.column(name)`, `.snapshot()`."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs, self.path = filesystem(self.url, self.storage_options)
        self._pid = os.getpid()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """This process's filesystem.

        A forked DataLoader worker inherits the parent's store, but fsspec's async filesystems (s3fs,
        gcsfs) refuse use after a fork ("This class is not fork-safe"): a new pid opens its own,
        outside fsspec's instance cache so nothing of the parent's event loop is reused.
        """
        if self._pid != os.getpid():
            self._fs = filesystem(self.url, {**self.storage_options, "skip_instance_cache": True})[0]
            self._pid = os.getpid()
        return self._fs

    def __getstate__(self) -> dict:
        # pickled into spawned workers: the filesystem is reopened there, never shipped
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["storage_options"])

    # -- corpus snapshot ------------------------------------------------------------------
    def snapshot(self) -> Snapshot | None:
        path = join(self.path, "corpus", "snapshot.json")
        if not self.fs.exists(path):
            return None
        return Snapshot.from_json(read_json(self.fs, path, ("source", "clips_per_shard", "clips")))

    def freeze_snapshot(self, snapshot: Snapshot) -> Snapshot:
        """Write the snapshot on first use; later runs must list the same corpus or be told why not."""
        existing = self.snapshot()
        if existing is not None:
            if existing.id != snapshot.id:
                raise StoreError(
                    f"{self.url} holds a snapshot of another corpus listing ({len(existing.clips)} clips from "
                    f"{existing.source}, {existing.clips_per_shard} per shard); this run lists {len(snapshot.clips)} "
                    f"clips from {snapshot.source}, {snapshot.clips_per_shard} per shard. Use a new store."
                )
            return existing
        write_json_atomic(self.fs, join(self.path, "store.json"), {"format_version": FORMAT_VERSION})
        write_json_atomic(self.fs, join(self.path, "corpus", "snapshot.json"), snapshot.to_json())
        return snapshot

    def require_snapshot(self) -> Snapshot:
        snap = self.snapshot()
        if snap is None:
            raise StoreError(f"{self.url} is not a feature store (no corpus/snapshot.json); run `sam2videox extract` first")
        return snap

    # -- columns --------------------------------------------------------------------------
    def create_column(self, name: str, config: dict, schema: dict[str, ArraySpec], attrs: dict | None = None) -> Column:
        """Open the column keyed by (name, hash(config)), creating its metadata on first use."""
        digest = config_hash({"name": name, "config": config, "format_version": FORMAT_VERSION})
        meta = {
            "name": name,
            "hash": digest,
            "format_version": FORMAT_VERSION,
            "config": config,
            "schema": {k: v.to_json() for k, v in schema.items()},
            "attrs": attrs or {},
            "snapshot": self.require_snapshot().id,
        }
        path = join(self.path, "columns", f"{name}-{digest}", "column.json")
        if self.fs.exists(path):
            existing = read_json(self.fs, path, COLUMN_KEYS)
            if existing["schema"] != meta["schema"]:
                raise StoreError(f"column {name}-{digest} in {self.url} has another schema: {existing['schema']}")
            return Column(self, existing)
        write_json_atomic(self.fs, path, meta)
        return Column(self, meta)

    def columns(self) -> list[Column]:
        base = join(self.path, "columns")
        if not self.fs.exists(base):
            return []
        out = []
        for d in sorted(self.fs.ls(base, detail=False)):
            meta_path = join(d, "column.json")
            if self.fs.exists(meta_path):
                out.append(Column(self, read_json(self.fs, meta_path, COLUMN_KEYS)))
        return out

    def column(self, name: str, hash: str | None = None) -> Column:
        """The column called `name` (or `name-hash` / a hash prefix); refuses to guess between several."""
        if hash is None and "-" in name:
            name, hash = name.split("-", 1)
        found = [c for c in self.columns() if c.name == name and (hash is None or c.hash.startswith(hash))]
        if not found:
            have = ", ".join(c.dirname for c in self.columns()) or "none"
            raise StoreError(f"no column '{name}{'-' + hash if hash else ''}' in {self.url}; columns: {have}")
        if len(found) > 1:
            raise StoreError(
                f"{len(found)} columns named '{name}' in {self.url} ({', '.join(c.dirname for c in found)}); "
                f"name one as {name}-<hash>"
            )
        return found[0]

    def summary(self) -> dict:
        snap = self.require_snapshot()
        columns = self.columns()
        records = [c.commit_records() for c in columns]
        cols = [c.summary(r) for c, r in zip(columns, records)]
        failed_keys = {f["key"] for c, r in zip(columns, records) for f in c.ledger(r)}
        return {
            "store": self.url,
            "snapshot": snap.id,
            "clips": len(snap.clips),
            "shards": snap.num_shards,
            "clips_per_shard": snap.clips_per_shard,
            "failed": len(failed_keys),
            "columns": cols,
            "bytes_per_clip": sum(c["bytes_per_clip"] for c in cols),
            "schema_bytes_per_clip": sum(c["schema_bytes_per_clip"] for c in cols),
        }


def schema_bytes(schema: dict[str, ArraySpec]) -> int:
    """Uncompressed bytes of one clip under `schema` (what a column's producer writes before compression)."""
    return sum(int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize for spec in schema.values())


def join_shard(columns: Iterable[Column], shard: int) -> tuple[list[dict], dict[str, dict[str, zarr.Array]], list[list[int]]]:
    """Align one shard across columns by snapshot index.

    Returns (records of the clips present in every column, arrays per column, and for each column
    the row of each joined clip). Clips that failed in any column are left out. A clip whose key
    differs between columns at the same snapshot index means the columns were built from different
    snapshots: that is an error, never a silent misalignment.
    """
    columns = list(columns)
    records, shards, picks = join_shard_data(columns, [c.read_shard(shard) for c in columns])
    return records, {c.name: s.arrays for c, s in zip(columns, shards)}, picks


def join_shard_data(columns: list[Column], shards: list[ShardData]) -> tuple[list[dict], list[ShardData], list[list[int]]]:
    """join_shard on shards already read (one per column): the ShardData carry the commits, for `Column.read_row`."""
    shard = shards[0].shard if shards else -1
    rows_by_index = []
    for col, data in zip(columns, shards):
        rows = {}
        for row, rec in enumerate(data.records):
            rows[rec["index"]] = (row, rec["key"])
        rows_by_index.append(rows)
    common = sorted(set.intersection(*(set(r) for r in rows_by_index))) if rows_by_index else []
    records, picks = [], [[] for _ in columns]
    for index in common:
        keys = {rows[index][1] for rows in rows_by_index}
        if len(keys) != 1:
            names = ", ".join(c.dirname for c in columns)
            raise StoreError(f"shard {shard}: snapshot index {index} is {sorted(keys)} across columns {names}")
        merged: dict = {}
        for j, rows in enumerate(rows_by_index):
            picks[j].append(rows[index][0])
            merged.update(shards[j].records[rows[index][0]])
        records.append(merged)
    return records, shards, picks


def _why(exc: BaseException) -> str:
    """One line for an exception from zarr/numcodecs/fsspec."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _age(fs: fsspec.AbstractFileSystem, path: str) -> float:
    """Seconds since a Zarr group folder was written (its zarr.json); 0 when unknown (never old enough to remove)."""
    try:
        info = fs.info(join(path, "zarr.json"))
    except FileNotFoundError:
        return float("inf")  # no group metadata: an attempt that never got started
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
    if mtime is None:
        return 0.0
    return time.time() - (mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime))


def _compressors() -> list:
    # fp16 activations compress ~1.05-1.2x losslessly (platform.md): a light, fast codec is enough.
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
