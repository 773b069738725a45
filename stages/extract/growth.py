"""A growing bucket: clips added to the corpus after its snapshot was frozen.

A rerun lists the bucket again (names only; no file is read) and counts the keys the snapshot
lacks; `extract --append` hashes just those, flags or drops copies of clips already in the store
(corpus.dedupe), and extends the snapshot with them as new shards after the existing ones, so
no committed shard changes its clips and every column's existing work stays valid.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from stages.media.corpus import ClipEntry, copy_identity, list_corpus, mark_duplicates
from stages.media.decode import min_duration
from stages.config.extract import ExtractConfig
from stages.core.fs import join, write_json_atomic
from stages.store import FeatureStore, Snapshot

log = logging.getLogger(__name__)


@dataclass
class Growth:
    """What a rerun found in the bucket beyond the store's snapshot."""

    unlisted: int = 0  # clips in the bucket, not in the snapshot (0 after an append)
    appended: int = 0  # clips added to the snapshot by this run (extract --append)
    first_new_shard: int | None = None  # number of the first shard they fill


def bucket_listing(cfg: ExtractConfig) -> list[ClipEntry]:
    """The bucket's clips as cfg lists them, names only (no file is read for hashing)."""
    return list_corpus(dataclasses.replace(cfg.corpus, content_hash=False, dedupe=False), span=min_duration(cfg.video))


def known_keys(snapshot: Snapshot) -> set[str]:
    """Keys the snapshot accounts for: its clips, their flagged copies, and copies dropped by corpus.dedupe."""
    return {c["key"] for c in snapshot.clips} | {k for c in snapshot.clips for k in c.get("duplicates", ())} | set(snapshot.dropped)


def grow(
    store: FeatureStore, snapshot: Snapshot, cfg: ExtractConfig, append: bool, growth: Growth, listing: list[ClipEntry]
) -> Snapshot:
    """Count the listed clips the snapshot lacks; with `append`, add them. Returns the (new) snapshot.

    listing: `bucket_listing(cfg)`, listed once by the caller (the corpus.limit check reads it too).
    """
    have = known_keys(snapshot)
    new = [e for e in listing if e.key not in have]  # a dropped copy's key is known: it never comes back as new
    growth.unlisted = len(new)
    if new and append:
        grown = append_clips(store, snapshot, cfg, new)
        growth.appended = len(grown.clips) - len(snapshot.clips)
        growth.unlisted = 0  # every new key is in the snapshot now, or remembered as a dropped copy
        growth.first_new_shard = snapshot.num_shards if growth.appended else None
        return grown
    if new:
        log.warning("%d new clips in %s are not in the snapshot of %s; rerun with --append to add them", len(new), cfg.corpus.url, store.url)
    return snapshot


def append_clips(store: FeatureStore, snapshot: Snapshot, cfg: ExtractConfig, new: list[ClipEntry]) -> Snapshot:
    """Extend the store's snapshot with `new` clips (hashed here) as new shards; returns the new snapshot."""
    keys = [e.key for e in new]
    if cfg.corpus.content_hash:
        known = {copy_identity(c): c["key"] for c in snapshot.clips if c.get("content_hash")}
        new = mark_duplicates(new, cfg.corpus, known)
    kept = {e.key for e in new} | {k for e in new for k in e.duplicates}
    grown = snapshot.append([e.to_json() for e in new], [k for k in keys if k not in kept])
    if grown is not snapshot:
        write_json_atomic(store.fs, join(store.path, "corpus", "snapshot.json"), grown.to_json())
        log.info("appended %d clips to %s: shards %d..%d", len(new), store.url, snapshot.num_shards, grown.num_shards - 1)
    return grown
