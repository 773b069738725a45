"""stages.media.corpus: manifest and folder listings (local, memory://, s3://), validation, mask prompts."""

from __future__ import annotations

import io
import json
import runpy
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from stages.media.corpus import ClipEntry, CorpusError, list_corpus, load_prompt_mask, validate_prompt
from stages.config.extract import CorpusConfig

GENERATOR = Path(__file__).resolve().parents[2] / "datasets" / "sample" / "generate.py"


def _touch(root: Path, rel: str, data: bytes = b"\x00") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _manifest(root: Path, rows: list, name: str = "manifest.jsonl") -> Path:
    path = root / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_folder_listing_recursive_sorted_with_sidecar_captions(tmp_path):
    for rel in ["b.mp4", "a/z.webm", "a/y.MOV", "c.mkv", "notes.txt", "d.avi", ".hidden.mp4", ".cache/x.mp4"]:
        _touch(tmp_path, rel)
    _touch(tmp_path, "b.txt", b"  a red ball\n")
    _touch(tmp_path, "a/z.txt", "ünïcode caption".encode())
    entries = list_corpus(CorpusConfig(url=str(tmp_path)))
    assert [e.key for e in entries] == ["a/y", "a/z", "b", "c", "d"]  # .avi is a default extension; no hidden files
    assert [e.caption for e in entries] == ["", "ünïcode caption", "a red ball", "", ""]
    assert entries[0].url == str(tmp_path / "a/y.MOV") and entries[0].prompt is None
    limited = list_corpus(CorpusConfig(url=str(tmp_path), limit=2, extensions=["mp4", "webm", "mov", "mkv"]))
    assert [e.key for e in limited] == ["a/y", "a/z"]  # the limit applies after sorting


def test_a_listing_says_how_many_files_it_skips_by_extension(tmp_path, caplog):
    for rel in ["a.mp4", "b.avi", "c.flv", "d.flv", "e.gif", "a.txt", "README", ".hidden.flv"]:
        _touch(tmp_path, rel)
    with caplog.at_level("WARNING", logger="stages.media.corpus"):
        entries = list_corpus(CorpusConfig(url=str(tmp_path), content_hash=False))
    assert [e.key for e in entries] == ["a", "b"]
    assert [r.getMessage() for r in caplog.records] == [
        f"corpus {tmp_path}: skipped 4 file(s) not in corpus.extensions (mp4, webm, mov, mkv, avi, m4v): 1 (none), 2 .flv, 1 .gif"]


def test_folder_listing_rejects_duplicate_keys_and_empty_or_missing_buckets(tmp_path):
    _touch(tmp_path, "clip.mp4")
    _touch(tmp_path, "clip.webm")
    with pytest.raises(CorpusError, match="duplicate key 'clip'"):
        list_corpus(CorpusConfig(url=str(tmp_path)))
    empty = tmp_path / "empty"
    _touch(empty, "readme.txt")
    with pytest.raises(CorpusError, match=f"empty corpus: no clips in {empty}"):
        list_corpus(CorpusConfig(url=str(empty)))
    with pytest.raises(CorpusError, match="corpus not found: .*nowhere"):
        list_corpus(CorpusConfig(url=str(tmp_path / "nowhere")))


