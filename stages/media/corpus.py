"""The corpus ("video bucket"): which clips exist, where they are, their captions and prompts.

A bucket is a local folder or any fsspec URL (file://, s3://, memory://, ...). With a manifest
(JSONL, CSV / TSV or Parquet: stages/media/manifest.py) the manifest is the truth; without one the
bucket is listed recursively for video files, with captions from sidecar <stem>.txt files. A long
source becomes many clips: a manifest row's time range (start / end) is one clip, and
`corpus.windows` cuts sources without a range into windows (stages/media/windows.py); each such
clip is keyed `<source key>@<start>` unless its row names a key, and its row keeps the source
(`source_id`, and the shared url) and the range, so the held-out split keeps a source's windows
together. Either way the
result is sorted by key, so every process that lists the same bucket gets the same order, which is
what the shard plan (stages/store/snapshot.py) is built on. Listing never decodes a video: a bad file is
found, and recorded, by the worker that decodes it. It does read each listed file's first and last
64 KiB (two range reads) for a content hash, so identical files under
two keys are flagged in the snapshot (`duplicate_of`) or, with `corpus.dedupe`, kept once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np
from PIL import Image

from stages.config.extract import CorpusConfig
from stages.core.fs import filesystem, is_local
from stages.media.manifest import ManifestError, read_rows
from stages.media.tar_corpus import TarCorpusError, is_shard_pattern, list_shards, shard_urls
from stages.media.windows import probe, shot_ranges, window_key, window_ranges

log = logging.getLogger(__name__)

PROMPT_KEYS = ("box", "points", "labels", "mask")


class CorpusError(ValueError):
    """The corpus itself is unusable (missing, empty, malformed manifest, duplicate keys)."""


@dataclass(frozen=True)
class ClipEntry:
    """One clip of the corpus."""

    key: str  # unique id, sorted on; '/' allowed (it mirrors the bucket's folders)
    url: str  # local absolute path or full fsspec URL of the video
    caption: str  # text prompt of the student ("" when the corpus has none)
    prompt: dict | None = field(default=None, hash=False)  # manifest prompt: {"box"}, {"points","labels"} or {"mask": url}
    content_hash: str | None = field(default=None, compare=False)  # see content_hash(); None when not hashed or unreadable
    duplicate_of: str | None = field(default=None, compare=False)  # key of the first clip with the same content
    duplicates: tuple[str, ...] = field(default=(), compare=False)  # keys dropped as copies of this one (corpus.dedupe)
    # manifest `source_id`: the source video this clip is a window or crop of; clips of one source are
    # held out together (stages/store/holdout.py groups them, as it groups identical files)
    source_id: str | None = field(default=None, compare=False)
    # the clip's time range in the source, seconds from its first frame (a manifest range or a window);
    # None: the clip starts at the source's start (video.start_sec still applies, from the range's start)
    start: float | None = None
    end: float | None = None

    @property
    def offset(self) -> float:
        """Seconds into the source where this clip's range starts (0 without a range)."""
        return self.start or 0.0

    def to_json(self) -> dict:
        out = {"key": self.key, "url": self.url, "caption": self.caption, "prompt": self.prompt}
        # only when set, so snapshots written before these fields existed keep their ids
        if self.content_hash is not None:
            out["content_hash"] = self.content_hash
        if self.duplicate_of is not None:
            out["duplicate_of"] = self.duplicate_of
        if self.duplicates:
            out["duplicates"] = list(self.duplicates)
        if self.source_id is not None:
            out["source_id"] = self.source_id
        if self.start is not None:
            out["start"] = self.start
        if self.end is not None:
            out["end"] = self.end
        return out

    @classmethod
    def from_json(cls, obj: dict | str) -> ClipEntry:
        d = json.loads(obj) if isinstance(obj, str) else obj
        return cls(
            key=d["key"], url=d["url"], caption=d.get("caption", ""), prompt=d.get("prompt"),
            content_hash=d.get("content_hash"), duplicate_of=d.get("duplicate_of"), duplicates=tuple(d.get("duplicates", ())),
            source_id=d.get("source_id"), start=d.get("start"), end=d.get("end"),
        )


