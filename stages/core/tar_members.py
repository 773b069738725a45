"""Files inside an uncompressed tar (a WebDataset shard), read in place: no extraction, no copy.

A member is named by fsspec's chained-URL form, `tar://<member>::<tar URL>` (e.g.
`tar://000000012.mp4::s3://bucket/shards/00000.tar`), so the same URL opens with plain
`fsspec.open` too. Here it opens through `stages.core.fs.filesystem`, which hands such a URL to
`TarMembers`: the tar's headers are walked once per process (tarfile seeks over each member's
data; on an object store that is a read of the tar in the filesystem's block size, not a
download of it) and kept as {member: (data offset, size)}. Opening a member opens the tar afresh
and gives a bounded, seekable view of its bytes, so threads that decode members of one shard at
once never share a file position (fsspec's own TarFileSystem shares one handle).
Compressed tars (.tar.gz) cannot be read in place and are not supported here.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile

import fsspec
from fsspec.spec import AbstractFileSystem

PREFIX = "tar://"


def member_url(tar_url: str, member: str) -> str:
    """The URL of `member` inside the tar at `tar_url` (a local path or an fsspec URL)."""
    return f"{PREFIX}{member}::{tar_url}"


def split_member_url(url: str) -> tuple[str, str] | None:
    """(tar URL, member) of a member URL; None for any other URL."""
    if not url.startswith(PREFIX) or "::" not in url:
        return None
    member, tar_url = url[len(PREFIX):].split("::", 1)
    return tar_url, member


def _outer(tar_url: str, options: dict) -> tuple[AbstractFileSystem, str]:
    """The tar's own filesystem (stages.core.fs.filesystem, which hands member URLs here: a tar in a tar is not supported)."""
    return fsspec.core.url_to_fs(tar_url, **options)


def tar_index(tar_url: str, storage_options: dict | None = None) -> dict[str, tuple[int, int]]:
    """{member name: (offset of its data, size)} of the regular files in the tar, in tar order.

    Cached per process (a worker decodes many members of one shard). tarfile.ReadError for a
    file that is not a tar; FileNotFoundError for a missing one.
    """
    return _index(tar_url, json.dumps(storage_options or {}, sort_keys=True))


@functools.lru_cache(maxsize=16)  # a few shards at a time; ~100 B a member
def _index(tar_url: str, options: str) -> dict[str, tuple[int, int]]:
    fs, path = _outer(tar_url, json.loads(options))
    out: dict[str, tuple[int, int]] = {}
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for ti in tar:
            if ti.isfile():
                out[ti.name] = (ti.offset_data, ti.size)
        tar.members = []  # TarInfo objects are ~1 KB each: keep only the index
    return out


class _MemberView(io.RawIOBase):
    """Bytes [offset, offset + size) of an open file, as a file of its own (seekable, read-only)."""

    def __init__(self, f, offset: int, size: int) -> None:
        self._f, self._offset, self.size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self.size - self._pos))
        if not n:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class TarMembers(AbstractFileSystem):
    """The regular files of one tar as a read-only fsspec filesystem (paths: member names)."""

    protocol = "tar"
    cachable = False  # cheap to make (the index is cached), and never shared across tars

    def __init__(self, tar_url: str, storage_options: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        # not `storage_options`: fsspec sets that attribute itself, after __init__, to the constructor kwargs
        self.tar_url, self.tar_options = tar_url, storage_options or {}

    @property
    def index(self) -> dict[str, tuple[int, int]]:
        return tar_index(self.tar_url, self.tar_options)  # lazily: a missing tar is FileNotFoundError at info / open

    def info(self, path: str, **kwargs) -> dict:
        try:
            _, size = self.index[path]
        except KeyError:
            raise FileNotFoundError(member_url(self.tar_url, path)) from None
        return {"name": path, "size": size, "type": "file"}

    def ls(self, path: str = "", detail: bool = True, **kwargs):
        infos = [{"name": name, "size": size, "type": "file"} for name, (_, size) in self.index.items()]
        return infos if detail else [i["name"] for i in infos]

    def _open(self, path: str, mode: str = "rb", **kwargs):
        if mode != "rb":
            raise ValueError(f"{self.tar_url}: tar members are read-only")
        info = self.info(path)
        offset, _ = self.index[path]
        fs, tar_path = _outer(self.tar_url, self.tar_options)
        return io.BufferedReader(_MemberView(fs.open(tar_path, "rb"), offset, info["size"]), buffer_size=1 << 16)

    def unstrip_protocol(self, name: str) -> str:
        return member_url(self.tar_url, name)
