"""stages.media.tar_corpus + stages.core.tar_members: a WebDataset corpus (video2dataset's layout, written
here with webdataset's own TarWriter) lists, hashes, decodes and extracts as the same clips as files do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from typer.testing import CliRunner

from conftest import ROOT, small_overrides

from stages.config.extract import CorpusConfig, VideoConfig
from stages.core.fs import filesystem
from stages.media.corpus import CorpusError, content_hash, list_corpus
from stages.media.decode import decode_clip

SAMPLE = ROOT / "configs" / "extract" / "sample.yaml"


def write_shards(clips: Path, out: Path, per_shard: int = 4, drop_video: str | None = None) -> list[Path]:
    """The clips of a folder (<key>.mp4 + <key>.txt) as video2dataset's tars: shard 0 keeps captions as
    <key>.txt, later shards as the "caption" of <key>.json (video2dataset writes both; either may be there)."""
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted(p.stem for p in clips.glob("*.mp4"))
    paths = []
    for n, start in enumerate(range(0, len(keys), per_shard)):
        path = out / f"{n:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i, key in enumerate(keys[start : start + per_shard]):
                caption = (clips / f"{key}.txt").read_text().strip()
                sample = {"__key__": key} if key == drop_video else {"__key__": key, "mp4": (clips / f"{key}.mp4").read_bytes()}
                if n == 0:
                    sample["txt"] = caption
                else:
                    sample["json"] = {"caption": caption, "key": key, "status": "success", "url": f"https://example.com/{key}.mp4"}
                sink.write(sample)
        paths.append(path)
    return paths


@pytest.fixture
def clip_files(tmp_path, small_corpus) -> Path:
    """The small corpus as plain files: <key>.mp4 + <key>.txt, no manifest (so its listing reads the sidecars)."""
    out = tmp_path / "files"
    out.mkdir()
    for p in small_corpus.iterdir():
        if p.suffix in (".mp4", ".txt"):
            shutil.copy(p, out / p.name)
    return out


def test_tar_shards_list_as_the_same_clips_as_files(tmp_path, clip_files):
    shards = write_shards(clip_files, tmp_path / "shards")
    files = list_corpus(CorpusConfig(url=str(clip_files)))
    pattern = str(tmp_path / "shards" / "{00000..00001}.tar")
    for url, fmt in ((pattern, "auto"), (str(tmp_path / "shards"), "auto"), (str(tmp_path / "shards"), "webdataset")):
        tars = list_corpus(CorpusConfig(url=url, format=fmt))
        assert [e.key for e in tars] == [e.key for e in files] and len(tars) == 6
        assert [e.caption for e in tars] == [e.caption for e in files] and all(e.caption for e in tars)
        # the member's bytes are the file's: the same content hash (copies across the two corpora are one clip)
        assert [e.content_hash for e in tars] == [e.content_hash for e in files]
        assert tars[0].url == f"tar://{tars[0].key}.mp4::{shards[0]}"
    one = list_corpus(CorpusConfig(url=str(shards[1])))
    assert [e.key for e in one] == [e.key for e in files][4:]


def test_a_member_decodes_to_the_files_frames(tmp_path, clip_files):
    shards = write_shards(clip_files, tmp_path / "shards")
    key = sorted(p.stem for p in clip_files.glob("*.mp4"))[1]
    video = VideoConfig(num_frames=9, fps=8, height=64, width=96)
    member = f"tar://{key}.mp4::{shards[0]}"
    a, b = decode_clip(member, video), decode_clip(str(clip_files / f"{key}.mp4"), video)
    assert np.array_equal(a.frames, b.frames) and a.record() == b.record()
    fs, path = filesystem(member)
    assert fs.size(path) == (clip_files / f"{key}.mp4").stat().st_size
    assert content_hash(fs, path, fs.size(path)) == content_hash(*filesystem(str(clip_files / f"{key}.mp4")), fs.size(path))
    with pytest.raises(Exception, match="file not found"):
        decode_clip(f"tar://nope.mp4::{shards[0]}", video)


def test_a_sample_without_its_video_is_one_line_naming_tar_and_sample(tmp_path, clip_files):
    key = sorted(p.stem for p in clip_files.glob("*.mp4"))[5]
    shards = write_shards(clip_files, tmp_path / "shards", drop_video=key)
    with pytest.raises(CorpusError, match=rf"^{shards[1]}: sample '{key}' has no video \(members: {key}.json; corpus.extensions: ") as info:
        list_corpus(CorpusConfig(url=str(tmp_path / "shards")))
    assert "\n" not in str(info.value)
    # the same sample key in two shards is refused too, naming both
    shutil.copy(shards[0], tmp_path / "shards" / "00002.tar")
    (tmp_path / "shards" / "00001.tar").unlink()
    with pytest.raises(CorpusError, match=r"00002.tar: sample '.*' is also in .*00000.tar"):
        list_corpus(CorpusConfig(url=str(tmp_path / "shards")))
    (tmp_path / "shards" / "bad.tar").write_bytes(b"not a tar")
    with pytest.raises(CorpusError, match=r"bad.tar: not a readable \(uncompressed\) tar"):
        list_corpus(CorpusConfig(url=str(tmp_path / "shards" / "bad.tar")))


def test_tar_shards_on_s3(tmp_path, clip_files, moto_s3):
    """s3:// shards (moto's real S3 server): listed, captioned and decoded in place through s3fs."""
    options, s3 = moto_s3
    for path in write_shards(clip_files, tmp_path / "shards"):
        s3.put(str(path), f"bucket/shards/{path.name}")
    files = list_corpus(CorpusConfig(url=str(clip_files)))
    tars = list_corpus(CorpusConfig(url="s3://bucket/shards/{00000..00001}.tar", storage_options=options))
    assert [(e.key, e.caption, e.content_hash) for e in tars] == [(e.key, e.caption, e.content_hash) for e in files]
    assert tars[0].url == f"tar://{tars[0].key}.mp4::s3://bucket/shards/00000.tar"
    assert [e.key for e in list_corpus(CorpusConfig(url="s3://bucket/shards", storage_options=options))] == [e.key for e in files]
    video = VideoConfig(num_frames=9, fps=8, height=64, width=96)
    assert np.array_equal(decode_clip(tars[5].url, video, options).frames, decode_clip(files[5].url, video).frames)


