"""Growing buckets: a rerun says how many clips are new; `extract --append` adds them as new shards,
leaving every committed shard byte-identical, and the stream reads old and new alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.store import FeatureStore, Snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = ROOT / "configs/extract/sample.yaml"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_snapshot_append_starts_new_shards_and_keeps_its_id():
    rows = [{"key": f"c{i}"} for i in range(5)]
    snap = Snapshot("bucket", 2, rows[:3])
    grown = snap.append(rows[3:])
    assert [list(snap.shard_range(s)) for s in range(snap.num_shards)] == [[0, 1], [2]]
    # the partial last shard [2] keeps its single clip: the new clips start shard 2
    assert [list(grown.shard_range(s)) for s in range(grown.num_shards)] == [[0, 1], [2], [3, 4]]
    assert [grown.shard_of(i) for i in range(5)] == [0, 0, 1, 2, 2]
    assert grown.id == snap.id and Snapshot.from_json(grown.to_json()).shard_range(2) == range(3, 5)
    assert "appended" not in snap.to_json()  # a never-appended snapshot is written as before


def test_rerun_reports_new_clips_and_append_extends_the_store(tmp_path, small_corpus, sample_generator, ray_session):
    from stages.distill.stream import ClipStream, StreamPosition

    corpus = tmp_path / "clips"
    shutil.copytree(small_corpus, corpus)
    (corpus / "manifest.jsonl").unlink()  # list the folder: new files show up by themselves
    store = tmp_path / "store"
    runner = CliRunner()
    args = ["extract", "--config", str(SAMPLE), "--store", str(store), *small_overrides(corpus, **{"corpus.clips_per_shard": 4})]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = _files(store / "columns")
    # the bucket grows: two new clips and a copy of an old one
    extra = tmp_path / "extra"
    sample_generator.generate(extra, clips=2, frames=17, fps=8, seed=11)
    for i, clip in enumerate(sorted(extra.glob("*.mp4"))):
        shutil.copy(clip, corpus / f"zz_new{i}.mp4")
    shutil.copy(sorted(corpus.glob("*.mp4"))[0], corpus / "zz_copy.mp4")
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert "3 new clips in" in rerun.output and "--append" in rerun.output
    assert _files(store / "columns") == before  # nothing added without --append
    grown = runner.invoke(app, [*args, "--append"])
    assert grown.exit_code == 0, grown.output
    assert "appended 3 new clips" in grown.output and "as shards 2..2" in grown.output
    after = _files(store / "columns")
    assert {k: v for k, v in after.items() if k in before} == before  # every old file byte-identical
    fstore = FeatureStore(str(store))
    snap = fstore.require_snapshot()
    assert [c["key"] for c in snap.shard_clips(2)] == ["zz_copy", "zz_new0", "zz_new1"]
    assert snap.duplicates() == {snap.clips[0]["key"]: ["zz_copy"]}
    for col in fstore.columns():
        assert col.committed_shards() == {0, 1, 2} and col.commit_record(2)["clips"] == ["zz_copy", "zz_new0", "zz_new1"]
    stream = ClipStream(fstore, [fstore.column("teacher"), fstore.column("encodings")], {"encodings": ["latents"]}, batch_size=1)
    keys = [k for b in stream.epoch(StreamPosition()) for k in b["keys"]]
    assert sorted(keys) == sorted(c["key"] for c in snap.clips) and len(keys) == 9
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "new clips" not in again.output
    info = runner.invoke(app, ["inspect", str(store)])
    assert "duplicate" in info.output and "zz_copy" in info.output
