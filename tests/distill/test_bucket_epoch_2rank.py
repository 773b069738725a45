"""One epoch of the tiny Wan student on a mixed-size store (video.buckets) on 2 gloo ranks: no hang, every
batch one bucket, the same number of steps on both ranks, held-out validation over clips of several sizes."""

from __future__ import annotations

import math
import os

import pytest

from stages.store import FeatureStore
from stages.store.schema import BUCKET
from test_parallel import overrides, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_epoch_on_two_ranks_of_a_mixed_size_store(bucket_store, tmp_path, monkeypatch, strategy):
    from test_bucket_stream import _stream

    col = FeatureStore(bucket_store).column("encodings")
    buckets = {r["key"]: tuple(r[BUCKET.bucket]) for s in col.committed_shards() for r in col.shard_records(s)}
    # one clip of each bucket held out (validated at the end, each at its own size), nothing filtered: the
    # epoch is the stream's, known before the run
    held = ["land_long", "land_short", "port_a", "square_a"]
    epoch = _stream(bucket_store, 0, 2, monkeypatch, exclude=held).batches_per_epoch(0)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert epoch >= 1
    extra = ["student.model=tiny-wan", "student.task=t2v", "train.batch_size=2", f"train.steps={epoch}",
             "data.holdout=0", f"data.holdout_keys={held}", "data.filter.enabled=false", f"eval.every={epoch}", "eval.max_clips=4",
             f"parallel.strategy={strategy}"]
    ranks = torchrun(tmp_path, strategy, {"mode": "run", "validate": True, "overrides": overrides(bucket_store, tmp_path / "run", *extra)})
    seen = []
    for r in ranks:
        assert r["batches_per_epoch"] == epoch
        assert len(r["history"]) == epoch and all(row["epoch"] == 0 for row in r["history"])
        assert r["position"] == {"epoch": 0, "batch": epoch}  # the whole epoch, no more
        for row in r["history"]:
            assert len(row["clips"]) == 2 and len({buckets[k] for k in row["clips"]}) == 1, row["clips"]
            assert math.isfinite(row["loss"]) and math.isfinite(row["terms"]["lgf"])
            seen += row["clips"]
        # validation ran over the held-out clips of all four buckets, the same on every rank
        assert all(math.isfinite(v) for v in r["val"].values()) and r["val"] == ranks[0]["val"]
    assert len(seen) == len(set(seen)) and not set(seen) & set(held)  # no clip twice in the epoch, none held out
    assert len({buckets[k] for k in seen}) >= 2  # the epoch did train on several sizes
