"""The feature store contract: snapshot, columns keyed by config hash, atomic shard commits, joins."""

import numpy as np
import pytest
import zarr

from stages.store import ArraySpec, FeatureStore, Snapshot, StoreError, join_shard

SCHEMA = {"fwd": ArraySpec((3, 2, 2, 4), "float16"), "mask": ArraySpec((3, 2, 2), "uint8")}


def make_store(tmp_path, n=5, per_shard=2):
    store = FeatureStore(str(tmp_path / "store"))
    clips = [{"key": f"c{i}", "url": f"/x/c{i}.mp4", "caption": "", "prompt": None} for i in range(n)]
    store.freeze_snapshot(Snapshot("/x", per_shard, clips))
    return store


def shard_arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"fwd": rng.standard_normal((n, 3, 2, 2, 4)).astype("float16"), "mask": rng.integers(0, 255, (n, 3, 2, 2)).astype("uint8")}


def test_snapshot_plan_and_refreeze(tmp_path):
    store = make_store(tmp_path)
    snap = store.require_snapshot()
    assert snap.num_shards == 3 and [c["key"] for c in snap.shard_clips(2)] == ["c4"]
    assert store.freeze_snapshot(Snapshot("/x", 2, snap.clips)).id == snap.id
    with pytest.raises(StoreError, match="another corpus listing"):
        store.freeze_snapshot(Snapshot("/x", 2, snap.clips[:3]))


def test_write_read_roundtrip_and_ledger(tmp_path):
    store = make_store(tmp_path)
    col = store.create_column("teacher", {"k": 7}, SCHEMA)
    arrays = shard_arrays(1)
    col.write_shard(0, arrays, [{"key": "c0", "index": 0}], [{"key": "c1", "index": 1, "reason": "zero-byte file"}])
    data = col.read_shard(0)
    assert np.array_equal(data.arrays["fwd"][...], arrays["fwd"]) and data.records[0]["key"] == "c0"
    assert data.arrays["fwd"].chunks == (1, 3, 2, 2, 4)
    assert col.ledger() == [{"key": "c1", "index": 1, "reason": "zero-byte file"}]
    assert col.committed_shards() == {0}


def test_uncommitted_attempt_is_invisible_and_collected(tmp_path):
    store = make_store(tmp_path)
    col = store.create_column("teacher", {"k": 7}, SCHEMA)
    # a crashed worker: arrays written, no commit record
    zarr.open_group(str(tmp_path / "store/columns" / col.dirname / "shards/00001.deadbeef.zarr"), mode="w")
    assert col.committed_shards() == set()
    with pytest.raises(StoreError, match="not committed"):
        col.read_shard(1)
    col.write_shard(1, shard_arrays(2), [{"key": "c2", "index": 2}, {"key": "c3", "index": 3}], [])
    assert col.collect_garbage() == 1
    assert np.asarray(col.read_shard(1).arrays["mask"]).shape == (2, 3, 2, 2)


def test_columns_are_keyed_by_config_hash(tmp_path):
    store = make_store(tmp_path)
    a = store.create_column("teacher", {"feature": "maskmem"}, SCHEMA)
    b = store.create_column("teacher", {"feature": "backbone"}, SCHEMA)
    assert a.hash != b.hash and store.create_column("teacher", {"feature": "maskmem"}, SCHEMA).hash == a.hash
    with pytest.raises(StoreError, match="2 columns named 'teacher'"):
        store.column("teacher")
    assert store.column("teacher", a.hash[:6]).hash == a.hash
    assert store.column(f"teacher-{b.hash}").hash == b.hash
    with pytest.raises(StoreError, match="no column 'encodings'"):
        store.column("encodings")


def test_schema_mismatch_is_refused(tmp_path):
    store = make_store(tmp_path)
    col = store.create_column("teacher", {}, SCHEMA)
    bad = shard_arrays(1)
    bad["fwd"] = bad["fwd"][:, :2]
    with pytest.raises(StoreError, match="array 'fwd' has shape"):
        col.write_shard(0, bad, [{"key": "c0", "index": 0}], [])


