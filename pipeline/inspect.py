"""Look inside a store: one clip's teacher features as PCA colours, beside its frames and mask.

Panels per latent frame, left to right: the video frame, the subject mask over it, the forward
features, the backward features (one PCA basis shared by both directions, so colours compare),
and the fused LGF target (PCA of the k*k relation vectors; one fewer frame, the last is blank).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import from_dict
from pipeline.corpus import ClipEntry
from pipeline.decode import decode_clip
from pipeline.extract_config import VideoConfig
from pipeline.store import FeatureStore, StoreError


def find_clip(store: FeatureStore, column_name: str, key: str):
    """(column, shard data, row) of clip `key` in a column, or a StoreError naming what exists."""
    column = store.column(column_name)
    snapshot = store.require_snapshot()
    index = snapshot.find(key)
    shard = index // snapshot.clips_per_shard
    data = column.read_shard(shard)
    rows = [r for r, rec in enumerate(data.records) if rec["index"] == index]
    if not rows:
        reasons = [f["reason"] for f in data.failed if f["index"] == index]
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


def panels(store: FeatureStore, key: str, column_name: str = "teacher") -> np.ndarray:
    """uint8 [T, H, 5W, 3]: one row of panels per latent frame."""
    column, data, row, entry = find_clip(store, column_name, key)
    # read_row checks each array against its commit: a damaged clip is a StoreError naming it, not a picture of the damage
    fwd, bwd = column.read_row(data, "fwd", row).astype(np.float32), column.read_row(data, "bwd", row).astype(np.float32)
    lgf, mask = column.read_row(data, "lgf", row).astype(np.float32), column.read_row(data, "mask", row)
    video = from_dict(VideoConfig, column.producer_config["video"], source=f"{column.dirname}/column.json")
    frames = decode_clip(entry.url, video, store.storage_options).frames
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


def render_pca(store: FeatureStore, key: str, out: Path, column_name: str = "teacher", fps: float = 4.0) -> Path:
    """Write the panels as an mp4 (one latent frame per video frame) or a PNG strip (frames stacked)."""
    rows = panels(store, key, column_name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        from PIL import Image

        Image.fromarray(np.concatenate(list(rows), axis=0)).save(out)
    elif out.suffix.lower() == ".mp4":
        write_mp4(out, rows, fps)
    else:
        raise ValueError(f"--out must end in .mp4 or .png, got {out}")
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """uint8 [N, H, W, 3] -> H.264 mp4 (even sizes padded), via PyAV."""
    import av

    n, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
