"""Look inside a store: what failed and why, what tells its columns apart, and one clip's teacher
features as PCA colours beside its frames and mask.

Panels per latent frame, left to right (labelled above each): the video frame, the subject mask
over it, the forward features, the backward features (one PCA basis shared by both directions,
so colours compare), and the fused LGF target (PCA of the k*k relation vectors; one fewer
frame, the last is blank).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.config.loader import from_dict
from stages.media.corpus import ClipEntry
from stages.media.decode import ClipError, decode_clip
from stages.media.video import write_mp4
from stages.config.extract import VideoConfig
from stages.store import FeatureStore, StoreError
from stages.store.schema import CLIP, ENCODINGS_COLUMN, FAILURE, IMAGE_TEACHER_COLUMN, TEACHER, TEACHER_COLUMN


# what tells two columns of one name apart at a glance, before any key that differs between them
_DESCRIBE = {
    TEACHER_COLUMN: ("teacher.model", "teacher.feature", "teacher.prompt", "lgf.fusion"),
    ENCODINGS_COLUMN: ("encoders.model", "encoders.seed"),
    IMAGE_TEACHER_COLUMN: ("image_teacher.model", "image_teacher.layer", "image_teacher.image_size"),
}
PANEL_LABELS = ("frame", "mask", "forward", "backward", "LGF target")
MAX_PNG_SIDE = 2400  # pixels: a 13-frame strip at 480x720 would otherwise be 6240x3600 (~8 MB)


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe_columns(columns: list) -> dict[str, dict[str, object]]:
    """{column dir: {config key: value}}: its distinguishing settings (feature, prompt, fusion for the
    teacher) plus every producer-config key whose value differs between columns of the same name."""
    leaves = {c.dirname: _leaves(c.producer_config) for c in columns}
    out = {}
    for c in columns:
        keys = [k for k in _DESCRIBE.get(c.name, ()) if k in leaves[c.dirname]]
        twins = [o for o in columns if o.name == c.name and o is not c]
        for o in twins:
            keys += [k for k in sorted(set(leaves[c.dirname]) | set(leaves[o.dirname]))
                     if leaves[c.dirname].get(k) != leaves[o.dirname].get(k) and k not in keys]
        out[c.dirname] = {k: leaves[c.dirname].get(k) for k in keys}
    return out


def store_report(store: FeatureStore) -> dict:
    """store.summary() plus every failed clip (column, key, stage, reason), the duplicate files of the
    snapshot, and each column's distinguishing config ("describe")."""
    summary = store.summary()
    columns = {c.dirname: c for c in store.columns()}
    failures = []
    for col in summary["columns"]:
        for row in columns[col["dir"]].ledger():
            failures.append({"column": col["dir"], "key": row[FAILURE.key], "index": row.get(FAILURE.index),
                             "stage": row.get(FAILURE.stage), "reason": row[FAILURE.reason], "source": row.get(FAILURE.source)})
    described = describe_columns(list(columns.values()))
    for col in summary["columns"]:
        col["describe"] = described[col["dir"]]
    summary["failures"] = failures
    summary["duplicates"] = store.require_snapshot().duplicates()
    return summary


def find_clip(store: FeatureStore, column_name: str, key: str):
    """(column, shard data, row) of clip `key` in a column, or a StoreError naming what exists."""
    column = store.column(column_name)
    snapshot = store.require_snapshot()
    index = snapshot.find(key)
    shard = snapshot.shard_of(index)
    data = column.read_shard(shard)
    rows = [r for r, rec in enumerate(data.records) if rec[CLIP.index] == index]
    if not rows:
        reasons = [f[FAILURE.reason] for f in data.failed if f[FAILURE.index] == index]
        raise StoreError(f"clip '{key}' has no features in {column.dirname}: {reasons[0] if reasons else 'shard not committed'}")
    return column, data, rows[0], ClipEntry.from_json(snapshot.clips[index])


def pca_colours(x: np.ndarray, basis_from: np.ndarray | None = None) -> np.ndarray:
    """[..., C] -> uint8 RGB [..., 3] from the top 3 principal components (of `basis_from` if given)."""
    ref = (basis_from if basis_from is not None else x).reshape(-1, x.shape[-1]).astype(np.float64)
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    comps = vt[:3] if vt.shape[0] >= 3 else np.pad(vt, ((0, 3 - vt.shape[0]), (0, 0)))
    proj = (ref - mean) @ comps.T
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    y = ((x.reshape(-1, x.shape[-1]) - mean) @ comps.T - lo) / np.maximum(hi - lo, 1e-8)
    return (np.clip(y, 0, 1) * 255).astype(np.uint8).reshape(*x.shape[:-1], 3)


