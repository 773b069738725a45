"""stages.media.manifest + corpus: manifests as users have them (CSV, TSV, Parquet, JSONL), their column
names, time ranges, and bad rows refused in one line naming the file and the row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import ROOT
from test_windows import long_video

from stages.config.extract import CorpusConfig, ExtractConfig
from stages.config.loader import load_config
from stages.media.corpus import CorpusError, list_corpus

SAMPLE = ROOT / "configs" / "extract" / "sample.yaml"


def _csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def long_corpus(tmp_path) -> Path:
    """Two different 20 s sources at 8 fps, 32x48, in videos/ (identical files would be one source: copies)."""
    (tmp_path / "videos").mkdir()
    long_video(tmp_path / "videos" / "talk.mp4", 20)
    long_video(tmp_path / "videos" / "walk.mp4", 20, cuts=(7.0,))
    return tmp_path


def test_csv_with_renamed_columns_and_time_ranges(long_corpus):
    m = _csv(long_corpus / "clips.csv", ["video", "text", "start", "end", "aesthetic"], [
        ["videos/talk.mp4", "a talk, part one", "0", "4.5", "5.1"],
        ["videos/talk.mp4", "a talk, part two", "0:00:10.250", "0:00:14", "4.9"],  # Panda-70M-style timecodes
        ["videos/walk.mp4", "a walk", "2", "19.98", ""],
    ])
    cfg = CorpusConfig(url=str(long_corpus / "videos"), manifest=str(m), columns={"path": "video", "caption": "text"})
    entries = list_corpus(cfg)
    assert [e.key for e in entries] == ["videos/talk@00000.000", "videos/talk@00010.250", "videos/walk@00002.000"]
    assert [(e.start, e.end) for e in entries] == [(0.0, 4.5), (10.25, 14.0), (2.0, 19.98)]
    assert [e.caption for e in entries] == ["a talk, part one", "a talk, part two", "a walk"]
    assert {e.source_id for e in entries} == {"videos/talk", "videos/walk"}
    assert entries[0].url == str(long_corpus / "videos" / "talk.mp4")
    # two ranges of one file are not copies of each other
    assert all(e.duplicate_of is None for e in entries)


def test_tsv_parquet_and_jsonl_give_the_same_clips(long_corpus):
    rows = [["videos/talk.mp4", "one", 1.0, 3.0], ["videos/walk.mp4", "two", 5.0, 9.0]]
    header = ["url", "caption", "start", "end"]  # `url` stands in for `path`
    tsv = _csv(long_corpus / "m.tsv", header, rows, delimiter="\t")
    parquet = long_corpus / "m.parquet"
    pq.write_table(pa.table({h: [r[i] for r in rows] for i, h in enumerate(header)}), parquet)
    jsonl = long_corpus / "m.jsonl"
    jsonl.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))
    got = [[e.to_json() for e in list_corpus(CorpusConfig(url=str(long_corpus), manifest=str(m), content_hash=False))]
           for m in (tsv, parquet, jsonl)]
    assert got[0] == got[1] == got[2]
    assert [r["key"] for r in got[0]] == ["videos/talk@00001.000", "videos/walk@00005.000"]


def test_rows_without_a_range_keep_the_single_clip_row_format(tmp_path):
    """A CSV of whole clips: keys from the paths, rows as a JSONL manifest writes them (no start/end/source_id)."""
    m = _csv(tmp_path / "m.csv", ["path", "caption"], [["a/one.mp4", "first"], ["two.mp4", ""]])
    rows = [e.to_json() for e in list_corpus(CorpusConfig(url=str(tmp_path), manifest=str(m), content_hash=False))]
    assert rows == [{"key": "a/one", "url": str(tmp_path / "a/one.mp4"), "caption": "first", "prompt": None},
                    {"key": "two", "url": str(tmp_path / "two.mp4"), "caption": "", "prompt": None}]


@pytest.mark.parametrize("name, header, rows, columns, message", [
    ("missing.csv", ["video", "caption"], [["a.mp4", "x"]], {},
     r"missing.csv:1 \(header\): no 'path' column \(the video's path or URL\); the file has: video, caption; name it with corpus.columns.path$"),
    ("renamed.csv", ["path", "caption"], [["a.mp4", "x"]], {"path": "clip"},
     r"renamed.csv:1 \(header\): no 'clip' column \(the video's path or URL\); the file has: path, caption$"),
    ("cell.csv", ["path", "caption"], [["a.mp4", "x"], ["", "no path"]], {}, r"cell.csv:3: 'path' must be a non-empty string, got None$"),
    ("short.csv", ["path", "caption"], [["a.mp4", "x"], ["b.mp4"]], {}, r"short.csv:3: 1 cells, the header has 2 columns$"),
    ("time.csv", ["path", "start", "end"], [["a.mp4", "1", "x"]], {}, r"time.csv:2: 'end' must be seconds or H:MM:SS.mmm, got 'x'$"),
    ("order.csv", ["path", "start", "end"], [["a.mp4", "5", "2"]], {}, r"order.csv:2: 'end' \(2 s\) must be after 'start' \(5 s\)$"),
    ("prompt.csv", ["path", "prompt"], [["a.mp4", '{"box": [1, 2'], ], {}, r"prompt.csv:2: bad 'prompt': not valid JSON"),
    ("dup.csv", ["path", "start"], [["a.mp4", "1"], ["a.mp4", "1.0"]], {},
     r"dup.csv:3: duplicate key 'a@00001.000' \(first on line 2\)$"),
])
def test_bad_csv_rows_are_one_line_naming_file_and_row(tmp_path, name, header, rows, columns, message):
    m = _csv(tmp_path / name, header, rows)
    with pytest.raises(CorpusError, match=message) as info:
        list_corpus(CorpusConfig(url=str(tmp_path), manifest=str(m), columns=columns, content_hash=False))
    assert "\n" not in str(info.value)


def test_bad_parquet_and_unknown_formats(tmp_path):
    pq.write_table(pa.table({"video": ["a.mp4"]}), tmp_path / "m.parquet")
    with pytest.raises(CorpusError, match=r"m.parquet \(schema\): no 'path' column .*the file has: video"):
        list_corpus(CorpusConfig(url=str(tmp_path), manifest=str(tmp_path / "m.parquet")))
    pq.write_table(pa.table({"path": ["a.mp4", None]}), tmp_path / "n.parquet")
    with pytest.raises(CorpusError, match=r"n.parquet row 2: 'path' must be a non-empty string, got None"):
        list_corpus(CorpusConfig(url=str(tmp_path), manifest=str(tmp_path / "n.parquet")))
    (tmp_path / "m.xlsx").write_text("")
    with pytest.raises(CorpusError, match=r"unknown format '.xlsx'"):
        list_corpus(CorpusConfig(url=str(tmp_path), manifest=str(tmp_path / "m.xlsx")))
    with pytest.raises(ValueError, match=r"corpus.columns: unknown field\(s\) \['video'\]"):
        CorpusConfig(columns={"video": "path"})


def test_a_range_past_the_video_end_names_file_and_row(long_corpus):
    m = _csv(long_corpus / "ranges.csv", ["path", "start", "end"], [["videos/talk.mp4", "0", "5"], ["videos/walk.mp4", "18", "25"]])
    with pytest.raises(CorpusError, match=r"ranges.csv:3: range 18-25 s ends past the end of .*walk.mp4 \(20.000 s long\)$"):
        list_corpus(CorpusConfig(url=str(long_corpus), manifest=str(m)))
    m = _csv(long_corpus / "starts.csv", ["path", "start"], [["videos/talk.mp4", "21"]])
    with pytest.raises(CorpusError, match=r"starts.csv:2: start 21 s is past the end of .*talk.mp4 \(20.000 s long\)$"):
        list_corpus(CorpusConfig(url=str(long_corpus), manifest=str(m)))


def test_bad_manifest_is_one_cli_line_and_writes_nothing(long_corpus):
    from pipeline.cli import app

    m = _csv(long_corpus / "ranges.csv", ["path", "start", "end"], [["videos/walk.mp4", "18", "25"]])
    store = long_corpus / "store"
    result = CliRunner().invoke(app, ["extract", "--config", str(SAMPLE), "--store", str(store),
                                      f"corpus.url={long_corpus}", f"corpus.manifest={m}", "ray.num_workers=0"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    line = [ln for ln in result.output.splitlines() if "ranges.csv" in ln]
    assert len(line) == 1 and "ranges.csv:2: range 18-25 s ends past the end" in line[0]
    assert not (store / "corpus").exists()  # nothing bound to a listing that failed


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_long_videos_and_a_csv_of_ranges_extract_one_clip_per_range(long_corpus):
    """The must-show: a CSV of time ranges over two 20 s sources; extraction writes one clip per range, each
    record keeping its source and range, its frames sampled from the range's start."""
    from pipeline.runner import run_extract
    from stages.store import FeatureStore
    from stages.store.holdout import clip_groups

    ranges = [["videos/talk.mp4", "a", 0.0, 3.0], ["videos/talk.mp4", "b", 8.5, 11.0], ["videos/talk.mp4", "c", 16.0, 20.0],
              ["videos/walk.mp4", "d", 2.0, 4.0], ["videos/walk.mp4", "e", 12.0, 15.0]]
    m = _csv(long_corpus / "ranges.csv", ["path", "caption", "start", "end"], ranges)
    cfg = load_config(ExtractConfig, SAMPLE, [f"corpus.url={long_corpus}", f"corpus.manifest={m}", "corpus.clips_per_shard=2",
                                              "video.num_frames=9", "video.height=64", "video.width=96", "teacher.image_size=64",
                                              "ray.num_workers=0", "columns=[teacher]"])
    summary = run_extract(cfg, str(long_corpus / "store"))
    assert summary.clips == 5 and not summary.failed_keys and not summary.cropped
    store = FeatureStore(str(long_corpus / "store"))
    column = store.column("teacher")
    records = [r for s in range(store.require_snapshot().num_shards) for r in column.shard_records(s)]
    assert [(r["caption"], r["range"]) for r in records] == [(c, [s, e]) for _, c, s, e in ranges]
    for r, (_, _, start, _) in zip(records, ranges):
        assert r["frame_times"][0] == pytest.approx(start, abs=1e-6) and r["frame_indices"][0] == round(start * 8)
        assert r["source"].endswith(".mp4")
    groups = clip_groups(store.require_snapshot().clips)
    assert len(set(groups.values())) == 2  # two sources, two groups