def test_manifest_paths_captions_prompts(tmp_path):
    _touch(tmp_path, "clips/one.mp4")  # a manifest lists whatever it says; files are checked at decode
    rows = [
        {"key": "b", "path": "clips/two.mp4", "caption": "two", "prompt": {"points": [[1, 2]], "labels": [1]}},
        {"key": "a", "path": "clips/one.mp4", "caption": "one", "prompt": {"box": [0, 0, 10, 10]}, "extra": 1},
        "",
        {"key": "c", "path": "s3://bucket/three.mp4", "prompt": {"mask": "masks/c.png"}},
        {"key": "d", "path": "/abs/four.mp4", "caption": None},
    ]
    _manifest(tmp_path, rows)
    _touch(tmp_path, "clips/ignored.mp4")  # with a manifest, the folder is not listed
    entries = list_corpus(CorpusConfig(url=str(tmp_path)))
    assert [e.key for e in entries] == ["a", "b", "c", "d"]
    a, b, c, d = entries
    assert a == ClipEntry("a", str(tmp_path / "clips/one.mp4"), "one", {"box": [0, 0, 10, 10]})
    assert b.prompt == {"points": [[1, 2]], "labels": [1]} and b.caption == "two"
    assert c.url == "s3://bucket/three.mp4" and c.caption == ""
    assert c.prompt == {"mask": str(tmp_path / "masks/c.png")}  # resolved against the manifest folder
    assert d.url == "/abs/four.mp4" and d.caption == ""
    # an explicit manifest elsewhere: paths are relative to the manifest, not to cfg.url
    other = tmp_path / "meta"
    other.mkdir()
    _manifest(other, [{"key": "x", "path": "../clips/one.mp4"}], name="list.jsonl")
    (x,) = list_corpus(CorpusConfig(url=str(tmp_path / "clips"), manifest=str(other / "list.jsonl")))
    assert x.url == str(tmp_path / "clips/one.mp4")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"manifest.jsonl:2: not valid JSON"),
        ("[1, 2]", r"manifest.jsonl:2: expected a JSON object, got list"),
        ('{"key": 3, "path": "a.mp4"}', r"manifest.jsonl:2: 'key' must be a non-empty string, got 3"),
        ('{"path": "a.mp4"}', r"manifest.jsonl:2: duplicate key 'a' \(first on line 1\)"),  # no key: the path's stem
        ('{"key": "k", "path": "a.mp4", "start": 5, "end": 2}', r"manifest.jsonl:2: 'end' \(2 s\) must be after 'start' \(5 s\)"),
        ('{"key": "k", "path": "a.mp4", "start": "soon"}', r"manifest.jsonl:2: 'start' must be seconds or H:MM:SS.mmm, got 'soon'"),
        ('{"key": "k", "path": ""}', r"manifest.jsonl:2: 'path' must be a non-empty string"),
        ('{"key": "k", "path": "a.mp4", "caption": 3}', r"manifest.jsonl:2: 'caption' must be a string"),
        ('{"key": "k", "path": "a.mp4", "prompt": {"bbox": [0, 0, 1, 1]}}', r"manifest.jsonl:2: bad 'prompt': unknown key\(s\) \['bbox'\]"),
        ('{"key": "k", "path": "a.mp4", "prompt": {"box": [5, 0, 1, 1]}}', r"manifest.jsonl:2: bad 'prompt': 'box' must be \[x0, y0, x1, y1\]"),
        ('{"key": "first", "path": "b.mp4"}', r"manifest.jsonl:2: duplicate key 'first' \(first on line 1\)"),
        ('{"key": "k", "path": "a.mp4", "source_id": 7}', r"manifest.jsonl:2: 'source_id' must be a non-empty string"),
    ],
)
def test_manifest_errors_name_file_line_and_key(tmp_path, line, message):
    _manifest(tmp_path, [{"key": "a" if "duplicate key 'a'" in message else "first", "path": "a.mp4"}, line])
    with pytest.raises(CorpusError, match=message):
        list_corpus(CorpusConfig(url=str(tmp_path)))


def test_manifest_source_id_groups_windows_of_one_video_in_the_held_out_split(tmp_path):
    """Two windows of one source video (source_id) are held out together; a row without one is written as before."""
    from stages.store.holdout import clip_groups

    _manifest(tmp_path, [{"key": "w0", "path": "v0.mp4", "source_id": "video-1"}, {"key": "w1", "path": "v1.mp4", "source_id": "video-1"},
                         {"key": "other", "path": "v2.mp4"}])
    entries = list_corpus(CorpusConfig(url=str(tmp_path), content_hash=False))
    rows = [e.to_json() for e in entries]
    assert [r.get("source_id") for r in rows] == [None, "video-1", "video-1"] and "source_id" not in rows[0]
    assert ClipEntry.from_json(rows[1]).source_id == "video-1"
    groups = clip_groups(rows)
    assert groups["w0"] == groups["w1"] != groups["other"]


@pytest.mark.parametrize(
    "prompt, ok",
    [
        ({"box": [0, 0, 1.5, 2]}, True),
        ({"points": [[1, 2], [3, 4]], "labels": [1, 0]}, True),
        ({"box": [0, 0, 4, 4], "points": [[1, 2]]}, True),
        ({"mask": "m.png"}, True),
        ({}, False),
        ({"box": [0, 0, 1]}, False),
        ({"box": [0, 0, float("nan"), 1]}, False),
        ({"points": [[1, 2]], "labels": [2]}, False),
        ({"points": [[1, 2]], "labels": [True]}, False),
        ({"labels": [1]}, False),
        ({"mask": "m.png", "box": [0, 0, 1, 1]}, False),
        ("box", False),
    ],
)
def test_validate_prompt(prompt, ok):
    if ok:
        validate_prompt(prompt)
    else:
        with pytest.raises(ValueError):
            validate_prompt(prompt)


def test_clip_entry_json_round_trip():
    entry = ClipEntry("k/1", "s3://b/k/1.mp4", "a caption", {"points": [[1, 2]], "labels": [1]})
    blob = json.dumps(entry.to_json())
    assert ClipEntry.from_json(json.loads(blob)) == entry
    assert ClipEntry.from_json(blob) == entry
    assert hash(entry) == hash(ClipEntry("k/1", "s3://b/k/1.mp4", "a caption", None))  # hashable despite the dict


