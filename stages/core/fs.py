"""fsspec helpers: one way to address local folders and object stores (file://, s3://, ...)."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from stages.core.tar_members import TarMembers, split_member_url


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path or an fsspec URL.

    A tar member URL (`tar://<member>::<tar URL>`, stages/core/tar_members.py) gives the tar's
    members as a filesystem and the member's name; storage_options go to the tar's own filesystem.
    """
    member = split_member_url(url)
    if member is not None:
        return TarMembers(member[0], storage_options), member[1]
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/") or "/"


def join(url: str, *parts: str) -> str:
    """Join URL/path segments with '/', whatever the backend."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "r") as f:
        return json.load(f)


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a part.

    Local: write a temp file beside it, fsync, rename. Object stores: a single PUT is atomic.
    """
    blob = json_blob(obj)
    make_parent(fs, path)
    if is_local(fs):
        os.replace(write_temp_beside(path, blob), path)
    else:
        fs.pipe_file(path, blob.encode())


def make_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """The folder of `path` on local disk. Object stores have no folders, and s3fs's makedirs would
    create the bucket itself: a typo in a store URL must never make a new bucket."""
    if is_local(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)


def missing_bucket(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The bucket of an object-store `path` when it does not exist (None: it does, or `fs` is local)."""
    if is_local(fs):
        return None
    bucket = path.strip("/").split("/", 1)[0]
    try:  # not fs.exists: it answers False for missing credentials too, which must say so instead
        fs.info(bucket)
    except FileNotFoundError:
        return bucket
    return None


def json_blob(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)


def write_temp_beside(path: str, blob: str) -> str:
    """Local disk: `blob` in a uniquely named, fsynced temp file next to `path`; returns its name
    (the caller renames or links it into place, so readers never see a partial file)."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def missing_credentials(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is botocore's "no credentials" (s3fs may wrap it)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if type(seen).__name__ in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def credentials_hint(urls: str) -> str:
    """The one-line error for an object store reached without credentials."""
    return (
        f"no credentials for {urls}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass them as "
        f'storage options ({{"key": ..., "secret": ...}}; {{"anon": true}} for a public bucket)'
    )