def copy_identity(row: ClipEntry | dict) -> str | None:
    """What two clips share when one is a copy of the other: the file's content hash and, for a clip
    with a time range, that range (windows of one file are different clips, not copies)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    digest = get("content_hash")
    if digest is None or (get("start") is None and get("end") is None):
        return digest
    return f"{digest}@{get('start')}-{get('end')}"


def list_corpus(cfg: CorpusConfig, span: float | None = None) -> list[ClipEntry]:
    """All clips of the bucket, sorted by key, first cfg.limit of them. Raises CorpusError.

    span: seconds of source one clip samples (stages/media/decode.py min_duration): the length of a
    `corpus.windows` window unless corpus.windows.length says otherwise.
    """
    fs, root = filesystem(cfg.url, cfg.storage_options)
    manifest = cfg.manifest
    shards = manifest is None and cfg.format != "files" and is_shard_pattern(cfg.url)
    if manifest is None and not shards and cfg.format != "webdataset" and fs.isfile(f"{root}/manifest.jsonl"):
        manifest = f"{cfg.url.rstrip('/')}/manifest.jsonl"
    if shards:
        entries, where = _from_tars(shard_urls(cfg.url), cfg), cfg.url
    elif manifest is not None:
        entries, where = _from_manifest(manifest, cfg), manifest
    else:
        entries, where = _from_listing(fs, root, cfg), cfg.url
    if cfg.windows.enabled:
        entries = _windowed(entries, cfg, span, where)
    entries.sort(key=lambda e: e.key)
    if not entries:
        raise CorpusError(f"empty corpus: no clips in {where} (extensions: {', '.join(cfg.extensions)})")
    if cfg.limit is not None:
        entries = entries[: cfg.limit]  # before hashing: a smoke run on a huge bucket reads only its clips
    if cfg.content_hash:
        entries = mark_duplicates(entries, cfg)
    log.info("corpus %s: %d clips", where, len(entries))
    return entries


HASH_SPAN = 64 << 10  # bytes hashed at each end of a file: under 1% of what decoding a clip reads


def content_hash(fs: fsspec.AbstractFileSystem, path: str, size: int) -> str:
    """sha256 of the file's size and its first and last 64 KiB (the whole file when <= 128 KiB).

    Cheap on any bucket (two range reads, whatever the file size) and, for video files, as good
    as a full hash at telling copies apart: containers put their index (an mp4's moov lists the
    size of every frame) at one end and encoded frames at both, so two different clips of one
    size agree on both ends essentially never. Edits confined to the middle of a file are not
    seen, and it is no defence against crafted collisions.
    """
    h = hashlib.sha256(f"{size}:".encode())
    if size <= 2 * HASH_SPAN:
        h.update(fs.cat_file(path))
    else:
        h.update(fs.cat_file(path, start=0, end=HASH_SPAN))
        h.update(fs.cat_file(path, start=size - HASH_SPAN, end=size))
    return "sha256-ends:" + h.hexdigest()


HASH_THREADS = 16  # concurrent content-hash reads: I/O-bound (the GIL is released while waiting)


def _hash_or_none(url: str, storage_options: dict) -> str | None:
    try:
        fs, path = filesystem(url, storage_options)
        return content_hash(fs, path, fs.size(path))
    except Exception as exc:  # missing, unreachable, no credentials: the worker that decodes it says why, per clip
        log.debug("corpus: cannot hash %s: %s: %s", url, type(exc).__name__, exc)
        return None


def mark_duplicates(entries: list[ClipEntry], cfg: CorpusConfig, known: dict[str, str] | None = None) -> list[ClipEntry]:
    """Hash every entry; flag copies (duplicate_of the first key) or, with cfg.dedupe, keep one.

    known: {copy_identity: key} of clips listed before (an append): a copy of one of them is
    flagged as its duplicate, or dropped with cfg.dedupe. Windows of one file (different ranges)
    are not copies of each other; the same range of two identical files is.
    """
    import dataclasses

    hashed: list[ClipEntry] = []
    unreadable: list[str] = []
    urls = list(dict.fromkeys(e.url for e in entries))  # windows of one source share its file: hash it once
    # a size and one or two range reads per file: on an object store each is a round trip, so they
    # overlap (100,000 keys one after another would take most of an hour; BENCHMARKS.md)
    remote = any("://" in url for url in urls)  # local files: one after another (page-cache reads, nothing to overlap)
    with ThreadPoolExecutor(HASH_THREADS if remote else 1) as pool:
        by_url = dict(zip(urls, pool.map(lambda url: _hash_or_none(url, cfg.storage_options), urls)))
    for e in entries:
        digest = by_url[e.url]
        if digest is None:
            unreadable.append(e.key)
        hashed.append(dataclasses.replace(e, content_hash=digest))
    if unreadable:
        log.warning("corpus %s: %d file(s) could not be read for their content hash (first: %s)", cfg.url, len(unreadable), unreadable[0])
    first: dict[str, int] = {}  # hash -> position of its first clip
    copies: dict[int, list[str]] = {}
    out: list[ClipEntry] = []
    known = known or {}
    for e in hashed:
        ident = copy_identity(e)
        if ident in known:
            if not cfg.dedupe:
                out.append(dataclasses.replace(e, duplicate_of=known[ident]))
            else:
                log.info("corpus: %s dropped, a copy of %s (corpus.dedupe)", e.key, known[ident])
            continue
        if ident is None or ident not in first:
            if ident is not None:
                first[ident] = len(out)
            out.append(e)
            continue
        kept = out[first[ident]]
        if cfg.dedupe:
            copies.setdefault(first[ident], []).append(e.key)
        else:
            out.append(dataclasses.replace(e, duplicate_of=kept.key))
    for pos, keys in copies.items():
        out[pos] = dataclasses.replace(out[pos], duplicates=tuple(keys))
    dupes = sum(e.duplicate_of is not None for e in out) + sum(len(k) for k in copies.values())
    if dupes:
        log.warning(
            "corpus %s: %d clip(s) are copies of other clips (same content hash)%s",
            cfg.url, dupes, "; kept one of each (corpus.dedupe)" if cfg.dedupe else "; set corpus.dedupe=true to keep one of each",
        )
    return out


def _to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path on fs as something any process can open: absolute local path or protocol URL."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _resolve(fs: fsspec.AbstractFileSystem, base: str, ref: str) -> str:
    """A manifest reference: a URL stays as is; a path is on the manifest's filesystem,
    relative to the manifest's folder unless it starts with '/'."""
    if "://" in ref:
        return ref
    if ref.startswith("/"):
        return _to_url(fs, ref if is_local(fs) else ref.lstrip("/"))
    return _to_url(fs, posixpath.normpath(posixpath.join(base, ref)))


