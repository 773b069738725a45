"""WebDataset streaming over the store: joins, rank split, equal batches per rank, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from stages.store import ArraySpec, FeatureStore, Snapshot, StoreError
from stages.distill.stream import ClipStream, StreamPosition

SIZES = [3, 2, 3, 1, 3]  # uneven shards (clips_per_shard 3; shard 1 and 3 lost clips to failures)


@pytest.fixture
def store(tmp_path):
    store = FeatureStore(str(tmp_path / "store"))
    n = 3 * len(SIZES)
    store.freeze_snapshot(Snapshot("/x", 3, [{"key": f"c{i:02d}", "url": f"/x/{i}.mp4", "caption": "", "prompt": None} for i in range(n)]))
    teacher = store.create_column("teacher", {}, {"lgf": ArraySpec((2, 2), "float16"), "fwd": ArraySpec((4,), "float16")})
    enc = store.create_column("encodings", {}, {"latents": ArraySpec((3,), "float16")})
    for shard, size in enumerate(SIZES):
        idx = [3 * shard + j for j in range(size)]
        recs = [{"key": f"c{i:02d}", "index": i} for i in idx]
        fail = [{"key": f"c{i:02d}", "index": i, "reason": "bad"} for i in range(3 * shard + size, 3 * shard + 3)]
        teacher.write_shard(shard, {"lgf": np.stack([np.full((2, 2), i, "float16") for i in idx]), "fwd": np.zeros((size, 4), "float16")}, recs, fail)
        enc.write_shard(shard, {"latents": np.stack([np.full(3, i, "float16") for i in idx])}, recs, fail)
    return store


def make(store, **kw):
    cols = [store.column("teacher"), store.column("encodings")]
    args = {"arrays": {"teacher": ["lgf"], "encodings": ["latents"]}, "batch_size": 2, "seed": 3, "shuffle_buffer": 4}
    args.update(kw)
    return ClipStream(store, cols, **args)


def keys_of(stream, epoch=0, batch=0):
    return [k for b in stream.epoch(StreamPosition(epoch, batch)) for k in b["keys"]]


def test_joined_batches_carry_both_columns(store):
    stream = make(store)
    batches = list(stream.epoch(StreamPosition()))
    assert len(batches) == stream.batches_per_epoch() == sum(SIZES) // 2
    b = batches[0]
    assert b["lgf"].shape == (2, 2, 2) and b["latents"].shape == (2, 3) and "fwd" not in b
    for i, index in enumerate(b["index"]):  # the two columns' rows belong to the same clip
        assert b["lgf"][i, 0, 0].item() == b["latents"][i, 0].item() == index


def test_epochs_reshuffle_deterministically(store):
    a, b = make(store), make(store)
    assert keys_of(a, 0) == keys_of(b, 0)
    assert keys_of(a, 0) != keys_of(a, 1)


def test_resume_from_a_position_continues_the_same_sequence(store):
    stream = make(store)
    full = keys_of(stream, 1)
    assert keys_of(stream, 1, batch=2) == full[4:]


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_get_disjoint_clips_and_equal_batches(store, monkeypatch, workers):
    seen, counts = [], []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = make(store, num_workers=workers, batch_size=1)
        batches = list(stream.epoch(StreamPosition()))
        counts.append(len(batches))
        seen.append({k for b in batches for k in b["keys"]})
        assert len(batches) == stream.batches_per_epoch()
    assert counts[0] == counts[1] > 0
    assert not (seen[0] & seen[1])


def test_too_few_clips_for_a_batch_is_a_clear_error(store):
    with pytest.raises(StoreError, match="no full batch of 64"):
        make(store, batch_size=64).batches_per_epoch()


def test_workers_stream_from_s3(store, moto_s3):
    """DataLoader workers fork after the parent used its S3 filesystem: each must open its own."""
    options, fs = moto_s3
    fs.put(store.path, "bucket/store", recursive=True)
    remote = FeatureStore("s3://bucket/store", options)
    local = keys_of(make(store, num_workers=2, batch_size=1))
    stream = make(remote, num_workers=2, batch_size=1)  # reads commit records in this process first
    assert keys_of(stream) == local and len(local) == sum(SIZES)


def test_excluded_keys_are_neither_streamed_nor_counted(store):
    gone = {"c00", "c01", "c02", "c04"}  # all of shard 0, one of shard 1
    stream = make(store, exclude=gone, batch_size=1)
    assert 0 not in stream.clip_counts and stream.clip_counts[1] == 1
    keys = keys_of(stream)
    assert len(keys) == stream.batches_per_epoch() == sum(SIZES) - 4
    assert not gone & set(keys)


def test_quantized_arrays_come_back_dequantized(tmp_path):
    from stages.core.quantize import QUANT_INT8, quantize

    store = FeatureStore(str(tmp_path / "q"))
    store.freeze_snapshot(Snapshot("/x", 2, [{"key": f"c{i}", "url": f"/x/{i}.mp4", "caption": "", "prompt": None} for i in range(2)]))
    feats = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    q, scale = quantize(feats)
    col = store.create_column("teacher", {}, {"fwd": ArraySpec((3, 8), "int8"), "fwd_scale": ArraySpec((3, 1), "float32")}, {"quantized": {"fwd": QUANT_INT8}})
    col.write_shard(0, {"fwd": q, "fwd_scale": scale}, [{"key": f"c{i}", "index": i} for i in range(2)], [])
    stream = ClipStream(store, [store.column("teacher")], {"teacher": ["fwd"]}, batch_size=2, shuffle_buffer=1)
    (batch,) = list(stream.epoch(StreamPosition()))
    assert batch["fwd"].dtype.is_floating_point
    order = [int(k[1:]) for k in batch["keys"]]
    np.testing.assert_allclose(batch["fwd"].numpy(), feats[order], atol=float(scale.max()) / 2 + 1e-6)
