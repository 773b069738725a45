"""Corruption suite: damage a committed store on disk and check that every reader notices.

Each kind of damage (flipped bytes in a chunk, a damaged chunk header, a deleted chunk, chunks
swapped between clips, a truncated commit record, a deleted array zarr.json) must be reported by
`inspect --verify` (exit 1, naming clip and array) and refused by the stream with a StoreError
naming store, column, shard, clip and array, or skipped and counted with data.on_corrupt=skip.
`extract --repair` on a damaged real extraction restores a store byte-equal to the clean one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from stages.store.integrity import verify_store
from stages.store import ArraySpec, FeatureStore, Snapshot, StoreError
from stages.distill.stream import ClipStream, StreamPosition

KEYS = [f"c{i}" for i in range(6)]  # 3 shards of 2


def build(root: Path) -> FeatureStore:
    """Two columns over 6 clips (3 shards of 2) with random (incompressible) values, and column arrays."""
    store = FeatureStore(str(root / "store"))
    store.freeze_snapshot(Snapshot("/x", 2, [{"key": k, "url": f"/x/{k}.mp4", "caption": "", "prompt": None} for k in KEYS]))
    rng = np.random.default_rng(0)
    teacher = store.create_column("teacher", {}, {"lgf": ArraySpec((4, 8), "float16"), "mask": ArraySpec((4,), "uint8")})
    enc = store.create_column("encodings", {}, {"latents": ArraySpec((16,), "float32")})
    enc.write_column_arrays({"empty": rng.standard_normal(8).astype("float32")})
    for shard in range(3):
        recs = [{"key": KEYS[i], "index": i} for i in (2 * shard, 2 * shard + 1)]
        teacher.write_shard(shard, {"lgf": rng.standard_normal((2, 4, 8)).astype("float16"), "mask": np.zeros((2, 4), "uint8")}, recs, [])
        enc.write_shard(shard, {"latents": rng.standard_normal((2, 16)).astype("float32")}, recs, [])
    return store


def attempt_dir(store: FeatureStore, column: str, shard: int) -> Path:
    col = store.column(column)
    return Path(store.path) / "columns" / col.dirname / "shards" / col.commit_record(shard)["attempt"]


def chunk_file(store, shard, row, array="lgf") -> Path:
    base = attempt_dir(store, "teacher", shard) / array / "c" / str(row)
    return base / "0" / "0" if array == "lgf" else base / "0"


def flip_bytes(store):
    path = chunk_file(store, 1, 0)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the (incompressible, so stored raw) values: decodes fine, wrong values
    path.write_bytes(bytes(data))
    return {("c2", "lgf")}, "checksum mismatch"


def damage_header(store):
    path = chunk_file(store, 1, 0)
    data = bytearray(path.read_bytes())
    data[:16] = b"\xff" * 16  # the blosc header: the chunk no longer decodes
    path.write_bytes(bytes(data))
    return {("c2", "lgf")}, "unreadable chunk"


def delete_chunk(store):
    chunk_file(store, 1, 1, "mask").unlink()  # an all-zero chunk: Zarr would read its fill value, unnoticed
    return {("c3", "mask")}, "missing chunk"


def swap_chunks(store):
    a, b = chunk_file(store, 1, 0), chunk_file(store, 2, 1)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return {("c2", "lgf"), ("c5", "lgf")}, "checksum mismatch"


def truncate_commit(store):
    path = Path(store.path) / "columns" / store.column("teacher").dirname / "commits" / "00001.json"
    path.write_bytes(path.read_bytes()[:40])
    return {("c2", None), ("c3", None)}, "not valid JSON"


def delete_array_metadata(store):
    (attempt_dir(store, "teacher", 1) / "lgf" / "zarr.json").unlink()
    return {("c2", "lgf"), ("c3", "lgf")}, "zarr.json"


DAMAGE = [flip_bytes, damage_header, delete_chunk, swap_chunks, truncate_commit, delete_array_metadata]


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return build(tmp_path)


def test_a_clean_store_verifies(store):
    result = CliRunner().invoke(app, ["inspect", store.url, "--verify"])
    assert result.exit_code == 0, result.output
    assert "verified 6 committed shards (12 clips)" in result.output and "clean" in result.output
    report = json.loads(CliRunner().invoke(app, ["inspect", store.url, "--verify", "--json"]).output)
    assert report["ok"] and report["damaged"] == [] and report["unverified"] == []
    stream = make_stream(store)
    assert sorted(keys_of(stream)) == KEYS and stream.skipped == 0


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_inspect_verify_names_each_damaged_clip(store, damage):
    expected, cause = damage(store)
    result = CliRunner().invoke(app, ["inspect", store.url, "--verify"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("damaged:")]
    for key, array in expected:
        assert any(f"clip {key}" in line and (array is None or f"array {array}" in line) and cause in line for line in lines), (key, array, lines)
    report = json.loads(CliRunner().invoke(app, ["inspect", store.url, "--verify", "--json"]).output)
    assert not report["ok"]
    assert {(d["key"], d["array"]) for d in report["damaged"]} == expected
    assert all(d["column"].startswith("teacher-") and cause in d["cause"] for d in report["damaged"])


def make_stream(store, **kw):
    args = {"arrays": {"teacher": ["lgf", "mask"], "encodings": ["latents"]}, "batch_size": 2, "seed": 1, "shuffle_buffer": 2}
    return ClipStream(store, [store.column("teacher"), store.column("encodings")], **{**args, **kw})


def keys_of(stream):
    return [k for b in stream.epoch(StreamPosition()) for k in b["keys"]]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_the_stream_refuses_a_damaged_clip_naming_it(store, damage):
    expected, cause = damage(store)
    with pytest.raises(StoreError) as info:
        keys_of(make_stream(store, batch_size=1))
    message = str(info.value)
    assert store.url in message and "teacher-" in message and "shard 1" in message and cause in message
    assert any(key in message for key, _ in expected)
    assert "\n" not in message


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_on_corrupt_skip_leaves_damaged_clips_out_and_counts_them(store, damage):
    expected, _ = damage(store)
    stream = make_stream(store, batch_size=1, on_corrupt="skip")
    keys = keys_of(stream)
    bad = {key for key, _ in expected}
    assert set(keys) == set(KEYS) - bad
    assert len(keys) == stream.batches_per_epoch()  # the epoch keeps its length: topped up with readable clips again
    assert stream.skipped == len(bad)


def test_damage_in_a_dataloader_worker_is_one_line_and_skips_are_counted_across_workers(store):
    swap_chunks(store)
    with pytest.raises(StoreError) as info:
        keys_of(make_stream(store, batch_size=1, num_workers=2))
    assert "\n" not in str(info.value) and "checksum mismatch" in str(info.value) and "Traceback" not in str(info.value)
    stream = make_stream(store, batch_size=1, num_workers=2, on_corrupt="skip")
    keys = keys_of(stream)
    assert set(keys) == {"c0", "c1", "c3", "c4"} and len(keys) == stream.batches_per_epoch() == 6 and stream.skipped == 2


def test_column_arrays_are_checked(store):
    col = store.column("encodings")
    attempt = json.loads((Path(store.path) / "columns" / col.dirname / "commits" / "column.json").read_text())["attempt"]
    path = Path(store.path) / "columns" / col.dirname / attempt / "empty" / "c" / "0"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="column array 'empty' checksum mismatch"):
        col.column_arrays()
    report = verify_store(store)
    assert [(d.column, d.shard) for d in report.damaged] == [(col.dirname, None)]


def test_stores_without_checksums_read_unverified(store):
    col = store.column("teacher")
    for path in (Path(store.path) / "columns" / col.dirname / "commits").glob("0*.json"):
        record = json.loads(path.read_text())
        for key in ("checksum", "checksums", "chunks"):
            del record[key]
        path.write_text(json.dumps(record))
    result = CliRunner().invoke(app, ["inspect", store.url, "--verify"])
    assert result.exit_code == 0, result.output
    assert "3 shard(s) unverified" in result.output and col.dirname in result.output
    assert sorted(keys_of(make_stream(store, batch_size=1))) == KEYS


@pytest.mark.parametrize("name", ["corpus/snapshot.json", "column.json", "commit"])
def test_malformed_store_files_are_one_line_errors_naming_the_file(store, name):
    col_dir = Path(store.path) / "columns" / store.column("teacher").dirname
    path = {"corpus/snapshot.json": Path(store.path) / "corpus" / "snapshot.json", "column.json": col_dir / "column.json",
            "commit": col_dir / "commits" / "00000.json"}[name]
    path.write_text('{"clips": [')
    result = CliRunner().invoke(app, ["inspect", store.url])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


# -- extract: cheap checks before skipping, --repair on a real extraction -------------------------


def store_files(url: str) -> dict:
    """Every file of a store by path, attempt folder names (random) replaced by their shard, and commit
    records without their attempt name and time: what must be byte-equal between two extractions."""
    import re

    root, out = Path(url), {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = [re.sub(r"^(\d{5}|column)\.[0-9a-f]{12}\.zarr$", r"\1.<attempt>.zarr", part) for part in path.relative_to(root).parts]
        data = path.read_bytes()
        if "commits" in parts:
            data = {k: v for k, v in json.loads(data).items() if k not in ("attempt", "committed")}
        out["/".join(parts)] = data
    return out


@pytest.mark.slow
def test_extract_refuses_to_skip_damage_and_repair_restores_a_clean_store(tmp_path, small_corpus):
    from conftest import ROOT, small_overrides

    runner = CliRunner()
    args = ["extract", "--config", str(ROOT / "configs/extract/sample.yaml"), *small_overrides(small_corpus, **{"ray.num_workers": 0})]
    clean = str(tmp_path / "clean")
    assert runner.invoke(app, [*args, "--store", clean]).exit_code == 0
    url = str(tmp_path / "damaged")
    shutil.copytree(clean, url)
    store = FeatureStore(url)
    teacher, enc = store.column("teacher"), store.column("encodings")
    commits = Path(url) / "columns" / teacher.dirname / "commits"
    (commits / "00000.json").write_bytes((commits / "00000.json").read_bytes()[:50])  # truncated commit record
    fwd = attempt_dir(store, "teacher", 1) / "fwd" / "c"
    first = next(p for p in sorted(fwd.rglob("*")) if p.is_file())
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flipped bytes: only the full check sees them
    first.write_bytes(bytes(data))
    (attempt_dir(store, "encodings", 2) / "latents" / "zarr.json").unlink()  # deleted array metadata
    lost = next(p for p in sorted((attempt_dir(store, "encodings", 1) / "prompt_mask").rglob("*")) if p.is_file() and p.name != "zarr.json")
    lost.unlink()  # deleted chunk

    plain = runner.invoke(app, [*args, "--store", url])
    assert plain.exit_code == 1, plain.output
    assert "damaged" in plain.output and "--repair" in plain.output and "00000.json" in plain.output
    assert "missing chunk" in plain.output and "latents/zarr.json" in plain.output
    verify = runner.invoke(app, ["inspect", url, "--verify", "--json"])
    assert verify.exit_code == 1
    found = {(d["column"].split("-")[0], d["shard"]) for d in json.loads(verify.output)["damaged"]}
    assert found == {("teacher", 0), ("teacher", 1), ("encodings", 1), ("encodings", 2)}
    key = FeatureStore(url).require_snapshot().clips[2]["key"]  # shard 1, row 0: its fwd chunk is damaged
    pca = runner.invoke(app, ["inspect", url, "--pca", "@2", "--out", str(tmp_path / "pca.png")])
    assert pca.exit_code == 2 and f"clip {key}, array fwd" in pca.output and "Traceback" not in pca.output

    repaired = runner.invoke(app, [*args, "--store", url, "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "repaired teacher-" in repaired.output and "repaired encodings-" in repaired.output
    assert runner.invoke(app, ["inspect", url, "--verify"]).exit_code == 0
    assert store_files(url) == store_files(clean)  # byte-equal, damaged attempts collected


@pytest.mark.slow
def test_distill_stops_on_a_damaged_clip_or_skips_and_counts_it(student_store, tmp_path, caplog):
    """The issue's case: one damaged lgf chunk used to train on (step loss -285); now one line, exit 2,
    or with data.on_corrupt=skip the run finishes without the damaged clips and says how many."""
    from conftest import ROOT

    url = str(tmp_path / "store")
    shutil.copytree(student_store, url)
    store = FeatureStore(url)
    a, b = (next(p for p in sorted((attempt_dir(store, "teacher", s) / "lgf").rglob("*")) if p.is_file() and p.name != "zarr.json") for s in (0, 1))
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)  # swapped between two clips: each decodes fine, each is the wrong clip's target
    keys = {store.column("teacher").read_shard(s).records[0]["key"] for s in (0, 1)}
    common = ["distill", "--config", str(ROOT / "configs/distill/sample.yaml"), "--store", url, "data.num_workers=0",
              "train.batch_size=1", "train.checkpoint_every=100"]
    runner = CliRunner()
    failed = runner.invoke(app, [*common, "--out", str(tmp_path / "fail"), "train.steps=6"])
    assert failed.exit_code == 2, failed.output
    line = failed.output.strip().splitlines()[-1]
    assert line.startswith("store error:") and "array lgf: checksum mismatch" in line and any(f"clip {k}," in line for k in keys)
    with caplog.at_level("WARNING"):
        skipped = runner.invoke(app, [*common, "--out", str(tmp_path / "skip"), "train.steps=4", "data.on_corrupt=skip"])
    assert skipped.exit_code == 0, skipped.output
    # of the two swapped clips one is held out (validation leaves it out) and one trains: 4 steps are one
    # epoch of the 4 trainable clips, topped up where the damaged one was left out, so it was read once
    assert "left out 1 damaged clip read(s)" in caplog.text and "validation leaves out damaged held-out clip(s)" in caplog.text
    bad = runner.invoke(app, [*common, "--out", str(tmp_path / "bad"), "data.on_corrupt=sometimes"])
    assert bad.exit_code == 2 and "on_corrupt" in bad.output
