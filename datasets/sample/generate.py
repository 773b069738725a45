"""Sample corpus: synthetic articulated and deformable subjects over panning textures, as H.264 mp4.

Why it exists: tests, the demo and CI need real video files (a real codec, a real container, a real
resize + crop) whose subject is known, without downloading anything. The subjects are the ones the
method is about: a jointed stick figure walking (limbs attached at joints), a four-legged animal
trotting (legs swinging from the body), and a deforming blob (a radial-sinusoid outline). Each clip
sits on a textured background that pans slowly, so nothing in the frame is static.

Usage:  python datasets/sample/generate.py --out DIR [--clips 16] [--frames 49] [--fps 8]
                                           [--height 144 --width 216] [--seed 0] [--force]
        [--twins TWIN_DIR [--twin-clips 3]]   (structure-broken twins: see generate_twins)
        [--score-folder DIR [--twin-clips 3]] (the twins laid out for `sam2videox score`: see generate_score_folder)
Writes  DIR/<key>.mp4, DIR/<key>.txt (caption), DIR/manifest.jsonl with one line per clip:
        {"key", "path" (relative to DIR), "caption", "prompt": {"box": [x0, y0, x1, y1]}}
where the box is the subject's box on frame 0 in source pixel coordinates (pixel edges: the
subject's pixels are columns x0..x1-1, rows y0..y1-1).

Deterministic: a seeded RNG per clip, numpy/PIL rendering, libx264 with fixed settings and one
thread. Idempotent: a folder that already holds the same corpus is left alone unless --force.
Importable by path (`datasets/` is not a package): `generate(...)`, `render_clip(...)`.
"""


import argparse
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when rendering or encoding changes, so old folders are re-rendered
SS = 2  # supersampling: shapes are drawn at SS x size and box-filtered down, for anti-aliased edges
KINDS = ("stick", "quadruped", "blob")  # clip i gets KINDS[i % 3]: every corpus of >= 3 clips has all
STAMP = ".generate.json"  # parameters of the folder's last generation (hidden: never listed as a clip)
# Fixed encoder settings. One thread and x264's plain-C code path: with its SIMD code the same
# frames encoded to different bytes in about 1 run in 6 (it reads uninitialised row padding).
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "blue": (40, 80, 225),
    "purple": (140, 55, 195),
    "white": (245, 245, 245),
    "cyan": (40, 215, 225),
    "magenta": (230, 50, 170),
    "black": (25, 25, 30),
}


# ---------------------------------------------------------------------------------------------
# Backgrounds: each returns uint8 [h, w, 3]; `textures` maps the caption word to the function.


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1], float32 [h, w]: a coarse random grid, bilinearly upsampled."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32))
    return np.asarray(grid.resize((gw * cell, gh * cell), Image.Resampling.BILINEAR))[:h, :w]


def _tint(base: tuple[int, int, int], shade: np.ndarray) -> np.ndarray:
    """base colour times a per-pixel brightness factor [h, w] -> uint8 [h, w, 3]."""
    return np.clip(np.asarray(base, np.float32) * shade[..., None], 0, 255).astype(np.uint8)


