"""The referring variant of the sample dataset: several actors, one sentence names each.

It imitates RefAVA (:mod:`vidattn.datasets.refava`, RefAtomNet's benchmark) at toy scale.
Each clip shows 2 to ``cfg.actors`` stick figures side by side, one per lane (left / right,
or left / middle / right), over one random background context.  Every actor wears a colour
no other actor of its clip wears and does one motion of ``cfg.classes`` (two actors may
share one).  Each actor is an *instance*: one manifest row whose ``extra`` JSON holds a
sentence that picks it out by lane, colour or both -- never by its action, as in RefAVA --
its box at the keyframe (the middle frame) and the boxes of every actor of the clip.  The
task is therefore the paper's: read the sentence, find the person, recognise its action.

Drawing reuses :mod:`vidattn.datasets.sample_draw` (backgrounds, poses, figures, encoding);
:func:`vidattn.datasets.sample._generate` hands over here when ``cfg.referring`` is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vidattn.datasets.sample_draw import (
    CONTEXT_CONTRAST,
    CONTEXTS_SCHEMA,
    REF_GENERATOR_VERSION,
    SampleConfig,
    _background,
    _config_record,
    _extent,
    _figure,
    _pose,
    _rasterise,
    _write_mp4,
    config_hash,
)
from vidattn.stores.schema import PAIRS_SCHEMA, conform

# Bump whenever drawing, placement or sentences change so cached copies are regenerated.
GENERATOR_VERSION = REF_GENERATOR_VERSION  # its value lives beside config_hash
# Standing height as a fraction of the frame: 0.28 (against the plain sample's 0.5) lets
# three figures with outstretched arms (0.93 heights + 2 px wide) fit side by side even in
# the smallest frames (64 px).
ACTOR_HEIGHT = 0.28
JUMP = 0.28  # jump height, in actor heights (the plain sample's 0.14 of the frame / 0.5)
WALK_TRAVEL = 0.3  # walking distance, in actor heights: short enough to stay in a lane
MARGIN = 0.02  # lanes share the frame minus this fraction on either side
GAP = 0.5  # pixels kept clear at each lane edge (boxes lie strictly inside the extents)
SHARE = 0.25  # P(one actor copies another's motion): identical labels must be told apart
LANES = {2: ("left", "right"), 3: ("left", "middle", "right")}
WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
# Saturated colours, each at least 100 (RGB distance) from every pixel of every context's
# half-contrast background and ~190 from each other: visible anywhere, never confused.
PALETTE = {
    "red": (230, 25, 25),
    "green": (20, 235, 40),
    "blue": (35, 60, 245),
    "yellow": (250, 235, 25),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
# Referring templates by what they use.  Lanes and colours are unique within a clip, so any
# of them names exactly one actor; none mentions a motion.
TEMPLATES = {
    "position": ("the person {where}", "the one {where}", "the figure {where}"),
    "colour": ("the person in {colour}", "the one wearing {colour}", "the {colour} figure"),
    "both": ("the person {where} in {colour}", "the one {where} wearing {colour}",
             "the {colour} figure {where}"),
}


@dataclass(frozen=True)
class Actor:
    """One actor of a clip: who it is, what it does, and where it stands."""

    person_id: int  # its lane's index, counted from the left
    lane: str  # left | middle | right
    motion: int  # index into cfg.classes
    colour: str  # a key of PALETTE
    description: str
    phase: float
    cycles: float
    travel: float  # walking distance in pixels, signed (only the walk reads it)
    x: float  # the point between the feet at rest, in pixels
    ground: float


@dataclass(frozen=True)
class ClipPlan:
    """Everything random about a clip, drawn before any pixel is."""

    clip_id: str
    split: str
    context: int
    actors: tuple[Actor, ...]  # left to right
    bg_seed: int  # seeds the background texture's offsets


def keyframe(cfg: SampleConfig) -> int:
    """The annotated frame: the middle one, as RefAVA annotates the middle of a window."""
    return cfg.n_frames // 2


def _poses(cfg: SampleConfig, motion: int, phase: float, cycles: float,
           travel: float) -> list[tuple]:
    """The actor's pose at every frame (see :func:`vidattn.datasets.sample._pose`)."""
    name = cfg.classes[motion]
    return [_pose(name, i, cfg.n_frames, phase, cycles, travel) for i in range(cfg.n_frames)]


