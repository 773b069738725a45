"""Manifest files as users have them: JSONL, CSV / TSV and Parquet, read into rows of one vocabulary.

Every format yields (where, row) pairs: `where` names the file and the row ("m.csv:3" for text
formats, the file's line number, header included; "m.parquet row 3" for Parquet, 1-based), and
`row` is a dict keyed by the canonical field names (stages/config/extract.py MANIFEST_COLUMNS),
renamed from the file's own column names by `corpus.columns` ({path: video, caption: text}).
A `url` column stands in for `path` when the file has no `path` column (OpenVid-style CSVs and
video2dataset parquets name it either way). Values are as the format gives them: CSV cells are
strings (an empty cell is None), JSON and Parquet keep their types; stages/media/corpus.py
validates them, one field at a time, and names `where` in every error.

A column that must be there and is not (`path`) is refused once, for the whole file, naming
the file, its header row and the columns it has.
"""

from __future__ import annotations

import csv
import json
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec

from stages.config.extract import MANIFEST_COLUMNS


class ManifestError(ValueError):
    """A manifest that cannot be read; the message is one line naming the file (and the row)."""


FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def manifest_format(url: str) -> str:
    ext = posixpath.splitext(url.split("?")[0])[1].lower()
    if ext not in FORMATS:
        raise ManifestError(f"manifest {url}: unknown format {ext or '(no extension)'!r}; expected one of {', '.join(sorted(FORMATS))}")
    return FORMATS[ext]


def read_rows(fs: fsspec.AbstractFileSystem, path: str, url: str, columns: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """(where, row) for every non-blank row of the manifest at path on fs (url: its name in messages).

    row: a dict of canonical fields for CSV and Parquet; for JSONL the parsed JSON value (an object
    renamed to canonical fields; anything else passed on for the caller to refuse with `where`).
    FileNotFoundError when the file is missing.
    """
    fmt = manifest_format(url)
    rename = {v: k for k, v in columns.items()}  # file column -> canonical field
    if fmt == "parquet":
        yield from _parquet(fs, path, url, rename, columns)
        return
    with fs.open(path, "r", encoding="utf-8", newline="") as f:  # read as rows are taken: never the whole file in memory
        if fmt == "jsonl":
            yield from _jsonl(f, url, rename)
        else:
            yield from _csv(f, url, rename, columns, "\t" if fmt == "tsv" else ",")


def _canonical(names: list[str], url: str, where: str, rename: dict[str, str], columns: dict[str, str]) -> dict[str, str]:
    """{file column: canonical field} for a header; ManifestError when no column gives the path."""
    out = {}
    for name in names:
        field = rename.get(name, name if name in MANIFEST_COLUMNS and name not in columns else None)
        if field is not None:
            out[name] = field
    if "path" not in out.values() and "url" in names and "path" not in columns:
        out["url"] = "path"
    if "path" not in out.values():
        wanted = columns.get("path", "path")
        raise ManifestError(f"{where}: no '{wanted}' column (the video's path or URL); the file has: {', '.join(names) or 'none'}"
                            + ("" if "path" in columns else "; name it with corpus.columns.path"))
    return out


def _jsonl(lines: Iterable[str], url: str, rename: dict[str, str]) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{url}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        if isinstance(row, dict):
            if rename:
                row = {rename.get(k, k): v for k, v in row.items() if k not in rename.values() or k in rename}
            if "path" not in row and "url" in row and "path" not in rename.values():
                row["path"] = row.pop("url")
        yield where, row


def _csv(lines: Iterable[str], url: str, rename: dict[str, str], columns: dict[str, str], delimiter: str) -> Iterator[tuple[str, dict]]:
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise ManifestError(f"{url}:1: not a valid {'TSV' if delimiter == chr(9) else 'CSV'} header ({e})") from e
    header = [h.strip() for h in header]
    fields = _canonical(header, url, f"{url}:1 (header)", rename, columns)
    picks = [(i, fields[h]) for i, h in enumerate(header) if h in fields]
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ManifestError(f"{url}:{reader.line_num}: not valid CSV ({e})") from e
        if not any(c.strip() for c in cells):
            continue
        where = f"{url}:{reader.line_num}"
        if len(cells) != len(header):
            raise ManifestError(f"{where}: {len(cells)} cells, the header has {len(header)} columns")
        yield where, {field: (cells[i] if cells[i] != "" else None) for i, field in picks}


def _parquet(fs, path: str, url: str, rename: dict[str, str], columns: dict[str, str]) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow's ArrowInvalid: not a parquet file
            raise ManifestError(f"{url}: not a Parquet file ({e})") from e
        fields = _canonical(pf.schema_arrow.names, url, f"{url} (schema)", rename, columns)
        n = 0
        for batch in pf.iter_batches(columns=list(fields), batch_size=65536):  # bounded memory on a big manifest
            for row in batch.to_pylist():
                n += 1
                yield f"{url} row {n}", {fields[k]: v for k, v in row.items()}