def _from_manifest(url: str, cfg: CorpusConfig) -> list[ClipEntry]:
    fs, path = filesystem(url, cfg.storage_options)
    base = posixpath.dirname(path)
    entries: list[ClipEntry] = []
    seen: dict[str, str] = {}
    ranged: list[tuple[str, ClipEntry]] = []
    try:
        for where, row in read_rows(fs, path, url, cfg.columns):
            entry = _parse_row(row, where, fs, base)
            if entry.key in seen:
                raise CorpusError(f"{where}: duplicate key {entry.key!r} (first on {seen[entry.key]})")
            seen[entry.key] = f"line {where[len(url) + 1:]}" if where.startswith(url + ":") else where[len(url) + 1:]
            entries.append(entry)
            if entry.start is not None or entry.end is not None:
                ranged.append((where, entry))
    except FileNotFoundError as e:
        raise CorpusError(f"manifest not found: {url}") from e
    except ManifestError as e:
        raise CorpusError(str(e)) from e
    _check_ranges(ranged, cfg)
    return entries


def _check_ranges(ranged: list[tuple[str, ClipEntry]], cfg: CorpusConfig) -> None:
    """A range past its video's end is refused here, naming the row: one header read per source.

    A source that cannot be opened is left to the worker that decodes it (it records why, per clip).
    """
    durations: dict[str, float | None] = {}
    for where, e in ranged:
        if e.url not in durations:
            try:
                durations[e.url] = probe(e.url, cfg.storage_options).duration
            except Exception as exc:  # missing or not a video: the decoding worker records it in the ledger
                log.debug("corpus: cannot probe %s: %s: %s", e.url, type(exc).__name__, exc)
                durations[e.url] = None
        duration = durations[e.url]
        if duration is None:
            continue
        if e.end is not None and e.end > duration + RANGE_SLACK_S:
            raise CorpusError(f"{where}: range {e.offset:g}-{e.end:g} s ends past the end of {e.url} ({duration:.3f} s long)")
        if e.offset >= duration:
            raise CorpusError(f"{where}: start {e.offset:g} s is past the end of {e.url} ({duration:.3f} s long)")