def describe(lane: str, colour: str, rng: np.random.Generator) -> str:
    """A referring sentence for the actor in ``lane`` wearing ``colour``."""
    kind = ("position", "colour", "both")[rng.integers(3)]
    template = TEMPLATES[kind][rng.integers(len(TEMPLATES[kind]))]
    return template.format(where=WHERE[lane], colour=colour)


def plan_clip(cfg: SampleConfig, split_code: int, index: int) -> ClipPlan:
    """Draw clip ``index`` of split ``split_code`` (0 train, 1 test).

    One generator per clip, keyed by its identity, as in the plain sample: clips do not
    depend on generation order, and a test can re-draw any clip's truth cheaply.
    """
    rng = np.random.default_rng([cfg.seed, split_code, index])
    S, K = cfg.size, len(cfg.classes)
    n = int(rng.integers(2, cfg.actors + 1))
    context = int(rng.integers(K))
    # Whole permutations of the classes keep the label counts close to balanced; the
    # occasional shared motion keeps the label from naming the actor.
    motions = np.concatenate([rng.permutation(K) for _ in range(-(-n // K))])[:n]
    if rng.random() < SHARE:
        a, b = rng.choice(n, 2, replace=False)
        motions[b] = motions[a]
    colours = [list(PALETTE)[c] for c in rng.choice(len(PALETTE), n, replace=False)]
    height = ACTOR_HEIGHT * S
    lane_w = (1 - 2 * MARGIN) * S / n
    actors = []
    for j, lane in enumerate(LANES[n]):
        phase, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.0)
        travel = WALK_TRAVEL * height * rng.choice([-1.0, 1.0])
        poses = _poses(cfg, int(motions[j]), phase, cycles, travel)
        ext = np.array([_extent(_figure(0.0, 0.0, height, JUMP * height, p)) for p in poses])
        # Every pose stays inside the lane (less GAP) and the central 80% of the height.
        left = MARGIN * S + j * lane_w
        lo = np.array([left + GAP - ext[:, 0].min(), 0.1 * S - ext[:, 1].min()])
        hi = np.array([left + lane_w - GAP - ext[:, 2].max(), 0.9 * S - ext[:, 3].max()])
        if np.any(lo > hi):
            raise ValueError(f"sample: frame size {S} too small for {n} actors side by side")
        x, ground = rng.uniform(lo, hi)
        actors.append(Actor(j, lane, int(motions[j]), colours[j], describe(lane, colours[j], rng),
                            phase, cycles, travel, float(x), float(ground)))
    split = ("train", "test")[split_code]
    width = max(2, len(str((cfg.n_train_clips, cfg.n_test_clips)[split_code] - 1)))
    return ClipPlan(f"{split}_{index:0{width}d}", split, context, tuple(actors),
                    int(rng.integers(2**31)))


def render_clip(cfg: SampleConfig, plan: ClipPlan) -> tuple[np.ndarray, np.ndarray]:
    """Draw a planned clip.

    Returns (frames (n, S, S, 3) uint8, boxes (actors, n, 4) float normalised x1, y1, x2,
    y2 of each actor, actors left to right).
    """
    S, n = cfg.size, cfg.n_frames
    bg = _background(plan.context, S, np.random.default_rng(plan.bg_seed), cfg.seed)
    mean = bg.mean((0, 1))
    bg = mean + CONTEXT_CONTRAST * (bg - mean)
    frames = np.repeat(np.rint(bg).clip(0, 255).astype(np.uint8)[None], n, axis=0)
    height = ACTOR_HEIGHT * S
    boxes = np.zeros((len(plan.actors), n, 4))
    for a in plan.actors:
        colour = np.array(PALETTE[a.colour], np.float32)
        for i, p in enumerate(_poses(cfg, a.motion, a.phase, a.cycles, a.travel)):
            mask = _rasterise(_figure(a.x, a.ground, height, JUMP * height, p), S)
            ys, xs = np.nonzero(mask > 0)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            # Lanes are disjoint, so blending over the background never covers a neighbour.
            m = mask[y0:y1, x0:x1, None]
            blend = bg[y0:y1, x0:x1] * (1 - m) + colour * m
            frames[i, y0:y1, x0:x1] = np.rint(blend).clip(0, 255).astype(np.uint8)
            boxes[a.person_id, i] = (x0 / S, y0 / S, x1 / S, y1 / S)
    return frames, boxes


def _instance_rows(cfg: SampleConfig, plan: ClipPlan,
                   boxes: np.ndarray) -> tuple[list[dict], list[dict], list[dict]]:
    """Manifest, boxes and contexts rows of a clip's instances."""
    kf = keyframe(cfg)
    persons = [[float(v) for v in boxes[a.person_id, kf]] for a in plan.actors]
    manifest, box_rows, contexts = [], [], []
    for a in plan.actors:
        vid = f"{plan.clip_id}_p{a.person_id}"
        extra = {"description": a.description, "person_id": a.person_id,
                 "box": persons[a.person_id], "keyframe_sec": kf / cfg.fps, "persons": persons}
        manifest.append({
            "video_id": vid, "path": f"videos/{plan.clip_id}.mp4", "split": plan.split,
            "labels": [a.motion], "role": "action", "group": plan.clip_id,
            "start_sec": None, "end_sec": None, "dataset": "sample", "fps": cfg.fps,
            "n_frames": cfg.n_frames, "status": "ok", "extra": json.dumps(extra),
        })
        contexts.append({"video_id": vid, "context": plan.context})
        for f, (x1, y1, x2, y2) in enumerate(boxes[a.person_id]):
            box_rows.append({"video_id": vid, "frame": f, "x1": x1, "y1": y1, "x2": x2, "y2": y2})
    return manifest, box_rows, contexts


def generate(dest: Path, cfg: SampleConfig) -> None:
    """Write the referring dataset into ``dest`` (an empty directory); COMPLETE comes last.

    Same files as the plain sample: manifest (one row per instance), boxes (every frame of
    each instance's actor), pairs (none: there are no conjugates), contexts, classes.
    """
    (dest / "videos").mkdir(parents=True)
    manifest, boxes, contexts = [], [], []
    for split_code, n_clips in enumerate((cfg.n_train_clips, cfg.n_test_clips)):
        for index in range(n_clips):
            plan = plan_clip(cfg, split_code, index)
            frames, clip_boxes = render_clip(cfg, plan)
            _write_mp4(dest / "videos" / f"{plan.clip_id}.mp4", frames, cfg.fps)
            rows = _instance_rows(cfg, plan, clip_boxes)
            manifest += rows[0]
            boxes += rows[1]
            contexts += rows[2]
    manifest_df = pd.DataFrame(manifest)
    for col in ("start_sec", "end_sec"):
        manifest_df[col] = manifest_df[col].astype("float64")
    pq.write_table(conform("manifest", manifest_df), dest / "manifest.parquet")
    pq.write_table(PAIRS_SCHEMA.empty_table(), dest / "pairs.parquet")
    pq.write_table(conform("boxes", pd.DataFrame(boxes)), dest / "boxes.parquet")
    ctx_table = pa.Table.from_pandas(pd.DataFrame(contexts), preserve_index=False)
    pq.write_table(ctx_table.cast(CONTEXTS_SCHEMA), dest / "contexts.parquet")
    (dest / "classes.txt").write_text("".join(f"{c}\n" for c in cfg.classes))
    (dest / "config.json").write_text(json.dumps(_config_record(cfg), indent=1) + "\n")
    (dest / "COMPLETE").write_text(config_hash(cfg) + "\n")
