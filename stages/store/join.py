"""Aligning one shard across columns by snapshot index (what training and validation read)."""

from __future__ import annotations

from typing import Iterable

import zarr

from stages.store.column import Column, ShardData
from stages.store.format import StoreError


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
