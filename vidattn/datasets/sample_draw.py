"""Drawing, encoding and hashing shared by the plain and the referring sample.

Both generators (:mod:`vidattn.datasets.sample`, :mod:`vidattn.datasets.sample_ref`) draw
stick-figure actors over textured backgrounds with these primitives and encode clips with
:func:`_write_mp4`; :func:`config_hash` names a generated copy by both generators' versions
and the config, so either generator changing regenerates its cached copies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa

# Bump whenever drawing or encoding changes so cached copies are regenerated.
GENERATOR_VERSION = 2
REF_GENERATOR_VERSION = 1  # the referring generator's (vidattn.datasets.sample_ref)
RULE = "sample:same-context-idle"
CONTEXTS_SCHEMA = pa.schema([("video_id", pa.string()), ("context", pa.int32())])
_OUR_FILES = {"videos", "manifest.parquet", "pairs.parquet", "boxes.parquet",
              "contexts.parquet", "classes.txt", "config.json", "COMPLETE"}
MOTIONS = ("wave", "walk", "jump", "clap")
SWAY = 0.25  # idle sway amplitude in pixels (0.5 px peak to peak)
LIMB = 0.08  # limb radius as a fraction of the actor height
ACTOR_HEIGHT = 0.5  # standing height as a fraction of the frame
# Backgrounds are drawn at half contrast around their mean colour.  At full contrast the
# textures dominate I3D's Mixed_5c response so completely that no head can see the actor's
# motion (a ridge probe on box-pooled features scored 0% on the shifted test split); at half
# contrast the motion is learnable once context stops predicting the label.
CONTEXT_CONTRAST = 0.5

# Context colours (RGB): style k % 4 with these colours for the first four contexts.
_CONTEXT_COLOURS = [
    [(205, 175, 95), (115, 75, 40)],  # stripes: gold / brown
    [(70, 120, 190), (175, 205, 235)],  # checkerboard: blue / pale blue
    [(60, 140, 70), (160, 200, 95), (30, 85, 60)],  # blobs: greens
    [(170, 80, 60), (215, 205, 190)],  # bricks: brick / mortar
]
# Actor colours, saturated so the figure stands out on every background.
_ACTOR_COLOURS = [(245, 245, 245), (25, 25, 25), (225, 40, 205), (40, 225, 235),
                  (250, 230, 40), (120, 40, 210)]


@dataclass(frozen=True)
class SampleConfig:
    """Size and make-up of the sample dataset (see the module docstring)."""

    classes: tuple[str, ...] = MOTIONS
    n_train_per_class: int = 10
    n_test_per_class: int = 6
    n_frames: int = 40
    fps: float = 25.0
    size: int = 128  # square frames, size x size
    train_context_corr: float = 0.5  # P(a train clip of class k uses context k)
    seed: int = 0
    # The referring variant (vidattn.datasets.sample_ref): several actors per clip, one
    # manifest row per actor with a sentence naming it.  The fields below only count when
    # referring is True; they are left out of the hash otherwise (see _config_record).
    referring: bool = False
    actors: int = 3  # most actors per clip (2 .. 3, one per lane)
    n_train_clips: int = 192  # ~480 rows: RefAtomNet memorises the 123 of 48 clips
    n_test_clips: int = 48

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in MOTIONS]
        if unknown or len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"SampleConfig: classes must be >= 2 distinct of {MOTIONS}")
        if min(self.n_train_per_class, self.n_test_per_class) < 1 or self.n_frames < 2:
            raise ValueError("SampleConfig: need >= 1 clip per class and split, >= 2 frames")
        if self.size < 64 or self.size % 2:
            raise ValueError("SampleConfig: size must be even and >= 64 (yuv420p, actor size)")
        if not (0.0 <= self.train_context_corr <= 1.0 and self.fps > 0):
            raise ValueError("SampleConfig: need 0 <= train_context_corr <= 1 and fps > 0")
        if not 2 <= self.actors <= 3 or min(self.n_train_clips, self.n_test_clips) < 1:
            raise ValueError("SampleConfig: need 2 <= actors <= 3, >= 1 referring clip a split")


# Fields only the referring variant reads.  A plain config hashes as it did before they
# existed, so its cached dataset (and every result trained on it) stays valid.
_REFERRING_FIELDS = ("referring", "actors", "n_train_clips", "n_test_clips")


def _config_record(cfg: SampleConfig) -> dict:
    """What identifies a generated dataset: the generator version(s) and the config."""
    record = {"generator": GENERATOR_VERSION, **asdict(cfg)}
    if not cfg.referring:
        return {k: v for k, v in record.items() if k not in _REFERRING_FIELDS}
    return {**record, "referring_generator": REF_GENERATOR_VERSION}


def config_hash(cfg: SampleConfig) -> str:
    """Short stable hash of a config (and the generator version): names the cache dir."""
    blob = json.dumps(_config_record(cfg), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _background(ctx: int, size: int, rng: np.random.Generator, seed: int) -> np.ndarray:
    """(size, size, 3) float32 texture of context ``ctx`` with a random per-clip offset."""
    if ctx < len(_CONTEXT_COLOURS):
        cols = np.array(_CONTEXT_COLOURS[ctx], np.float32)
    else:  # more contexts than palettes: reuse a style with colours fixed by (seed, ctx)
        cols = np.random.default_rng([seed, 1000 + ctx]).uniform(30, 225, (3, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    style = ctx % 4
    if style == 0:  # diagonal sinusoidal stripes
        period = size / 6
        v = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy) / period + rng.uniform(0, 2 * np.pi))
        return cols[0] * (1 - v[..., None]) + cols[1] * v[..., None]
    if style == 1:  # checkerboard
        cell = size // 8
        dx, dy = rng.integers(0, 2 * cell, 2)
        v = (((xx + dx) // cell + (yy + dy) // cell) % 2).astype(np.float32)
        return cols[0] * (1 - v[..., None]) + cols[1] * v[..., None]
    if style == 2:  # smooth colour blobs: a coarse random grid, bilinearly upsampled
        n = 5
        grid = rng.random((2, n, n)).astype(np.float32)
        pos = np.linspace(0, n - 1, size, dtype=np.float32)
        i0 = np.minimum(pos.astype(int), n - 2)
        f = pos - i0
        rows = grid[:, i0] * (1 - f)[None, :, None] + grid[:, i0 + 1] * f[None, :, None]
        w = rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f
        a, b = w[0][..., None], w[1][..., None]
        return (cols[0] * (1 - a) + cols[1] * a) * (1 - 0.5 * b) + cols[2] * 0.5 * b
    # bricks: rows of bricks, every other row shifted by half a brick, mortar lines
    h = size // 10
    dx, dy = rng.integers(0, 2 * h, 2)
    row = (yy + dy) // h
    xs = xx + dx + (row % 2) * h
    mortar = ((yy + dy) % h < 2) | (xs % (2 * h) < 2)
    shade = 0.85 + 0.15 * np.sin(row * 1.7 + (xs // (2 * h)) * 2.3)  # per-brick tone
    out = cols[0] * shade[..., None]
    out[mortar] = cols[1]
    return out


def _pose(motion: str, i: int, n: int, phase: float, cycles: float, travel: float):
    """Pose at frame i: (dx, lift, arm_l, arm_r, leg_l, leg_r, knee, spread), degrees.

    Arm angles are from straight down, positive = away from the body; leg angles are
    signed (positive = towards +x); ``lift`` raises the feet, as a fraction of a jump.
    ``spread`` is None for hanging arms; else both arms are held out at shoulder height
    and swung in a horizontal plane seen from the front: 90 = straight out sideways,
    0 = pointing at the camera (foreshortened away), negative = crossing inwards.
    """
    th = 2 * np.pi * cycles * i / n + phase
    s = np.sin(th)
    if motion == "wave":  # right arm swings from the side to overhead and back
        return 0.0, 0.0, 12.0, 110 + 60 * s, -6.0, 6.0, 0.0, None
    if motion == "walk":  # translate, scissor legs, counter-swinging arms
        dx = travel * (i / (n - 1) - 0.5)
        return dx, 0.0, 10 + 15 * s, 10 - 15 * s, 25 * s, -25 * s, 12 * abs(s), None
    if motion == "jump":  # airborne half the cycle, crouching (knees bent) the other half
        up, down = max(0.0, s), max(0.0, -s)
        return 0.0, up, 20 + 60 * up, 20 + 60 * up, -6.0, 6.0, 60 * down, None
    if motion == "clap":  # outstretched arms swing together (hands meet in front) and apart
        return 0.0, 0.0, 0.0, 0.0, -6.0, 6.0, 0.0, 37 + 53 * s
    # idle: standing still with a sub-pixel sway (at most 1 px peak to peak)
    return SWAY * np.sin(2 * np.pi * i / n + phase), 0.0, 12.0, 12.0, -6.0, 6.0, 0.0, None


def _figure(x: float, ground: float, height: float, jump: float, pose) -> list[tuple]:
    """Primitives (x0, y0, x1, y1, radius) of the actor; a disc is a zero-length segment.

    (x, ground) is the point between the feet on the ground; ``height`` is the standing
    height in pixels, ``jump`` the height of a full jump.
    """
    dx, lift, arm_l, arm_r, leg_l, leg_r, knee, spread = pose
    H = height
    x += dx
    thigh = shin = 0.23 * H
    legs = []
    for angle, side in ((leg_l, -1), (leg_r, 1)):
        # Knees bend outwards: thigh turned out by knee/2, shin back in by knee/2.
        a_t, a_s = np.radians(angle + side * knee / 2), np.radians(angle - side * knee / 2)
        legs.append((a_t, a_s))
    drop = np.mean([thigh * np.cos(a) + shin * np.cos(b) for a, b in legs])
    hip = np.array([x, ground - lift * jump - drop])
    neck = hip - (0, 0.30 * H)
    prims = [(*hip, *neck, 0.075 * H), (*(neck - (0, 0.12 * H)), *(neck - (0, 0.12 * H)), 0.10 * H)]
    for a_t, a_s in legs:
        knee_pt = hip + thigh * np.array([np.sin(a_t), np.cos(a_t)])
        foot = knee_pt + shin * np.array([np.sin(a_s), np.cos(a_s)])
        prims += [(*hip, *knee_pt, LIMB * H), (*knee_pt, *foot, LIMB * H)]
    for angle, side in ((arm_l, -1), (arm_r, 1)):
        a = np.radians(angle)
        shoulder = neck + (side * 0.08 * H, 0.03 * H)
        if spread is None:
            hand = shoulder + 0.30 * H * np.array([side * np.sin(a), np.cos(a)])
        else:  # only the sideways component of the arm is visible from the front
            reach = 0.30 * H * np.sin(np.radians(spread))
            hand = shoulder + (side * reach, 0.05 * H)
        prims.append((*shoulder, *hand, LIMB * H))
    return prims


def _extent(prims: list[tuple]) -> np.ndarray:
    """(x_min, y_min, x_max, y_max) covered by the primitives, with a 1 px margin."""
    p = np.array(prims, np.float64)
    r = p[:, 4] + 1.0
    xs, ys = p[:, [0, 2]], p[:, [1, 3]]
    return np.array([(xs.min(1) - r).min(), (ys.min(1) - r).min(),
                     (xs.max(1) + r).max(), (ys.max(1) + r).max()])


def _rasterise(prims: list[tuple], size: int) -> np.ndarray:
    """(size, size) float32 coverage in [0, 1] of the union of thick segments.

    Coverage falls linearly over one pixel at the edge (cheap anti-aliasing), measured
    from pixel centres.
    """
    mask = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1, r in prims:
        lo_x, hi_x = max(0, int(min(x0, x1) - r - 1)), min(size, int(max(x0, x1) + r + 2))
        lo_y, hi_y = max(0, int(min(y0, y1) - r - 1)), min(size, int(max(y0, y1) + r + 2))
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        py, px = np.mgrid[lo_y:hi_y, lo_x:hi_x].astype(np.float32) + 0.5
        vx, vy = x1 - x0, y1 - y0
        den = vx * vx + vy * vy
        t = np.clip(((px - x0) * vx + (py - y0) * vy) / den, 0, 1) if den > 0 else 0.0
        dist = np.hypot(px - (x0 + t * vx), py - (y0 + t * vy))
        cov = np.clip(r + 0.5 - dist, 0, 1)
        np.maximum(mask[lo_y:hi_y, lo_x:hi_x], cov, out=mask[lo_y:hi_y, lo_x:hi_x])
    return mask


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode (n, S, S, 3) uint8 RGB as H.264 yuv420p; single-threaded so bytes repeat."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        rate = Fraction(fps).limit_denominator(1001)
        opts = {"crf": "18", "threads": "1"}
        stream = container.add_stream("libx264", rate=rate, options=opts)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
