"""One column of the store and how it is read: its commit records, claims, shards and clip rows.

Readers only follow commit records (stages/store/format.py); writing a shard goes through
stages/store/writer.py's ShardWriter, which `Column.open_shard` starts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import zarr

from stages.core.fs import is_local, join, write_json_atomic
from stages.store.format import CHECKSUM, COMMIT_KEYS, ArraySpec, ShardBusy, StoreError, error_line, checksum, read_json, schema_bytes
from stages.store.lease import Lease, LeaseOwner, claim, lease_alive, sweep_temp_files
from stages.store.writer import ShardWriter, compressors
from stages.store.schema import BUCKET

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

    def __init__(self, store: Any, meta: dict):  # store: the FeatureStore that opened this column (its fs and url)
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
                raise StoreError(f"{self._path(attempt, k, 'zarr.json')}: array '{k}' unreadable ({error_line(exc)})") from exc
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
            raise damaged(f"unreadable chunk {chunk} ({error_line(exc)})") from exc
        sums = data.commit.get("checksums", {}).get(name)
        if sums is not None:
            if row >= len(sums):
                raise damaged(f"commit record lists {len(sums)} checksums for {len(data.records)} clips")
            got = checksum(values)
            if got != sums[row]:
                if not self.store.fs.exists(chunk):
                    raise damaged(f"missing chunk {chunk}")
                raise damaged(f"checksum mismatch in {chunk} (committed {sums[row]}, read {got})")
        # a mixed-size store (video.buckets) pads every clip to the schema's shape: crop to this clip's own
        shape = (data.records[row].get(BUCKET.shapes) or {}).get(name) if row < len(data.records) else None
        if shape is not None and tuple(shape) != values.shape:
            values = values[tuple(slice(0, int(n)) for n in shape)]
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
            raise StoreError(f"{self._path(rel, 'zarr.json')}: group unreadable ({error_line(exc)})") from exc

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
            group.create_array(key, data=value, compressors=compressors())
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
                raise StoreError(f"{self._path(record['attempt'], k)}: column array '{k}' unreadable ({error_line(exc)})") from exc
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
