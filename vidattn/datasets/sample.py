"""The embedded sample dataset: synthetic actions whose answer is known.

Each clip shows a small stick-figure actor over a textured background.  The *action* is
the actor's motion (wave, walk, jump, clap); the *background* ("context") is a
confounder: in train, class k mostly appears over context k; in test, never.  A
classifier that looks at the actor generalises, one that learned the background fails.
Every action clip has a conjugate: the same background and actor standing idle.

Clips are drawn with numpy, encoded as H.264 mp4 with PyAV and later read back through
:func:`vidattn.video.load_clip`, exactly like a downloaded dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vidattn.datasets import DatasetTables
from vidattn.stores.schema import conform

# Bump whenever drawing or encoding changes so cached copies are regenerated.
GENERATOR_VERSION = 2
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
    n_train_clips: int = 48
    n_test_clips: int = 24

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
    from vidattn.datasets.sample_ref import GENERATOR_VERSION as REF_VERSION  # lazy: a cycle

    return {**record, "referring_generator": REF_VERSION}


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


def _render_pair(cfg: SampleConfig, motion: str, ctx: int, rng: np.random.Generator):
    """Draw an action clip and its idle conjugate.

    Returns (action (n, S, S, 3) uint8, conjugate (n, S, S, 3) uint8, boxes (n, 4) float
    normalised (x1, y1, x2, y2) of the actor in the action clip).
    """
    S, n = cfg.size, cfg.n_frames
    bg = _background(ctx, S, rng, cfg.seed)
    mean = bg.mean((0, 1))
    bg = mean + CONTEXT_CONTRAST * (bg - mean)
    colour = np.array(_ACTOR_COLOURS[rng.integers(len(_ACTOR_COLOURS))], np.float32)
    phase, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.0)
    travel = 0.22 * S * rng.choice([-1.0, 1.0])
    height, jump = ACTOR_HEIGHT * S, 0.14 * S
    poses = {m: [_pose(m, i, n, phase, cycles, travel) for i in range(n)] for m in (motion, "idle")}
    # Place the actor so every pose of both clips stays inside the central 80% of the frame.
    ext = np.array(
        [_extent(_figure(0.0, 0.0, height, jump, p)) for ps in poses.values() for p in ps]
    )
    lo, hi = 0.1 * S - ext[:, :2].min(0), 0.9 * S - ext[:, 2:].max(0)
    if np.any(lo > hi):
        raise ValueError(f"sample: frame size {S} too small for the actor")
    x, ground = rng.uniform(lo, hi)
    bg_u8 = np.rint(bg).clip(0, 255).astype(np.uint8)
    clips, boxes = [], []
    for m in (motion, "idle"):
        frames = np.repeat(bg_u8[None], n, axis=0)
        for i, p in enumerate(poses[m]):
            mask = _rasterise(_figure(x, ground, height, jump, p), S)
            ys, xs = np.nonzero(mask > 0)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            # Blend only inside the actor's box; elsewhere the frame is the background.
            a = mask[y0:y1, x0:x1, None]
            blend = bg[y0:y1, x0:x1] * (1 - a) + colour * a
            frames[i, y0:y1, x0:x1] = np.rint(blend).clip(0, 255).astype(np.uint8)
            if m == motion:
                boxes.append((x0 / S, y0 / S, x1 / S, y1 / S))
        clips.append(frames)
    return clips[0], clips[1], np.array(boxes)


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


def _generate(dest: Path, cfg: SampleConfig) -> None:
    """Write the whole dataset into ``dest`` (an empty directory); COMPLETE comes last."""
    if cfg.referring:
        from vidattn.datasets.sample_ref import generate

        return generate(dest, cfg)
    K = len(cfg.classes)
    (dest / "videos").mkdir(parents=True)
    manifest, pairs, boxes, contexts = [], [], [], []
    for split_code, (split, n_per) in enumerate(
        (("train", cfg.n_train_per_class), ("test", cfg.n_test_per_class))
    ):
        width = max(2, len(str(n_per - 1)))
        for k, name in enumerate(cfg.classes):
            others = [c for c in range(K) if c != k]
            for i in range(n_per):
                # One generator per clip, keyed by its identity, so clips do not depend on
                # generation order and changing one count leaves other clips unchanged.
                rng = np.random.default_rng([cfg.seed, split_code, k, i])
                if split == "train" and rng.random() < cfg.train_context_corr:
                    ctx = k
                else:  # test: always another class's context (context shift)
                    ctx = int(others[rng.integers(len(others))])
                action, idle, box = _render_pair(cfg, name, ctx, rng)
                vid = f"{split}_{name}_{i:0{width}d}"
                for clip_id, frames, labels, role in (
                    (vid, action, [k], "action"),
                    (f"{vid}_conj", idle, [], "conjugate"),
                ):
                    _write_mp4(dest / "videos" / f"{clip_id}.mp4", frames, cfg.fps)
                    manifest.append({
                        "video_id": clip_id, "path": f"videos/{clip_id}.mp4", "split": split,
                        "labels": labels, "role": role, "group": vid,
                        "start_sec": None, "end_sec": None, "dataset": "sample",
                    })
                    contexts.append({"video_id": clip_id, "context": ctx})
                pairs.append({"video_id": vid, "conjugate_id": f"{vid}_conj",
                              "rule": RULE, "distance": 0.0})
                for f, (x1, y1, x2, y2) in enumerate(box):
                    boxes.append({"video_id": vid, "frame": f, "x1": x1, "y1": y1,
                                  "x2": x2, "y2": y2})

    manifest_df = pd.DataFrame(manifest)
    manifest_df["start_sec"] = manifest_df["start_sec"].astype("float64")
    manifest_df["end_sec"] = manifest_df["end_sec"].astype("float64")
    pq.write_table(conform("manifest", manifest_df), dest / "manifest.parquet")
    pq.write_table(conform("pairs", pd.DataFrame(pairs)), dest / "pairs.parquet")
    pq.write_table(conform("boxes", pd.DataFrame(boxes)), dest / "boxes.parquet")
    ctx_table = pa.Table.from_pandas(pd.DataFrame(contexts), preserve_index=False)
    pq.write_table(ctx_table.cast(CONTEXTS_SCHEMA), dest / "contexts.parquet")
    (dest / "classes.txt").write_text("".join(f"{c}\n" for c in cfg.classes))
    (dest / "config.json").write_text(
        json.dumps(_config_record(cfg), indent=1) + "\n"
    )
    (dest / "COMPLETE").write_text(config_hash(cfg) + "\n")


def _is_complete(root: Path, digest: str | None) -> bool:
    marker = root / "COMPLETE"
    return marker.is_file() and (digest is None or marker.read_text().strip() == digest)


def default_root(cfg: SampleConfig = SampleConfig()) -> Path:
    """``$VIDATTN_CACHE/sample-<hash>``, or ``~/.cache/vidattn/sample-<hash>``."""
    base = os.environ.get("VIDATTN_CACHE")
    base_dir = Path(base) if base else Path.home() / ".cache" / "vidattn"
    return base_dir / f"sample-{config_hash(cfg)}"


def ensure_sample(
    root: str | Path | None = None,
    cfg: SampleConfig = SampleConfig(),
) -> Path:
    """Return the root of a complete sample dataset for ``cfg``, generating it if needed.

    ``root=None`` uses :func:`default_root`.  Generation happens in a temporary sibling
    directory that is renamed into place, so an interrupted run never leaves a partial
    dataset behind.  A stale dataset (other config) at ``root`` is replaced; any other
    non-empty directory there is refused rather than deleted.
    """
    root = Path(root) if root is not None else default_root(cfg)
    digest = config_hash(cfg)
    if _is_complete(root, digest):
        return root
    if root.exists() and not (root.is_dir() and {p.name for p in root.iterdir()} <= _OUR_FILES):
        raise FileExistsError(f"sample: {root} exists and does not hold a sample dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    n_clips = (cfg.n_train_clips + cfg.n_test_clips if cfg.referring
               else 2 * len(cfg.classes) * (cfg.n_train_per_class + cfg.n_test_per_class))
    print(f"vidattn: generating sample dataset ({n_clips} clips) in {root}", file=sys.stderr,
          flush=True)
    try:
        _generate(tmp, cfg)
        if _is_complete(root, digest):  # another process finished first: keep theirs
            shutil.rmtree(tmp)
            return root
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def load(root: str | Path | None = None, cfg: SampleConfig | None = None,
         options: dict | None = None) -> DatasetTables:
    """Load the sample dataset's tables, generating the dataset first if needed.

    With an explicit ``root`` that already holds a complete dataset and no ``cfg``, that
    dataset is read as it is, whatever config made it.  ``options`` are ``key=value``
    strings for SampleConfig fields (``-o referring=true``); ``classes`` is comma-separated.
    """
    if options:
        if cfg is not None:
            raise ValueError("sample: pass cfg or options, not both")
        from vidattn.options import parse_options

        if isinstance(options.get("classes"), str):
            options = {**options, "classes": tuple(options["classes"].split(","))}
        cfg = parse_options(SampleConfig, options)
    if cfg is None and root is not None and _is_complete(Path(root), None):
        root = Path(root)
    else:
        root = ensure_sample(root, cfg or SampleConfig())
    classes = (root / "classes.txt").read_text().split()
    # Referring rows are instances scored like RefAVA (BCE, mAP); older datasets lack the key.
    record = root / "config.json"
    referring = record.is_file() and json.loads(record.read_text()).get("referring", False)
    return DatasetTables(
        name="sample",
        root=root,
        classes=classes,
        manifest=pq.read_table(root / "manifest.parquet").to_pandas(),
        pairs=pq.read_table(root / "pairs.parquet").to_pandas(),
        boxes=pq.read_table(root / "boxes.parquet").to_pandas(),
        multilabel=bool(referring),
    )


def load_contexts(root: str | Path) -> pd.DataFrame:
    """The (video_id, context) table of a generated sample dataset."""
    return pq.read_table(Path(root) / "contexts.parquet").to_pandas()
