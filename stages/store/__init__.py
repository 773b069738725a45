"""The feature store (floor 2: the on-disk contract): a frozen corpus snapshot plus columns of per-clip
arrays, sharded, in Zarr. Modules, one job each:

    format.py         layout, versions, checksums, StoreError, ArraySpec
    snapshot.py       Snapshot: the frozen clip listing, in shard order
    column.py         Column: one column's commit records, claims and checked reads
    writer.py         ShardWriter: one attempt at a shard, then its atomic commit
    join.py           join_shard: one shard aligned across columns
    feature_store.py  FeatureStore: the store at a URL, its snapshot and columns
    lease.py, integrity.py, holdout.py: shard claims, verification, the held-out split
"""

from stages.store.column import Column, ShardData
from stages.store.feature_store import FeatureStore
from stages.store.format import ArraySpec, ClipDamage, ShardBusy, StoreError, schema_bytes
from stages.store.join import join_shard, join_shard_data
from stages.store.snapshot import Snapshot
from stages.store.writer import ShardWriter

__all__ = [
    "ArraySpec",
    "ClipDamage",
    "Column",
    "FeatureStore",
    "ShardBusy",
    "ShardData",
    "ShardWriter",
    "Snapshot",
    "StoreError",
    "join_shard",
    "join_shard_data",
    "schema_bytes",
]