RANGE_SLACK_S = 0.05  # container durations and rounded manifest times disagree by a few ms; a frame at 24 fps is 42 ms


def _parse_row(row: object, where: str, fs: fsspec.AbstractFileSystem, base: str) -> ClipEntry:
    """One manifest row (canonical fields) -> ClipEntry; every problem names where (file:line or row) and the bad field."""
    if not isinstance(row, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(row).__name__}")
    ref = row.get("path")
    if not isinstance(ref, str) or not ref.strip():
        raise CorpusError(f"{where}: 'path' must be a non-empty string, got {ref!r}")
    key = row.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise CorpusError(f"{where}: 'key' must be a non-empty string, got {key!r}")
    caption = row.get("caption", "")
    if caption is None:
        caption = ""
    if not isinstance(caption, str):
        raise CorpusError(f"{where}: 'caption' must be a string, got {type(caption).__name__}")
    prompt = row.get("prompt")
    if isinstance(prompt, str):  # a CSV / Parquet cell holds the prompt as JSON text
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where}: bad 'prompt': not valid JSON ({e.msg})") from e
    if prompt is not None:
        try:
            validate_prompt(prompt)
        except ValueError as e:
            raise CorpusError(f"{where}: bad 'prompt': {e}") from e
        if "mask" in prompt:  # the worker does not know the manifest's folder: resolve it here
            prompt = {**prompt, "mask": _resolve(fs, base, prompt["mask"])}
    source_id = row.get("source_id")
    if source_id is not None and (not isinstance(source_id, str) or not source_id.strip()):
        raise CorpusError(f"{where}: 'source_id' must be a non-empty string (the source video's id), got {source_id!r}")
    start, end = _seconds(row.get("start"), "start", where), _seconds(row.get("end"), "end", where)
    if end is not None and end <= (start or 0.0):
        raise CorpusError(f"{where}: 'end' ({end:g} s) must be after 'start' ({start or 0.0:g} s)")
    if start is not None or end is not None:
        stem = _source_stem(ref)
        source_id = source_id or stem
        key = key or window_key(stem, start or 0.0)
    key = key or _source_stem(ref)
    return ClipEntry(key=key, url=_resolve(fs, base, ref), caption=caption, prompt=prompt, source_id=source_id, start=start, end=end)


def _source_stem(ref: str) -> str:
    """A key for a manifest row without one: its path without the extension ('clips/a.mp4' -> 'clips/a';
    a URL loses its scheme: 's3://b/v/a.mp4' -> 'b/v/a')."""
    ref = ref.split("://", 1)[1] if "://" in ref else posixpath.normpath(ref)
    return posixpath.splitext(ref)[0].lstrip("/")