def test_memory_bucket_listing_and_manifest():
    fs = fsspec.filesystem("memory")
    fs.pipe({"/corpus-mem/x/a.mp4": b"1", "/corpus-mem/x/a.txt": b"cap a", "/corpus-mem/b.webm": b"2"})
    entries = list_corpus(CorpusConfig(url="memory://corpus-mem"))
    assert [(e.key, e.url, e.caption) for e in entries] == [
        ("b", "memory:///corpus-mem/b.webm", ""),
        ("x/a", "memory:///corpus-mem/x/a.mp4", "cap a"),
    ]
    fs.pipe("/corpus-mem/manifest.jsonl", b'{"key": "m", "path": "x/a.mp4", "caption": "c"}\n')
    (m,) = list_corpus(CorpusConfig(url="memory://corpus-mem/"))
    assert m.url == "memory:///corpus-mem/x/a.mp4"
    assert fs.cat(fsspec.core.url_to_fs(m.url)[1]) == b"1"  # the URL opens the listed object


def _png(mask: np.ndarray, mode: str) -> bytes:
    if mode == "P":
        img = Image.fromarray(mask.astype(np.uint8) * 3, mode="P")  # object id 3
        img.putpalette([0, 0, 0] * 3 + [0, 0, 1])  # a palette colour that is black in luminance
    elif mode == "RGBA":
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[..., 0] = 255  # red everywhere, but transparent outside the subject
        rgba[..., 3] = mask * 255
        img = Image.fromarray(rgba, mode="RGBA")
    else:
        img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["P", "L", "RGBA"])
def test_load_prompt_mask(tmp_path, mode):
    mask = np.zeros((12, 20), bool)
    mask[3:9, 5:15] = True
    (tmp_path / "m.png").write_bytes(_png(mask, mode))
    assert np.array_equal(load_prompt_mask(str(tmp_path / "m.png")), mask)


@pytest.mark.timeout(60)
def test_s3_bucket_through_moto(tmp_path):
    """A real S3 API (moto's server): list the bucket, read a caption, decode a clip from it."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    from stages.media.decode import decode_clip
    from stages.config.extract import VideoConfig

    rows = runpy.run_path(str(GENERATOR))["generate"](tmp_path, clips=1, frames=12, height=32, width=48)
    clip = tmp_path / rows[0]["path"]

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        client = boto3.client("s3", endpoint_url=opts["endpoint_url"], aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket="videos")
        client.put_object(Bucket="videos", Key="corpus/walk/a.mp4", Body=clip.read_bytes())
        client.put_object(Bucket="videos", Key="corpus/walk/a.txt", Body=b"a stick figure")
        client.put_object(Bucket="videos", Key="corpus/b.mkv", Body=b"not really")
        entries = list_corpus(CorpusConfig(url="s3://videos/corpus", storage_options=opts))
        assert [(e.key, e.url, e.caption) for e in entries] == [
            ("b", "s3://videos/corpus/b.mkv", ""),
            ("walk/a", "s3://videos/corpus/walk/a.mp4", "a stick figure"),
        ]
        decoded = decode_clip(entries[1].url, VideoConfig(num_frames=9, fps=8, height=16, width=24), opts)
        assert decoded.frames.shape == (9, 16, 24, 3) and decoded.frame_indices == list(range(9))
    finally:
        server.stop()


def test_identical_files_are_flagged_or_deduplicated_by_content_hash(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()  # > 128 KiB: hashed by its ends
    _touch(tmp_path, "a.mp4", b"clip one")
    _touch(tmp_path, "b.mp4", b"clip two")
    _touch(tmp_path, "copies/a_again.mp4", b"clip one")
    _touch(tmp_path, "z_copy.mp4", b"clip one")
    _touch(tmp_path, "big.mp4", big)
    _touch(tmp_path, "big_copy.mp4", big)
    _touch(tmp_path, "big_edited_end.mp4", big[:-1] + bytes([big[-1] ^ 1]))  # one byte off, in the hashed tail
    entries = {e.key: e for e in list_corpus(CorpusConfig(url=str(tmp_path)))}
    assert entries["a"].content_hash == entries["copies/a_again"].content_hash != entries["b"].content_hash
    assert {k: e.duplicate_of for k, e in entries.items() if e.duplicate_of} == {"copies/a_again": "a", "z_copy": "a", "big_copy": "big"}
    assert entries["big_edited_end"].duplicate_of is None
    assert ClipEntry.from_json(entries["z_copy"].to_json()).duplicate_of == "a"  # kept in the snapshot row
    kept = {e.key: e for e in list_corpus(CorpusConfig(url=str(tmp_path), dedupe=True))}
    assert sorted(kept) == ["a", "b", "big", "big_edited_end"]
    assert kept["a"].duplicates == ("copies/a_again", "z_copy") and kept["big"].duplicates == ("big_copy",)
    assert "content_hash" not in list_corpus(CorpusConfig(url=str(tmp_path), content_hash=False))[0].to_json()