def test_join_excludes_failed_and_detects_misalignment(tmp_path):
    store = make_store(tmp_path)
    t = store.create_column("teacher", {}, SCHEMA)
    e = store.create_column("encodings", {}, {"lat": ArraySpec((2,), "float16")})
    t.write_shard(0, shard_arrays(2), [{"key": "c0", "index": 0}, {"key": "c1", "index": 1}], [])
    e.write_shard(0, {"lat": np.ones((1, 2), "float16")}, [{"key": "c1", "index": 1, "sigma": 0.1}], [{"key": "c0", "index": 0, "reason": "x"}])
    records, arrays, picks = join_shard([t, e], 0)
    assert [r["key"] for r in records] == ["c1"] and records[0]["sigma"] == 0.1
    assert picks == [[1], [0]]
    e.write_shard(1, {"lat": np.ones((1, 2), "float16")}, [{"key": "cX", "index": 2}], [])
    t.write_shard(1, shard_arrays(1), [{"key": "c2", "index": 2}], [])
    with pytest.raises(StoreError, match="snapshot index 2"):
        join_shard([t, e], 1)


def test_column_arrays_commit(tmp_path):
    store = make_store(tmp_path)
    col = store.create_column("encodings", {}, SCHEMA)
    assert col.column_arrays() == {}
    col.write_column_arrays({"empty": np.arange(4, dtype="float16")})
    col.write_column_arrays({"empty": np.arange(4, dtype="float16")})  # a second worker: last commit wins
    assert np.array_equal(col.column_arrays()["empty"], np.arange(4))
    assert col.collect_garbage() == 0  # a fresh column attempt may be another live run's, about to commit
    assert col.collect_garbage(column_grace_s=0) == 1


def test_summary(tmp_path):
    store = make_store(tmp_path)
    col = store.create_column("teacher", {}, SCHEMA)
    col.write_shard(0, shard_arrays(2), [{"key": "c0", "index": 0}, {"key": "c1", "index": 1}], [])
    s = store.summary()
    assert s["clips"] == 5 and s["shards"] == 3 and s["columns"][0]["clips"] == 2
    assert s["columns"][0]["arrays"]["fwd"] == {"shape": [3, 2, 2, 4], "dtype": "float16"}
    assert s["bytes_per_clip"] > 0


def test_snapshot_finds_clips_by_key_or_position(tmp_path):
    snap = make_store(tmp_path).require_snapshot()
    assert snap.find("c3") == 3 and snap.find("@4") == 4
    for bad in ("nope", "@5"):
        with pytest.raises(StoreError, match=f"no clip '{bad}'.*first keys: c0, c1"):
            snap.find(bad)


def test_a_shard_written_row_by_row_is_byte_identical_to_one_written_whole(tmp_path):
    """The worker appends rows as clips finish (capacity = the shard's clips, some failing) and commits
    after; the files must be the ones a whole-shard write gives, and nothing is visible before the commit."""
    from pathlib import Path

    store = make_store(tmp_path, n=4, per_shard=4)
    a = store.create_column("whole", {"k": 1}, SCHEMA)
    b = store.create_column("rows", {"k": 1}, SCHEMA)
    arrays, records = shard_arrays(3), [{"key": f"c{i}", "index": i} for i in (0, 2, 3)]
    a.write_shard(0, arrays, records, [{"key": "c1", "index": 1, "reason": "x"}])
    writer = b.open_shard(0, 4)
    for i in range(3):
        writer.append({k: v[i : i + 1] for k, v in arrays.items()})
    with pytest.raises(StoreError, match="exceed"):
        writer.append(shard_arrays(2))
    assert b.committed_shards() == set()
    writer.commit(records, [{"key": "c1", "index": 1, "reason": "x"}])

    def files(col):
        root = Path(tmp_path / "store" / "columns" / col.dirname / "shards")
        (attempt,) = root.iterdir()
        return {str(p.relative_to(attempt)): p.read_bytes() for p in sorted(attempt.rglob("*")) if p.is_file()}

    assert files(a) == files(b)
