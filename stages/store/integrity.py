"""Verify a store's committed shards against their commit records: what `inspect --verify` and
`extract` (cheaply) / `extract --repair` (fully) run.

Two depths:
  cheap: every commit record parses, its attempt's group and array metadata (zarr.json) open, the
         group holds a record per committed clip, and every chunk the commit lists exists
         (one listing per attempt): what `extract` checks before it skips a committed shard.
  full:  cheap, then every clip of every array is read and its CRC-32 compared with the commit's:
         flipped bytes, a damaged chunk header, chunks swapped between clips, a missing chunk.

Commit records written before checksums existed have no checksums nor chunk list: their shards
are counted "unverified" (readable, but nothing to compare against), never called damaged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

from stages.store.column import Column, ShardData
from stages.store.feature_store import FeatureStore
from stages.store.format import COLUMN_KEYS, ClipDamage, StoreError, read_json
from stages.store.schema import CLIP, COMMIT

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    store: str
    full: bool
    damaged: list[ClipDamage] = field(default_factory=list)
    unverified: list[tuple[str, int]] = field(default_factory=list)  # (column dirname, shard) without checksums
    shards: int = 0  # committed shards checked (all columns)
    clips: int = 0  # committed clips checked (all columns)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def damaged_shards(self) -> dict[str, set[int]]:
        """{column dirname: shards with damage}; a column-level damage (its column arrays) is shard None."""
        out: dict[str, set] = {}
        for d in self.damaged:
            out.setdefault(d.column, set()).add(d.shard)
        return out

    def to_json(self) -> dict:
        return {
            "store": self.store,
            "depth": "full" if self.full else "cheap",
            "ok": self.ok,
            "shards": self.shards,
            "clips": self.clips,
            "damaged": [d.to_json() for d in self.damaged],
            "unverified": [{"column": c, "shard": s} for c, s in self.unverified],
        }


def verify_store(store: FeatureStore, full: bool = True, columns: Iterable[Column] | None = None) -> VerifyReport:
    """Check every committed shard of `columns` (default: all of the store's columns).

    The whole store (columns=None) is also checked across columns: a column folder whose column.json is
    missing or unreadable (its committed shards would be invisible), and columns that disagree on the
    committed shards (training joins them by clip: the shards one lacks would be left out)."""
    report = VerifyReport(store.url, full)
    if columns is None:
        columns, report.damaged = column_folders(store)
        committed = {c.dirname: c.committed_shards() for c in columns}
        for name, missing in column_gaps(committed).items():
            others = sorted(n for n, shards in committed.items() if n != name and set(missing) & set(shards))
            report.damaged += [ClipDamage(name, shard, f"not committed, while {', '.join(others)} committed it (a run training on both would leave its clips out); "
                                                        f"`sam2videox extract` with this column's config extracts it") for shard in missing]
    for column in columns:
        verify_column(column, full, report)
    return report


def column_gaps(committed: dict[str, Iterable[int]]) -> dict[str, list[int]]:
    """{column: shards another column committed but it did not}; empty when the columns agree."""
    sets = {name: set(shards) for name, shards in committed.items()}
    every = set().union(*sets.values()) if sets else set()
    return {name: sorted(every - shards) for name, shards in sets.items() if every - shards}


def column_folders(store: FeatureStore) -> tuple[list[Column], list[ClipDamage]]:
    """(the columns whose column.json reads, damage of every folder under columns/ whose column.json is
    missing or unreadable): FeatureStore.columns() skips the first silently and fails on the second."""
    fs, base = store.fs, f"{store.path}/columns"
    columns, damage = [], []
    for folder in sorted(fs.ls(base, detail=False)) if fs.exists(base) else []:
        name, meta = folder.rstrip("/").rsplit("/", 1)[-1], f"{folder.rstrip('/')}/column.json"
        try:
            columns.append(Column(store, read_json(fs, meta, COLUMN_KEYS)))
            continue
        except StoreError as exc:
            cause = str(exc)
        commits = f"{folder.rstrip('/')}/commits"
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(commits, detail=False)] if fs.exists(commits) else []
        shards = sum(n.endswith(".json") and n[:-5].isdigit() for n in names)
        if not shards and not fs.exists(meta):  # nothing committed to lose (a column being created, a stray file)
            continue
        damage.append(ClipDamage(name, None, f"{cause}: the column's {shards} committed shard(s) are invisible to every reader; "
                                             f"`sam2videox extract` with the config that made it writes it again"))
    return columns, damage


def verify_column(column: Column, full: bool, report: VerifyReport) -> None:
    for shard in sorted(column.committed_shards()):
        report.shards += 1
        report.damaged += verify_shard(column, shard, full, report)
    if column.has_column_arrays():
        try:
            if full:
                column.column_arrays()
            else:
                read_json(column.store.fs, column._path("commits", "column.json"), ("attempt", "keys"))
        except StoreError as exc:
            report.damaged.append(ClipDamage(column.dirname, None, f"column arrays: {exc}"))


def verify_shard(column: Column, shard: int, full: bool, report: VerifyReport) -> list[ClipDamage]:
    """The damage of one committed shard (empty when clean)."""
    try:
        record = column.commit_record(shard)
    except StoreError as exc:  # a truncated or garbled commit record: no clip of the shard can be trusted
        keys = [c[CLIP.key] for c in column.store.require_snapshot().shard_clips(shard)]
        return [ClipDamage(column.dirname, shard, f"commit record {exc}", key) for key in keys] or [ClipDamage(column.dirname, shard, f"commit record {exc}")]
    clips = record[COMMIT.clips]
    report.clips += len(clips)
    if COMMIT.checksums not in record:
        report.unverified.append((column.dirname, shard))
    attempt = column._path("shards", record[COMMIT.attempt])
    try:
        group = column._open_group(f"shards/{record[COMMIT.attempt]}")
    except StoreError as exc:
        return [ClipDamage(column.dirname, shard, str(exc), key, None) for key in clips]
    damage, arrays = [], {}
    for name in column.schema:
        try:
            arrays[name] = group[name]
        except Exception as exc:  # noqa: BLE001 - missing or garbled array metadata
            cause = f"{column._path('shards', record[COMMIT.attempt], name, 'zarr.json')}: missing or unreadable ({type(exc).__name__})"
            damage += [ClipDamage(column.dirname, shard, cause, key, name) for key in clips]
    records = group.attrs.get("records")
    if not isinstance(records, list) or len(records) != len(clips):
        return damage + [ClipDamage(column.dirname, shard, f"{attempt}/zarr.json: no clip records for the {len(clips)} committed clips")]
    missing = column.missing_chunks(record)  # one listing: every chunk the commit names must exist
    damage += [ClipDamage(column.dirname, shard, f"missing chunk {path}", clips[row], name) for (name, row), path in missing.items() if name in arrays]
    if full:
        data = ShardData(shard, arrays, records, record[COMMIT.failed], record, missing)
        seen = {(d.key, d.array) for d in damage}
        for name in arrays:
            for row, key in enumerate(clips):
                if (key, name) in seen:
                    continue
                try:
                    column.read_row(data, name, row)
                except StoreError as exc:
                    damage.append(ClipDamage(column.dirname, shard, getattr(exc, "cause", str(exc)), key, name))
    return damage


def readable_commit_records(column: Column) -> dict[int, dict]:
    """{shard: record} of the commit records that parse (damaged ones are the verifier's to report)."""
    out = {}
    for shard in sorted(column.committed_shards()):
        try:
            out[shard] = column.commit_record(shard)
        except StoreError as exc:
            log.warning("%s", exc)
    return out
