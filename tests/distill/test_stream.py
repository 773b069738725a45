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


# -- on_corrupt=skip across ranks: a rank that left clips out still yields the epoch's batch count ------


def damaged_store(tmp_path):
    """test_store_integrity's store (3 shards of 2 clips) with clip c2 (shard 1, row 0) damaged."""
    from test_store_integrity import build, flip_bytes

    store = build(tmp_path)
    flip_bytes(store)
    return store


def rank_epochs(store, monkeypatch, epochs, **kw) -> dict[tuple[int, int], tuple[list[list[str]], int, int]]:
    """(epoch, rank) -> (batches' keys, batches_per_epoch, clips skipped) for two simulated ranks."""
    from test_store_integrity import make_stream

    out = {}
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        for epoch in epochs:
            stream = make_stream(store, batch_size=1, on_corrupt="skip", **kw)
            batches = [b["keys"] for b in stream.epoch(StreamPosition(epoch))]
            out[epoch, rank] = batches, stream.batches_per_epoch(epoch), stream.skipped
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_on_corrupt_skip_gives_every_rank_the_same_batch_count(tmp_path, monkeypatch, workers):
    """Rank 1 holds one shard (2 clips), rank 0 two: in an epoch where the damaged clip is rank 1's,
    rank 1 used to yield 1 batch where rank 0 yielded 2, start its next epoch a step early and drift."""
    store = damaged_store(tmp_path)
    seen = rank_epochs(store, monkeypatch, range(4), num_workers=workers)
    short = [e for e in range(4) if seen[e, 1][2] == 1]  # epochs where the damage fell to the one-shard rank
    assert short, "the damaged clip never landed on the short rank: the test would not exercise the top-up"
    for epoch in range(4):
        (keys0, total, _), (keys1, total1, _) = seen[epoch, 0], seen[epoch, 1]
        assert total == total1 == 2
        assert len(keys0) == len(keys1) == total  # the same batch count on both ranks, damage or not
        flat0, flat1 = {k for b in keys0 for k in b}, {k for b in keys1 for k in b}
        assert "c2" not in flat0 | flat1  # the damaged clip is never trained on
        assert not flat0 & flat1  # the top-up comes from the rank's own shards first: still disjoint
    for epoch in short:
        assert seen[epoch, 1][0] == [["c3"], ["c3"]]  # its shard's other clip, once more


def test_a_position_inside_the_top_up_resumes_the_same_sequence(tmp_path, monkeypatch):
    from test_store_integrity import make_stream

    store = damaged_store(tmp_path)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    stream = make_stream(store, batch_size=1, on_corrupt="skip", seed=5)
    epoch = next(e for e in range(8) if stream.shard_order(e)[1::2] == [1])  # rank 1 holds only the damaged shard
    full = keys_of(stream, epoch)
    assert len(full) == stream.batches_per_epoch(epoch) == 2
    assert keys_of(stream, epoch, batch=1) == full[1:]  # the topped-up batch, again
    assert stream.skipped == 2  # met once per pass over the rank's shards (the top-up's re-reads are not counted)


def test_a_rank_whose_every_clip_is_damaged_tops_up_from_the_other_shards(tmp_path, monkeypatch):
    from test_store_integrity import build, delete_array_metadata

    store = build(tmp_path)
    delete_array_metadata(store)  # shard 1: neither clip can be read
    seen = rank_epochs(store, monkeypatch, range(4))
    for epoch in range(4):
        assert len(seen[epoch, 0][0]) == len(seen[epoch, 1][0]) == seen[epoch, 0][1] == 2
        assert not {"c2", "c3"} & {k for r in range(2) for b in seen[epoch, r][0] for k in b}


def test_a_store_with_no_readable_clip_left_is_a_clear_error(tmp_path):
    from test_store_integrity import attempt_dir, build, make_stream

    store = build(tmp_path)
    for shard in range(3):
        (attempt_dir(store, "teacher", shard) / "lgf" / "zarr.json").unlink()
    stream = make_stream(store, batch_size=1, on_corrupt="skip")
    with pytest.raises(StoreError, match="no readable clip") as info:
        list(stream.epoch(StreamPosition()))
    assert store.url in str(info.value) and "\n" not in str(info.value)
