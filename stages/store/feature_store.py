"""The feature store at a URL: its snapshot and its columns (layout: stages/store/format.py)."""

from __future__ import annotations

import os

import fsspec

from stages.config.loader import config_hash
from stages.core.fs import filesystem, join, write_json_atomic
from stages.store.column import Column
from stages.store.format import COLUMN_KEYS, FORMAT_VERSION, ArraySpec, StoreError, read_json
from stages.store.snapshot import Snapshot


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
