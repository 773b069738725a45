"""A WebDataset corpus: tar shards as video2dataset writes them, one sample per clip.

A sample is the members of one key, grouped as webdataset groups them (`group_by_keys` over
`base_plus_ext`: `000000012.mp4`, `000000012.txt`, `000000012.json` are sample `000000012`):
its video (the member whose suffix is in `corpus.extensions`), its caption from `<key>.txt`, else
the "caption" field of `<key>.json`. Each clip's URL names its member in place
(`tar://000000012.mp4::s3://bucket/shards/00000.tar`, stages/core/tar_members.py): nothing is
extracted; workers decode the member's bytes straight from the tar. The clip's key is the sample
key (video2dataset's keys are unique across shards; a key in two shards is refused, naming both).

Listing walks each tar's headers (tarfile seeks over the data) and reads the small caption
members through one handle per tar: never a video's bytes. A sample without a video is refused
in one line naming the tar and the sample.
"""

from __future__ import annotations

import json
import logging
import re

from stages.config.extract import CorpusConfig
from stages.core.fs import filesystem
from stages.core.tar_members import member_url, tar_index

log = logging.getLogger(__name__)

_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: __key__-style members are not sample files


class TarCorpusError(ValueError):
    """A tar shard that cannot be listed; one line naming the tar (and the sample)."""


def is_shard_pattern(url: str) -> bool:
    """Whether corpus.url names tar shards itself: `x.tar` or a brace pattern `shards-{000..009}.tar`."""
    return url.split("?")[0].lower().endswith(".tar")


def shard_urls(url: str) -> list[str]:
    """The shards a pattern names, in order (webdataset's brace expansion: {000..009}, {a,b})."""
    import braceexpand  # webdataset's own dependency, for its shard URLs

    return list(braceexpand.braceexpand(url))


def list_shards(tar_urls: list[str], cfg: CorpusConfig) -> list[tuple[str, str, str]]:
    """(key, member URL, caption) of every sample of the tars, in tar order. Raises TarCorpusError."""
    extensions = {e.lower().lstrip(".") for e in cfg.extensions}
    out: list[tuple[str, str, str]] = []
    first: dict[str, str] = {}  # key -> the tar it was first seen in
    for tar_url in tar_urls:
        for key, video, caption in _samples(tar_url, cfg, extensions):
            if key in first:
                raise TarCorpusError(f"{tar_url}: sample {key!r} is also in {first[key]} (sample keys must be unique across shards)")
            first[key] = tar_url
            out.append((key, member_url(tar_url, video), caption))
    return out


def _samples(tar_url: str, cfg: CorpusConfig, extensions: set[str]):
    from webdataset.tariterators import base_plus_ext, group_by_keys

    try:
        index = tar_index(tar_url, cfg.storage_options)
    except FileNotFoundError:
        raise TarCorpusError(f"{tar_url}: tar shard not found") from None
    except Exception as e:  # tarfile.ReadError and the like: name the file, not a traceback
        raise TarCorpusError(f"{tar_url}: not a readable (uncompressed) tar: {e}") from None
    files = ({"fname": name, "data": name, "__url__": tar_url} for name in index
             if not _META.match(name) and not (("/" not in name) and name.startswith("__") and name.endswith("__")))
    try:
        samples = list(group_by_keys(files))  # {"__key__", "__url__", suffix: member name}: names only, ~100 B a sample
    except ValueError as e:  # a suffix twice in one sample
        raise TarCorpusError(f"{tar_url}: {e.args[0]}") from None
    fs, path = filesystem(tar_url, cfg.storage_options)
    with fs.open(path, "rb") as f:  # one handle for every caption member: on S3 they sit next to the headers just walked
        for sample in samples:
            key = sample["__key__"]
            suffixes = sorted(k for k in sample if not k.startswith("__"))
            videos = [s for s in suffixes if s.rsplit(".", 1)[-1] in extensions]
            if not videos:
                raise TarCorpusError(f"{tar_url}: sample {key!r} has no video (members: {', '.join(f'{key}.{s}' for s in suffixes)}; "
                                     f"corpus.extensions: {', '.join(sorted(extensions))})")
            if len(videos) > 1:
                raise TarCorpusError(f"{tar_url}: sample {key!r} has {len(videos)} videos ({', '.join(videos)}); one clip per sample")
            yield key, sample[videos[0]], _caption(f, index, sample, tar_url)


def _caption(f, index: dict[str, tuple[int, int]], sample: dict, tar_url: str) -> str:
    """<key>.txt, else the "caption" string of <key>.json, else ""."""
    def read(member: str) -> str:
        offset, size = index[member]
        f.seek(offset)
        return f.read(size).decode("utf-8", errors="replace")

    if "txt" in sample:
        return read(sample["txt"]).strip()
    if "json" in sample:
        try:
            meta = json.loads(read(sample["json"]))
        except json.JSONDecodeError as e:
            raise TarCorpusError(f"{tar_url}: sample {sample['__key__']!r}: {sample['json']} is not valid JSON ({e.msg})") from None
        caption = meta.get("caption") if isinstance(meta, dict) else None
        return caption.strip() if isinstance(caption, str) else ""
    return ""