def _arrays(store_url: str) -> dict:
    from stages.store import FeatureStore

    store = FeatureStore(store_url)
    out = {}
    for column in store.columns():
        for shard in sorted(column.committed_shards()):
            data = column.read_shard(shard)
            out[(column.name, shard)] = ([r["key"] for r in data.records], {k: np.asarray(v[:]) for k, v in data.arrays.items()})
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_tar_corpus_extracts_the_same_store_as_its_files(tmp_path, clip_files):
    """The must-show: byte-equal columns (teacher and encodings) from the tars and from the files."""
    write_shards(clip_files, tmp_path / "shards")
    runner = CliRunner()
    from pipeline.cli import app

    stores = {}
    for name, url in (("files", str(clip_files)), ("tars", str(tmp_path / "shards" / "{00000..00001}.tar"))):
        stores[name] = str(tmp_path / f"store-{name}")
        result = runner.invoke(app, ["extract", "--config", str(SAMPLE), "--store", stores[name],
                                     *small_overrides(url, **{"ray.num_workers": 0}), "columns=[teacher,encodings]"])
        assert result.exit_code == 0, result.output
    files, tars = _arrays(stores["files"]), _arrays(stores["tars"])
    assert sorted(files) == sorted(tars) and len(files) == 6  # 2 columns x 3 shards
    for k in files:
        assert files[k][0] == tars[k][0]
        assert files[k][1].keys() == tars[k][1].keys()
        for name, arr in files[k][1].items():
            assert arr.dtype == tars[k][1][name].dtype and arr.tobytes() == tars[k][1][name].tobytes(), (k, name)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_bad_shard_added_later_is_one_line_and_loses_nothing(tmp_path, clip_files):
    """A store extracted from a folder of shards; a new shard with a sample lacking its video: the rerun
    (and --append) stops with one line naming the tar and the sample, and every committed file stays."""
    from pipeline.cli import app

    write_shards(clip_files, tmp_path / "shards")
    store = tmp_path / "store"
    args = ["extract", "--config", str(SAMPLE), "--store", str(store),
            *small_overrides(tmp_path / "shards", **{"ray.num_workers": 0}), "columns=[encodings]"]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    before = {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
    with wds.TarWriter(str(tmp_path / "shards" / "00009.tar")) as sink:
        sink.write({"__key__": "zz_new", "txt": "a caption", "json": {"caption": "a caption"}})
    for extra in ([], ["--append"]):
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code != 0 and "Traceback" not in result.output
        lines = [ln for ln in result.output.splitlines() if "00009.tar" in ln]
        assert len(lines) == 1 and "sample 'zz_new' has no video (members: zz_new.json, zz_new.txt" in lines[0], result.output
        after = {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
        assert after == before
    assert json.loads((store / "corpus" / "snapshot.json").read_text())["source"] == str(tmp_path / "shards")