def _upsample(img: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    return torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")[0].permute(1, 2, 0).byte().numpy()


def panels(store: FeatureStore, key: str, column_name: str = TEACHER_COLUMN) -> np.ndarray:
    """uint8 [T, H, 5W, 3]: one row of panels per latent frame."""
    column, data, row, entry = find_clip(store, column_name, key)
    if TEACHER.bwd not in column.schema or TEACHER.mask not in column.schema:  # the image teacher: one stack, no mask
        raise StoreError(f"--pca renders a SAM2 teacher column (fwd, bwd, mask, lgf); {column.dirname} holds {', '.join(column.schema)}")
    # read_row checks each array against its commit: a damaged clip is a StoreError naming it, not a picture of the damage
    fwd, bwd = column.read_dequantized(data, TEACHER.fwd, row).astype(np.float32), column.read_dequantized(data, TEACHER.bwd, row).astype(np.float32)
    lgf, mask = column.read_row(data, TEACHER.lgf, row).astype(np.float32), column.read_row(data, TEACHER.mask, row)
    video = from_dict(VideoConfig, column.producer_config["video"], source=f"{column.dirname}/column.json")
    frames = decode_clip(entry.url, video, store.storage_options, start=entry.start, end=entry.end).frames
    vt = column.producer_config["student"]["vae_temporal"]
    frames = frames[[0] + list(range(vt, len(frames), vt))]
    both = np.concatenate([fwd, bwd])
    cf, cb, cl = pca_colours(fwd, both), pca_colours(bwd, both), pca_colours(lgf)
    T, H, W = fwd.shape[0], frames.shape[1], frames.shape[2]
    out = np.zeros((T, H, 5 * W, 3), np.uint8)
    for t in range(T):
        m = _upsample(mask[t][..., None], H, W)[..., 0].astype(np.float32) / 255
        overlay = frames[t] * (0.4 + 0.6 * m[..., None]) + np.array([255, 40, 40]) * 0.4 * m[..., None]
        tiles = [frames[t], overlay.clip(0, 255).astype(np.uint8), _upsample(cf[t], H, W), _upsample(cb[t], H, W)]
        tiles.append(_upsample(cl[t], H, W) if t < len(cl) else np.zeros_like(frames[t]))
        out[t] = np.concatenate(tiles, axis=1)
    return out


def label_rows(rows: np.ndarray) -> np.ndarray:
    """uint8 [T, H, 5W, 3] -> [T, H + bar, 5W, 3]: each panel's name in a dark bar above it."""
    from PIL import Image, ImageDraw

    T, H, W5, _ = rows.shape
    w = W5 // len(PANEL_LABELS)
    bar = max(12, H // 16)
    img = Image.new("RGB", (W5, bar), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(PANEL_LABELS):
        draw.text((i * w + 3, max(0, (bar - 11) // 2)), name, fill=(255, 255, 255))
    header = np.broadcast_to(np.asarray(img), (T, bar, W5, 3))
    return np.concatenate([header, rows], axis=1)


def check_output(out: Path) -> str:
    """The output kind ('png' or 'mp4') of --out, checked before any rendering; ValueError otherwise."""
    kind = Path(out).suffix.lower().lstrip(".")
    if kind not in ("png", "mp4"):
        raise ValueError(f"--out {out}: unsupported output type '.{kind}'; use .mp4 (one latent frame per video frame) or .png (frames stacked)")
    return kind


def render_pca(store: FeatureStore, key: str, out: Path, column_name: str = TEACHER_COLUMN, fps: float = 4.0, max_png_side: int = MAX_PNG_SIDE) -> Path:
    """Write the labelled panels as an mp4 (one latent frame per video frame) or a PNG strip (frames
    stacked, scaled down so its longer side is at most max_png_side). Raises ValueError for another
    output type (before reading anything) and StoreError when the clip's source video cannot be decoded."""
    out = Path(out)
    kind = check_output(out)
    try:
        rows = label_rows(panels(store, key, column_name))
    except ClipError as exc:  # the source clip moved, or the bucket is unreachable: the store holds no frames
        raise StoreError(f"cannot render clip '{key}': its source video {exc.url} cannot be decoded: {exc.reason}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        from PIL import Image

        img = Image.fromarray(np.concatenate(list(rows), axis=0))
        scale = max_png_side / max(img.size)
        if scale < 1:  # area averaging keeps the PCA colours honest when shrinking
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
        img.save(out, optimize=True)
    else:
        write_mp4(out, rows, fps)
    return out



def report_lines(summary: dict, store: str, failures: bool = False) -> list[str]:
    """store_report() as the lines `sam2videox inspect` prints: the store, each column (its
    distinguishing config and arrays), duplicate files, and the failures (listed, or counted)."""
    lines = [f"store {summary['store']}: {summary['clips']} clips, {summary['shards']} shards, {summary['failed']} failed"]
    for col in summary["columns"]:
        described = " ".join(f"{k.split('.', 1)[-1] if k.count('.') == 1 else k}={v}" for k, v in col["describe"].items())
        lines.append(
            f"  {col['dir']}: {col['committed_shards']}/{summary['shards']} shards, {col['clips']} clips, "
            f"{col['failed']} failed, {col['bytes_per_clip'] / 1e6:.2f} MB/clip stored ({col['schema_bytes_per_clip'] / 1e6:.2f} uncompressed)"
            + (f"  [{described}]" if described else "")
        )
        lines += [f"      {name:16s} {spec['dtype']:8s} {tuple(spec['shape'])}" for name, spec in col["arrays"].items()]
    dupes = summary["duplicates"]
    if dupes:
        lines.append(f"  duplicate files: {sum(len(v) for v in dupes.values())} clips are copies of others (corpus.dedupe=true keeps one)")
        lines += [f"      {first} = {', '.join(copies)}" for first, copies in list(dupes.items())[:10]]
    rows = summary["failures"]
    if failures:
        lines += [f"  FAILED {row['column']} {row['key']} [{row['stage']}]: {row['reason']}" for row in rows]
    elif rows:
        lines.append(f"  {len(rows)} failures: list them with `sam2videox inspect {store} --failures`")
    return lines


def verify_lines(report, url: str) -> list[str]:
    """A VerifyReport (stages/store/integrity.py) as `inspect --verify` prints it: one line per damaged
    clip/array (or shard), then the verdict with the shards left unverified."""
    lines = [f"damaged: {damage.line()}" for damage in report.damaged]
    columns = {c for c, _ in report.unverified}
    unverified = f"; {len(report.unverified)} shard(s) unverified (no checksums: written before them) in {', '.join(sorted(columns))}" if columns else ""
    state = f"{len(report.damaged)} damaged" if report.damaged else "clean"
    lines.append(f"verified {report.shards} committed shards ({report.clips} clips) of {url}: {state}{unverified}")
    return lines