def _seconds(value: object, name: str, where: str) -> float | None:
    """A manifest time: seconds (number or numeric text) or a timecode 'H:MM:SS.mmm' / 'MM:SS'; None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise CorpusError(f"{where}: '{name}' must be seconds or H:MM:SS.mmm, got {value!r}")
    try:
        if isinstance(value, (int, float)):
            t = float(value)
        elif isinstance(value, str):
            parts = value.strip().split(":")
            if len(parts) > 3:
                raise ValueError(value)
            t = 0.0
            for part in parts:
                t = t * 60 + float(part)
        else:
            raise ValueError(value)
    except ValueError:
        raise CorpusError(f"{where}: '{name}' must be seconds or H:MM:SS.mmm, got {value!r}") from None
    if not math.isfinite(t) or t < 0:
        raise CorpusError(f"{where}: '{name}' must be a finite time >= 0 s, got {value!r}")
    return round(t, 6)


def _windowed(entries: list[ClipEntry], cfg: CorpusConfig, span: float | None, where: str) -> list[ClipEntry]:
    """corpus.windows: each entry without a range -> its windows (clips keyed <key>@<start>); ranged entries stay."""
    import dataclasses

    w = cfg.windows
    length = w.length if w.length is not None else span
    if length is None:
        raise CorpusError("corpus.windows needs the window length: set corpus.windows.length (seconds)")
    out: list[ClipEntry] = []
    short: list[str] = []
    unreadable: list[str] = []
    prompts = 0
    for e in entries:
        if e.start is not None or e.end is not None:
            out.append(e)
            continue
        try:
            duration = probe(e.url, cfg.storage_options).duration
            spans = shot_ranges(e.url, w.shot_threshold, cfg.storage_options) if w.shots else [(0.0, duration or 0.0)]
        except Exception as exc:  # unreadable: kept whole, so the decoding worker records why in the ledger
            log.debug("corpus: cannot window %s: %s: %s", e.url, type(exc).__name__, exc)
            unreadable.append(e.key)
            out.append(e)
            continue
        ranges = window_ranges(spans, length, w)
        if not ranges:
            short.append(e.key)
        prompts += bool(e.prompt) and bool(ranges)
        for start, end in ranges:
            # a source's prompt is placed on its first frame: it says nothing about a later window
            out.append(dataclasses.replace(e, key=window_key(e.key, start), prompt=None, source_id=e.source_id or e.key,
                                           start=start, end=end))
    log.info("corpus %s: %d windows of %g s from %d source(s)%s", where, len(out), length, len(entries),
             " (inside shots: PySceneDetect)" if w.shots else "")
    if short:
        log.warning("corpus %s: %d source(s) hold no %g s window%s and give no clip (first: %s)", where, len(short), length,
                    " inside one shot" if w.shots else "", short[0])
    if unreadable:
        log.warning("corpus %s: %d source(s) could not be read to cut windows; each is kept whole, for the ledger (first: %s)",
                    where, len(unreadable), unreadable[0])
    if prompts:
        log.warning("corpus %s: the manifest prompts of %d windowed source(s) are dropped (a prompt is for the source's first "
                    "frame); the teacher falls back to its auto prompt", where, prompts)
    seen: set[str] = set()
    for e in out:
        if e.key in seen:
            raise CorpusError(f"duplicate key {e.key!r} in {where}: a window's key is also a manifest row's")
        seen.add(e.key)
    return out


def validate_prompt(prompt: object) -> None:
    """Raise ValueError unless prompt is a valid manifest prompt (see datasets/README.md)."""
    if not isinstance(prompt, dict):
        raise ValueError(f"expected an object, got {type(prompt).__name__}")
    unknown = sorted(set(prompt) - set(PROMPT_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; expected some of {list(PROMPT_KEYS)}")
    if not any(k in prompt for k in ("box", "points", "mask")):
        raise ValueError("needs one of 'box', 'points', 'mask'")
    if "mask" in prompt:
        if not isinstance(prompt["mask"], str) or not prompt["mask"]:
            raise ValueError("'mask' must be the path or URL of a PNG")
        if len(prompt) > 1:
            raise ValueError("'mask' cannot be combined with 'box' or 'points'")
    if "box" in prompt:
        box = _numbers(prompt["box"], "box")
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"'box' must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {prompt['box']}")
    if "labels" in prompt and "points" not in prompt:
        raise ValueError("'labels' without 'points'")
    if "points" in prompt:
        points = prompt["points"]
        if not isinstance(points, list) or not points:
            raise ValueError("'points' must be a non-empty list of [x, y]")
        for p in points:
            if len(_numbers(p, "points")) != 2:
                raise ValueError(f"each point must be [x, y], got {p}")
        labels = prompt.get("labels")
        if labels is not None and (
            not isinstance(labels, list) or len(labels) != len(points) or any(lab not in (0, 1) or isinstance(lab, bool) for lab in labels)
        ):
            raise ValueError(f"'labels' must be one 0/1 per point, got {labels}")


def _numbers(value: object, name: str) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"'{name}' must hold numbers, got {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"'{name}' must hold finite numbers, got {value!r}")
    return [float(v) for v in value]


def _from_listing(fs: fsspec.AbstractFileSystem, root: str, cfg: CorpusConfig) -> list[ClipEntry]:
    """Video files under root (recursive, hidden files and folders skipped), captions from sidecars."""
    if not fs.isdir(root):
        raise CorpusError(f"corpus not found: {cfg.url} is not a folder (and no manifest was given)")
    extensions = {"." + e.lower().lstrip(".") for e in cfg.extensions}
    files = set(fs.find(root))
    videos: dict[str, str] = {}  # key -> path
    skipped: dict[str, int] = {}  # extension -> files not listed for it (sidecar captions not counted)
    tars: list[str] = []  # WebDataset shards (corpus.format)
    for path in sorted(files):
        rel = path[len(root) :].lstrip("/")
        stem, ext = posixpath.splitext(rel)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if ext.lower() == ".tar":
            tars.append(_to_url(fs, path))
        if ext.lower() not in extensions:
            if ext.lower() != ".txt":
                skipped[ext.lower() or "(none)"] = skipped.get(ext.lower() or "(none)", 0) + 1
            continue
        if stem in videos:
            raise CorpusError(f"duplicate key {stem!r} in {cfg.url}: {videos[stem]} and {path}")
        videos[stem] = path
    if cfg.format == "webdataset" or (cfg.format == "auto" and tars and not videos):
        if not tars:
            raise CorpusError(f"corpus {cfg.url}: no .tar shards (corpus.format=webdataset)")
        return _from_tars(tars, cfg)
    if skipped:
        log.warning("corpus %s: skipped %d file(s) not in corpus.extensions (%s): %s", cfg.url, sum(skipped.values()),
                    ", ".join(cfg.extensions), ", ".join(f"{n} {ext}" for ext, n in sorted(skipped.items())))
    sidecars = [f"{root}/{key}.txt" for key in videos if f"{root}/{key}.txt" in files]
    # one call for all captions: object stores fetch them concurrently
    texts = fs.cat(sidecars) if sidecars else {}
    captions = {p: (b.decode("utf-8", errors="replace").strip() if isinstance(b, bytes) else "") for p, b in texts.items()}
    return [ClipEntry(key, _to_url(fs, path), captions.get(f"{root}/{key}.txt", "")) for key, path in videos.items()]


def _from_tars(tar_urls: list[str], cfg: CorpusConfig) -> list[ClipEntry]:
    """WebDataset shards (stages/media/tar_corpus.py): one clip per sample, its URL the video member in place."""
    try:
        samples = list_shards(tar_urls, cfg)
    except TarCorpusError as e:
        raise CorpusError(str(e)) from e
    log.info("corpus %s: %d samples in %d tar shard(s)", cfg.url, len(samples), len(tar_urls))
    return [ClipEntry(key, url, caption) for key, url, caption in samples]


def load_prompt_mask(url: str, storage_options: dict | None = None) -> np.ndarray:
    """A mask prompt PNG -> bool [H0, W0] (nonzero = subject).

    Palette PNGs (DAVIS-style annotations) use the palette index, so any object id counts;
    images with alpha use colour and alpha both.
    """
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as f:
        data = f.read()
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode == "P":
        return np.asarray(img) > 0
    if img.mode in ("RGBA", "LA", "PA"):
        arr = np.asarray(img.convert("RGBA"))
        return (arr[..., :3].max(axis=-1) > 0) & (arr[..., 3] > 0)
    arr = np.asarray(img.convert("RGB") if img.mode not in ("1", "L", "I", "I;16", "F") else img)
    return (arr.max(axis=-1) if arr.ndim == 3 else arr) > 0