def _grassy(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # vertical blades: noise that varies along x but is stretched 6x along y
    blades = np.repeat(rng.random((h // 6 + 1, w), dtype=np.float32), 6, axis=0)[:h]
    return _tint((70, 140, 55), 0.55 + 0.45 * _value_noise(rng, h, w, 24) + 0.35 * blades)


def _sandy(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    speckle = rng.random((h, w), dtype=np.float32)
    return _tint((200, 175, 130), 0.8 + 0.2 * _value_noise(rng, h, w, 32) + 0.15 * speckle)


def _brick(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bh, bw, mortar = max(h // 10, 6), max(h // 5, 12), max(h // 60, 1)
    y, x = np.mgrid[0:h, 0:w]
    row = y // bh
    xs = x + (row % 2) * (bw // 2)  # every other row is offset by half a brick
    brick_id_shade = 0.75 + 0.35 * rng.random((h // bh + 1, (w + bw) // bw + 1), dtype=np.float32)
    shade = brick_id_shade[row, xs // bw] * (0.9 + 0.1 * rng.random((h, w), dtype=np.float32))
    img = _tint((165, 75, 55), shade)
    img[(y % bh < mortar) | (xs % bw < mortar)] = (195, 190, 180)
    return img


def _water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y = np.arange(h, dtype=np.float32)[:, None]
    waves = 0.5 + 0.5 * np.sin(2 * np.pi * y / max(h / 18, 4) + 6 * _value_noise(rng, h, w, 40))
    return _tint((45, 100, 160), 0.75 + 0.45 * waves)


def _tiled(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tile = max(h // 8, 6)
    y, x = np.mgrid[0:h, 0:w]
    checker = ((y // tile + x // tile) % 2).astype(np.float32)
    return _tint((150, 150, 160), 0.7 + 0.35 * checker + 0.1 * rng.random((h, w), dtype=np.float32))


TEXTURES = {"grassy": _grassy, "sandy": _sandy, "brick": _brick, "water": _water, "tiled": _tiled}


# ---------------------------------------------------------------------------------------------
# Subjects: drawn with a painter that paints the frame and the subject mask with the same shapes.


class _Painter:
    """Draws shapes in frame pixel coordinates on an RGB canvas and an L mask, both at SS x size."""

    def __init__(self, rgb: Image.Image, mask: Image.Image) -> None:
        self.rgb = ImageDraw.Draw(rgb)  # the frame, supersampled
        self.mask = ImageDraw.Draw(mask)  # 255 where the subject is, supersampled

    def limb(self, p: tuple[float, float], q: tuple[float, float], width: float, colour: tuple) -> None:
        """A thick segment with round ends, so limbs stay visibly attached at their joints."""
        pts = [(p[0] * SS, p[1] * SS), (q[0] * SS, q[1] * SS)]
        for draw, fill in ((self.rgb, colour), (self.mask, 255)):
            draw.line(pts, fill=fill, width=max(1, round(width * SS)))
        self.disc(p, width / 2, colour)
        self.disc(q, width / 2, colour)

    def disc(self, c: tuple[float, float], r: float, colour: tuple) -> None:
        box = [(c[0] - r) * SS, (c[1] - r) * SS, (c[0] + r) * SS, (c[1] + r) * SS]
        self.rgb.ellipse(box, fill=colour)
        self.mask.ellipse(box, fill=255)

    def ellipse(self, c: tuple[float, float], rx: float, ry: float, colour: tuple) -> None:
        box = [(c[0] - rx) * SS, (c[1] - ry) * SS, (c[0] + rx) * SS, (c[1] + ry) * SS]
        self.rgb.ellipse(box, fill=colour)
        self.mask.ellipse(box, fill=255)

    def polygon(self, pts: np.ndarray, colour: tuple) -> None:
        flat = [(float(x) * SS, float(y) * SS) for x, y in pts]
        self.rgb.polygon(flat, fill=colour)
        self.mask.polygon(flat, fill=255)


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * factor)) for c in colour)  # type: ignore[return-value]


def _toward(p: tuple[float, float], angle: float, length: float, d: int) -> tuple[float, float]:
    """End of a segment from p at `angle` radians off straight-down, positive toward direction d (+-1)."""
    return (p[0] + d * length * math.sin(angle), p[1] + length * math.cos(angle))


@dataclass(frozen=True)
class _Motion:
    """Where a subject is at time t: x0 + v * t along x, with a fixed baseline y."""

    x0: float  # frame-0 x of the subject's reference point (hip, body centre, blob centre)
    v: float  # px/s, signed: the direction of travel
    y: float  # baseline y (ground line for walkers, centre for the blob)
    gait_hz: float  # gait cycles (or wobble cycles) per second
    phase: float  # gait phase at t = 0, radians
    u: float  # size unit: 1.0 at the default 144 x 216

    @property
    def d(self) -> int:
        return 1 if self.v >= 0 else -1


def _draw_stick(p: _Painter, m: _Motion, t: float, colour: tuple) -> None:
    u, d = m.u, m.d
    phi = 2 * math.pi * m.gait_hz * t + m.phase
    thigh, shin, torso, upper, fore, width = 22 * u, 21 * u, 30 * u, 15 * u, 14 * u, 5 * u
    hip = (m.x0 + m.v * t, m.y - 0.93 * (thigh + shin) + 1.5 * u * math.cos(2 * phi))
    neck = (hip[0] + d * 2 * u, hip[1] - torso)
    far = _shade(colour, 0.6)  # the far-side limbs are darker, as if in shadow

    def leg(psi: float, c: tuple) -> None:
        a = math.radians(28) * math.sin(psi)  # thigh swings about the hip
        knee = _toward(hip, a, thigh, d)
        flex = math.radians(10 + 28 * max(0.0, -math.cos(psi - 0.6)))  # knee bends during swing
        p.limb(hip, knee, width, c)
        p.limb(knee, _toward(knee, a - flex, shin, d), width, c)

    def arm(psi: float, c: tuple) -> None:
        a = -math.radians(24) * math.sin(psi)  # arms swing against their legs
        elbow = _toward(neck, a, upper, d)
        p.limb(neck, elbow, width * 0.85, c)
        p.limb(elbow, _toward(elbow, a + math.radians(25), fore, d), width * 0.85, c)

    leg(phi + math.pi, far)
    arm(phi, far)
    p.limb(hip, neck, width * 1.3, colour)
    p.disc((neck[0] + d * 1 * u, neck[1] - 9 * u), 8 * u, colour)
    leg(phi, colour)
    arm(phi + math.pi, colour)


def _draw_quadruped(p: _Painter, m: _Motion, t: float, colour: tuple) -> None:
    u, d = m.u, m.d
    phi = 2 * math.pi * m.gait_hz * t + m.phase
    upper, lower, width = 13 * u, 13 * u, 5 * u
    body = (m.x0 + m.v * t, m.y - (upper + lower) - 8 * u + 1.0 * u * math.cos(2 * phi))
    far = _shade(colour, 0.6)
    rear, front = (body[0] - d * 19 * u, body[1] + 5 * u), (body[0] + d * 19 * u, body[1] + 5 * u)

    def leg(root: tuple[float, float], psi: float, c: tuple) -> None:
        a = math.radians(30) * math.sin(psi)
        joint = _toward(root, a, upper, d)
        p.limb(root, joint, width, c)
        p.limb(joint, _toward(joint, a + math.radians(15) * max(0.0, math.cos(psi)), lower, d), width, c)

    # trot: diagonal pairs move together (front-far with rear-near, front-near with rear-far)
    leg(front, phi + math.pi, far)
    leg(rear, phi, far)
    tail_root = (body[0] - d * 27 * u, body[1] - 4 * u)
    tail_angle = math.radians(-130 + 20 * math.sin(2 * phi))  # up and back, wagging
    p.limb(tail_root, _toward(tail_root, tail_angle, 16 * u, d), 3 * u, colour)
    p.ellipse(body, 30 * u, 11 * u, colour)
    head = (body[0] + d * 34 * u, body[1] - 16 * u)
    p.limb((body[0] + d * 22 * u, body[1] - 3 * u), head, 8 * u, colour)
    p.disc(head, 8 * u, colour)
    p.limb(head, (head[0] + d * 9 * u, head[1] + 3 * u), 7 * u, colour)  # snout
    leg(front, phi, colour)
    leg(rear, phi + math.pi, colour)


def _blob_outline(m: _Motion, t: float, shape: tuple[float, ...]) -> np.ndarray:
    """Outline [96, 2] of a radial sinusoid r(theta, t) = R (1 + a1 sin(k1 theta + w t) + a2 sin(k2 theta - 1.7 w t))."""
    k1, k2, a1, a2, radius = shape
    w = 2 * math.pi * m.gait_hz
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    r = radius * m.u * (1 + a1 * np.sin(k1 * theta + w * t + m.phase) + a2 * np.sin(k2 * theta - 1.7 * w * t))
    cx, cy = m.x0 + m.v * t, m.y + 4 * m.u * math.sin(0.5 * w * t)
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


# ---------------------------------------------------------------------------------------------
# One clip: its random description, its frames, its encoding.


@dataclass(frozen=True)
class ClipSpec:
    """Everything random about one clip, drawn from its own seeded RNG."""

    index: int
    kind: str  # one of KINDS
    colour: str  # key of COLOURS
    texture: str  # key of TEXTURES
    motion: _Motion
    pan: float  # background pan speed, px/s, signed
    blob_shape: tuple[float, ...]  # (k1, k2, a1, a2, radius) for blobs; () otherwise

    @property
    def key(self) -> str:
        return f"clip_{self.index:03d}_{self.kind}"

    @property
    def caption(self) -> str:
        side = "right" if self.motion.v >= 0 else "left"
        article = "an" if self.colour[0] in "aeiou" else "a"
        subject = {
            "stick": f"{article} {self.colour} stick figure walking to the {side}",
            "quadruped": f"{article} {self.colour} four-legged animal trotting to the {side}",
            "blob": f"{article} {self.colour} blob wobbling as it drifts to the {side}",
        }[self.kind]
        return f"{subject} over a {self.texture} texture"


_CLASHES = {  # subject colours too close to a texture to read clearly on it
    "grassy": {"black"},
    "sandy": {"yellow", "orange", "white"},
    "brick": {"red", "orange", "magenta"},
    "water": {"blue", "cyan", "purple"},
    "tiled": {"white", "black"},
}

def _half_extent(kind: str, u: float, shape: tuple[float, ...]) -> float:
    """Half-width of the subject around its reference point, px, with a margin."""
    if kind == "blob":
        return shape[4] * u * (1 + shape[2] + shape[3]) + 3
    return (26 if kind == "stick" else 50) * u + 3


def clip_spec(index: int, frames: int, fps: float, height: int, width: int, seed: int) -> ClipSpec:
    """Draw clip `index`'s description; the travel is sized so the subject stays inside the frame."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % len(KINDS)]
    texture = str(rng.choice(sorted(TEXTURES)))
    colour = str(rng.choice(sorted(set(COLOURS) - _CLASHES.get(texture, set()))))
    u = min(height / 144, width / 216)
    shape = (
        (int(rng.integers(2, 4)), int(rng.integers(4, 6)), rng.uniform(0.12, 0.22), rng.uniform(0.05, 0.1), rng.uniform(20, 26))
        if kind == "blob"
        else ()
    )
    duration = (frames - 1) / fps
    half = _half_extent(kind, u, shape)
    lo, hi = half, max(width - half, half)
    travel = min(rng.uniform(6, 12) * u * duration, 0.8 * (hi - lo))  # px over the whole clip
    start = lo + rng.random() * (hi - lo - travel)
    direction = 1 if rng.random() < 0.5 else -1
    x0 = start if direction > 0 else width - start
    y = height * rng.uniform(0.45, 0.55) if kind == "blob" else height * rng.uniform(0.84, 0.9)
    motion = _Motion(
        x0=x0,
        v=direction * travel / max(duration, 1e-9),
        y=y,
        gait_hz=rng.uniform(0.6, 0.9),
        phase=rng.uniform(0, 2 * np.pi),
        u=u,
    )
    pan = rng.choice([-1, 1]) * rng.uniform(1.5, 4.0) * u
    return ClipSpec(index, kind, colour, texture, motion, float(pan), tuple(float(s) for s in shape))


_DRAW = {"stick": _draw_stick, "quadruped": _draw_quadruped}


def _render_frames(spec: ClipSpec, frames: int, fps: float, height: int, width: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame uint8 [H, W, 3], subject coverage uint8 [H, W] in 0..255) per frame."""
    duration = (frames - 1) / fps
    pan_px = int(math.ceil(abs(spec.pan) * duration * SS)) + 2  # texture overhang needed for the pan
    rng = np.random.default_rng([seed, spec.index, 1])  # texture noise: its own stream
    tex = TEXTURES[spec.texture](rng, height * SS, width * SS + pan_px)
    colour = COLOURS[spec.colour]
    for i in range(frames):
        t = i / fps
        shift = spec.pan * t * SS
        off = int(round(shift)) if spec.pan >= 0 else pan_px - 1 + int(round(shift))
        off = min(max(off, 0), pan_px - 1)
        rgb = Image.fromarray(np.ascontiguousarray(tex[:, off : off + width * SS]))
        mask = Image.new("L", rgb.size, 0)
        painter = _Painter(rgb, mask)
        if spec.kind == "blob":
            outline = _blob_outline(spec.motion, t, spec.blob_shape)
            painter.polygon(outline, colour)
            centre = outline.mean(axis=0)
            painter.disc((centre[0] - 5 * spec.motion.u, centre[1] - 5 * spec.motion.u), 5 * spec.motion.u, _shade(colour, 1.4 if sum(colour) < 500 else 0.7))
        else:
            _DRAW[spec.kind](painter, spec.motion, t, colour)
        yield np.asarray(rgb.reduce(SS)), np.asarray(mask.reduce(SS))


def _box(coverage: np.ndarray) -> list[int]:
    """Pixel-edge box [x0, y0, x1, y1] of every pixel the subject touches."""
    ys, xs = np.nonzero(coverage)
    if len(xs) == 0:
        raise RuntimeError("subject is not visible on frame 0")  # clip_spec keeps it inside: a bug if hit
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@dataclass
class RenderedClip:
    key: str
    caption: str
    box: list[int]  # subject box on frame 0, pixel edges, source coordinates
    frames: np.ndarray  # uint8 [F, H, W, 3]
    masks: np.ndarray  # bool [F, H, W]: subject coverage >= 50%


def render_clip(index: int, frames: int = 49, fps: float = 8, height: int = 144, width: int = 216, seed: int = 0) -> RenderedClip:
    """Render clip `index` in memory (no encoding): the ground truth the tests compare against."""
    spec = clip_spec(index, frames, fps, height, width, seed)
    pairs = list(_render_frames(spec, frames, fps, height, width, seed))
    rgb = np.stack([f for f, _ in pairs])
    cov = np.stack([c for _, c in pairs])
    return RenderedClip(spec.key, spec.caption, _box(cov[0]), rgb, cov >= 128)


# ---------------------------------------------------------------------------------------------
# Structure-broken twins: ground truth for the structure metrics (stages/evaluate/metrics/structure.py).
# A twin re-renders a clip with the subject drawn on its own layer (identical pixels when intact),
# then breaks that layer from frame BREAK_AT * F on, so frame 0 (the prompt frame) is untouched:
#   detach   the lower part of a walker (its feet and shins) or the leading lobe of a blob comes off
#            and drifts away from the body, leaving a gap: the subject is in two or more pieces;
#   jump     that same part pops to a displaced position (up and ahead) for 2 frames out of every 4;
#   stretch  the whole subject stretches sideways by up to 1.9x and back (feet stay on the ground);
#   vanish   the subject disappears for 3 frames out of every 7.
# Each twin comes with its true per-frame subject masks. The intact twin is the clip itself.

BREAKS = ("detach", "jump", "stretch", "vanish")
BREAK_AT = 1 / 3  # the break starts a third of the way in


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """a [H, W, ...] moved by (dx, dy) pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


def _part(mask: np.ndarray, kind: str, d: int) -> np.ndarray:
    """The breakable part of the subject layer (bool [H, W]): the lowest 30% of a walker's rows (feet
    and shins), or the leading 30% of a blob's columns."""
    ys, xs = np.nonzero(mask)
    part = np.zeros_like(mask)
    if len(ys) == 0:
        return part
    if kind == "blob":
        x0, x1 = xs.min(), xs.max() + 1
        cols = np.arange(mask.shape[1])[None, :]
        part[:] = cols >= x1 - 0.3 * (x1 - x0) if d > 0 else cols < x0 + 0.3 * (x1 - x0)
    else:
        y0, y1 = ys.min(), ys.max() + 1
        part[int(y1 - 0.3 * (y1 - y0)) :] = True
    return part & mask


def _break_layer(rgb: np.ndarray, mask: np.ndarray, broken: str, i: int, i0: int, spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """Apply `broken` to the subject layer of frame i (supersampled rgb [H, W, 3], bool mask [H, W])."""
    if broken == "intact" or i < i0:
        return rgb, mask
    k, u, d = i - i0, spec.motion.u * SS, spec.motion.d
    if broken == "vanish":
        return (rgb, mask) if k % 7 >= 3 else (np.zeros_like(rgb), np.zeros_like(mask))
    if broken in ("detach", "jump"):
        part = _part(mask, spec.kind, d)
        if broken == "detach":  # drifts off over 4 frames, then stays 7u behind / 6u below (or ahead) of the body
            g = min(1.0, (k + 1) / 4)
            dx, dy = (round(g * 10 * u * d), 0) if spec.kind == "blob" else (round(-g * 7 * u * d), round(g * 6 * u))
        else:
            if k % 4 >= 2:
                return rgb, mask
            dx, dy = (0, round(-14 * u)) if spec.kind == "blob" else (round(14 * u * d), round(-10 * u))
        moved = _shift(part, dx, dy)
        rest = mask & ~part
        out_rgb = np.where(moved[..., None], _shift(rgb, dx, dy), np.where(rest[..., None], rgb, 0)).astype(rgb.dtype)
        return out_rgb, rest | moved
    if broken == "stretch":  # horizontal scale about the bottom-centre (walkers) or centre (blob) of the subject
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return rgb, mask
        sx = 1 + 0.9 * math.sin(math.pi * (k + 1) / 12) ** 2  # 12-frame cycle, widest 6 frames in
        cx = (xs.min() + xs.max() + 1) / 2
        w = mask.shape[1]
        src_x = np.clip(np.round(cx + (np.arange(w) - cx) / sx).astype(int), 0, w - 1)  # nearest-neighbour inverse map
        return rgb[:, src_x], mask[:, src_x]
    raise ValueError(f"unknown break {broken!r}; expected 'intact' or one of {BREAKS}")


def _render_twin_frames(spec: ClipSpec, broken: str, frames: int, fps: float, height: int, width: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Like _render_frames, with the subject painted on its own layer and composited (same pixels when
    nothing is broken), so that the layer can be broken first. Yields (frame, coverage 0..255)."""
    duration = (frames - 1) / fps
    pan_px = int(math.ceil(abs(spec.pan) * duration * SS)) + 2
    rng = np.random.default_rng([seed, spec.index, 1])
    tex = TEXTURES[spec.texture](rng, height * SS, width * SS + pan_px)
    colour = COLOURS[spec.colour]
    i0 = max(1, int(round(frames * BREAK_AT)))
    for i in range(frames):
        t = i / fps
        shift = spec.pan * t * SS
        off = int(round(shift)) if spec.pan >= 0 else pan_px - 1 + int(round(shift))
        off = min(max(off, 0), pan_px - 1)
        bg = tex[:, off : off + width * SS]
        layer, mask = Image.new("RGB", (width * SS, height * SS)), Image.new("L", (width * SS, height * SS), 0)
        painter = _Painter(layer, mask)
        if spec.kind == "blob":
            outline = _blob_outline(spec.motion, t, spec.blob_shape)
            painter.polygon(outline, colour)
            centre = outline.mean(axis=0)
            painter.disc((centre[0] - 5 * spec.motion.u, centre[1] - 5 * spec.motion.u), 5 * spec.motion.u, _shade(colour, 1.4 if sum(colour) < 500 else 0.7))
        else:
            _DRAW[spec.kind](painter, spec.motion, t, colour)
        rgb, m = _break_layer(np.asarray(layer), np.asarray(mask) > 0, broken, i, i0, spec)
        frame = np.where(m[..., None], rgb, bg).astype(np.uint8)
        yield np.asarray(Image.fromarray(frame).reduce(SS)), np.asarray(Image.fromarray((m * 255).astype(np.uint8)).reduce(SS))


def render_twin(index: int, broken: str, frames: int = 49, fps: float = 8, height: int = 144, width: int = 216, seed: int = 0) -> RenderedClip:
    """Clip `index` with its subject broken as `broken` ("intact" or one of BREAKS), in memory."""
    if broken != "intact" and broken not in BREAKS:
        raise ValueError(f"unknown break {broken!r}; expected 'intact' or one of {BREAKS}")
    spec = clip_spec(index, frames, fps, height, width, seed)
    pairs = list(_render_twin_frames(spec, broken, frames, fps, height, width, seed))
    cov = np.stack([c for _, c in pairs])
    return RenderedClip(f"{spec.key}__{broken}", spec.caption, _box(cov[0]), np.stack([f for f, _ in pairs]), cov >= 128)


def generate_twins(out_dir: str | os.PathLike, clips: int = 3, breaks: tuple[str, ...] = BREAKS, frames: int = 49,
                   fps: float = 8, height: int = 144, width: int = 216, seed: int = 0) -> list[dict]:
    """Write, for each of the first `clips` clips, its intact twin and one twin per break to out_dir:
    <key>__<break>.mp4, <key>__<break>.txt (the clip's caption), <key>__<break>.npz (masks: bool
    [F, H, W], the true subject masks; load with np.load(..., allow_pickle=False)) and a manifest.jsonl
    (a valid corpus manifest, with extra fields "twin_of", "break", "masks") so the twins can also be
    extracted and tracked by the teacher. Always re-renders (twins are small and not used by the demo)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(clips):
        for broken in ("intact",) + tuple(breaks):
            twin = render_twin(index, broken, frames, fps, height, width, seed)
            _write_mp4(iter(twin.frames), out / f"{twin.key}.mp4", fps, height, width)
            (out / f"{twin.key}.txt").write_text(twin.caption + "\n")
            np.savez_compressed(out / f"{twin.key}.npz", masks=twin.masks)
            rows.append({"key": twin.key, "path": f"{twin.key}.mp4", "caption": twin.caption, "prompt": {"box": twin.box},
                         "twin_of": twin.key.rsplit("__", 1)[0], "break": broken, "masks": f"{twin.key}.npz"})
    _write_atomic(out / "manifest.jsonl", _manifest_text(rows))
    log.info("wrote %d twins of %d clips to %s", len(rows), clips, out)
    return rows


def generate_score_folder(out_dir: str | os.PathLike, clips: int = 3, breaks: tuple[str, ...] = BREAKS, frames: int = 49,
                          fps: float = 8, height: int = 144, width: int = 216, seed: int = 0) -> list[str]:
    """The twins as `sam2videox score --videos out_dir` reads a folder: one method per break plus "intact",
    the same file names in each (the clip keys), true masks as <key>.npz beside each video, captions as
    out_dir/<key>.txt and the real clips (= the intact twins) under real/ for FVD. Returns the methods."""
    out = Path(out_dir)
    methods = ("intact",) + tuple(breaks)
    for index in range(clips):
        for broken in methods:
            twin = render_twin(index, broken, frames, fps, height, width, seed)
            key = twin.key.rsplit("__", 1)[0]
            for method in (broken, "real") if broken == "intact" else (broken,):
                folder = out / method
                folder.mkdir(parents=True, exist_ok=True)
                _write_mp4(iter(twin.frames), folder / f"{key}.mp4", fps, height, width)
                if method != "real":
                    np.savez_compressed(folder / f"{key}.npz", masks=twin.masks)
            (out / f"{key}.txt").write_text(twin.caption + "\n")
    log.info("wrote a score folder of %d clips x %d methods to %s", clips, len(methods), out)
    return list(methods)


def _encode(spec: ClipSpec, path: Path, frames: int, fps: float, height: int, width: int, seed: int) -> list[int]:
    """Render and encode one clip to `path` (via a temp file); return its frame-0 box."""
    box: list[int] = []

    def rgb_frames() -> Iterator[np.ndarray]:
        nonlocal box
        for i, (rgb, cov) in enumerate(_render_frames(spec, frames, fps, height, width, seed)):
            if i == 0:
                box = _box(cov)
            yield rgb

    _write_mp4(rgb_frames(), path, fps, height, width)
    return box


def _write_mp4(frames: Iterator[np.ndarray], path: Path, fps: float, height: int, width: int) -> None:
    """Encode RGB frames (uint8 [H, W, 3]) to `path` with the fixed x264 settings, via a temp file."""
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(X264_OPTIONS)
        stream.codec_context.thread_count = 1
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    os.replace(tmp, path)


def _row(spec: ClipSpec, box: list[int]) -> dict:
    return {"key": spec.key, "path": f"{spec.key}.mp4", "caption": spec.caption, "prompt": {"box": box}}


def _manifest_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def generate(
    out_dir: str | os.PathLike,
    clips: int = 16,
    frames: int = 49,
    fps: float = 8,
    height: int = 144,
    width: int = 216,
    seed: int = 0,
    force: bool = False,
) -> list[dict]:
    """Write the sample corpus to out_dir and return its manifest rows (see the module docstring).

    A folder that already holds the same corpus (same parameters, same manifest, every clip
    present) is left untouched, so re-running the demo costs a few milliseconds.
    """
    if clips < 1 or frames < 1 or fps <= 0:
        raise ValueError("clips and frames must be >= 1 and fps > 0")
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for yuv420p, got {height}x{width}")
    out = Path(out_dir)
    specs = [clip_spec(i, frames, fps, height, width, seed) for i in range(clips)]
    stamp = {"version": GENERATOR_VERSION, "clips": clips, "frames": frames, "fps": fps, "height": height, "width": width, "seed": seed}
    if not force and _up_to_date(out, specs, stamp):
        log.info("sample corpus in %s is up to date (%d clips)", out, clips)
        return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in specs:
        box = _encode(spec, out / f"{spec.key}.mp4", frames, fps, height, width, seed)
        (out / f"{spec.key}.txt").write_text(spec.caption + "\n")
        rows.append(_row(spec, box))
    # manifest and stamp last: a crash mid-way leaves a folder that the next run regenerates
    _write_atomic(out / "manifest.jsonl", _manifest_text(rows))
    _write_atomic(out / STAMP, json.dumps(stamp, sort_keys=True))
    log.info("wrote %d sample clips to %s", clips, out)
    return rows


def _up_to_date(out: Path, specs: list[ClipSpec], stamp: dict) -> bool:
    manifest, stamp_path = out / "manifest.jsonl", out / STAMP
    if not (manifest.is_file() and stamp_path.is_file()):
        return False
    try:
        if json.loads(stamp_path.read_text()) != stamp:
            return False
    except json.JSONDecodeError:
        return False
    if any(not (out / f"{s.key}.mp4").is_file() or (out / f"{s.key}.mp4").stat().st_size == 0 for s in specs):
        return False
    # the expected manifest needs only frame 0 of each clip (for its box): cheap to recompute
    rows = [_row(s, _first_box(s, stamp)) for s in specs]
    return manifest.read_text() == _manifest_text(rows)


def _first_box(spec: ClipSpec, stamp: dict) -> list[int]:
    """The frame-0 box, rendering only frame 0 (the frame generator is lazy)."""
    frames = _render_frames(spec, stamp["frames"], stamp["fps"], stamp["height"], stamp["width"], stamp["seed"])
    return _box(next(frames)[1])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--fps", type=float, default=8)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--width", type=int, default=216)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="re-render even if the folder is up to date")
    parser.add_argument("--twins", default=None, metavar="DIR", help="also write structure-broken twins of the first --twin-clips clips to DIR")
    parser.add_argument("--twin-clips", type=int, default=3)
    parser.add_argument("--score-folder", default=None, metavar="DIR", help="write the twins laid out for `sam2videox score` to DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.out, args.clips, args.frames, args.fps, args.height, args.width, args.seed, args.force)
    if args.score_folder:
        generate_score_folder(args.score_folder, min(args.twin_clips, args.clips), BREAKS, args.frames, args.fps, args.height,
                              args.width, args.seed)
    if args.twins:
        generate_twins(args.twins, min(args.twin_clips, args.clips), BREAKS, args.frames, args.fps, args.height, args.width, args.seed)


if __name__ == "__main__":
    main()
