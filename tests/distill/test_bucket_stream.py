"""The stream of a mixed-size store: batches of one bucket each, the same number on every rank, a seeded order."""

from __future__ import annotations

import pytest
import torch

from stages.distill.stream import ClipStream, StreamPosition
from stages.store import FeatureStore
from stages.store.schema import BUCKET


def _stream(url: str, rank: int, world: int, monkeypatch, batch_size: int = 2, seed: int = 0, exclude=()) -> ClipStream:
    # the stream takes its rank from torch.distributed or RANK / WORLD_SIZE, as wds.split_by_node does
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    store = FeatureStore(url)
    cols = [store.column("teacher"), store.column("encodings")]
    return ClipStream(store, cols, {"teacher": ["lgf", "mask"], "encodings": ["latents", "prompt_embeds"]}, batch_size, seed, 8, 0,
                      exclude=exclude)


def _buckets(url: str) -> dict[str, tuple]:
    col = FeatureStore(url).column("encodings")
    return {r["key"]: tuple(r[BUCKET.bucket]) for s in col.committed_shards() for r in col.shard_records(s)}


@pytest.mark.parametrize("world", [1, 2])
def test_every_batch_is_one_bucket_and_every_rank_yields_the_same_count(bucket_store, monkeypatch, world):
    buckets = _buckets(bucket_store)
    counts, seen = [], []
    for rank in range(world):
        stream = _stream(bucket_store, rank, world, monkeypatch)
        assert stream.bucket_counts is not None
        n = stream.batches_per_epoch(0)
        batches = list(stream.epoch(StreamPosition(0, 0)))
        assert len(batches) == n > 0
        counts.append(n)
        for b in batches:
            (bucket,) = {buckets[k] for k in b["keys"]}  # one bucket per batch
            f, h, w = bucket
            grid = ((f - 1) // 4 + 1, h // 16, w // 16)
            assert tuple(b["latents"].shape) == (2, b["latents"].shape[1], grid[0], h // 8, w // 8)
            assert tuple(b["mask"].shape) == (2, *grid)
            assert tuple(b["lgf"].shape[:4]) == (2, grid[0] - 1, *grid[1:])
            assert torch.isfinite(b["latents"].float()).all()
            seen += b["keys"]
    assert len(set(counts)) == 1, counts
    assert len(seen) == len(set(seen))  # ranks read disjoint shards: no clip twice in an epoch
    # the larger count a rank could fill is dropped to the smallest; with one rank every full bucket batch is there
    if world == 1:
        per_bucket = {}
        for b in buckets.values():
            per_bucket[b] = per_bucket.get(b, 0) + 1
        assert counts[0] == sum(n // 2 for n in per_bucket.values())


def test_the_bucketed_order_is_seeded(bucket_store, monkeypatch):
    def keys(seed: int, epoch: int) -> list[list[str]]:
        return [b["keys"] for b in _stream(bucket_store, 0, 1, monkeypatch, seed=seed).epoch(StreamPosition(epoch, 0))]

    assert keys(0, 0) == keys(0, 0)
    assert keys(0, 0) != keys(0, 1) or keys(0, 0) != keys(1, 0)


def test_the_memory_plan_takes_the_largest_bucket_not_the_padded_envelope(bucket_store):
    from conftest import ROOT
    from stages.config.distill import DistillConfig
    from stages.config.loader import load_config
    from stages.distill.data import largest_latent_shape, open_training_data

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml",
                      [f"data.store={bucket_store}", "student.model=tiny-wan", "student.task=t2v"])
    data = open_training_data(cfg)
    assert tuple(data.encodings.schema["latents"].shape[1:]) == (5, 12, 12)  # 17 x 96 x 96: no bucket is that large
    assert largest_latent_shape(data) == (5, 8, 12)  # [17, 64, 96]: 5 latent frames of 8 x 12


def test_a_student_trained_at_one_size_refuses_a_mixed_size_store(bucket_store):
    from conftest import ROOT
    from stages.config.distill import DistillConfig
    from stages.config.loader import load_config
    from stages.distill.data import StoreMismatch, check_fit, open_training_data
    from stages.families.registry import get_student

    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [f"data.store={bucket_store}"])  # the tiny CogVideoX 1.0
    student = get_student("cogvideox")
    transformer, _ = student.load("tiny", "i2v", torch.float32, "cpu")
    with pytest.raises(StoreMismatch, match=r"extracted at several sizes .* student\.model=tiny trains at one size only"):
        check_fit(open_training_data(cfg), transformer.config, cfg, student)
