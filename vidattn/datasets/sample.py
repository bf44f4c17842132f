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

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vidattn.datasets import DatasetTables, sample_ref
from vidattn.datasets.sample_draw import (  # noqa: F401 - MOTIONS, GENERATOR_VERSION: public
    _ACTOR_COLOURS,
    _OUR_FILES,
    ACTOR_HEIGHT,
    CONTEXT_CONTRAST,
    CONTEXTS_SCHEMA,
    GENERATOR_VERSION,
    MOTIONS,
    RULE,
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
from vidattn.stores.schema import conform

DEFAULT_CONFIG = SampleConfig()


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


def _generate(dest: Path, cfg: SampleConfig) -> None:
    """Write the whole dataset into ``dest`` (an empty directory); COMPLETE comes last."""
    if cfg.referring:
        return sample_ref.generate(dest, cfg)
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


def default_root(cfg: SampleConfig = DEFAULT_CONFIG) -> Path:
    """``$VIDATTN_CACHE/sample-<hash>``, or ``~/.cache/vidattn/sample-<hash>``."""
    base = os.environ.get("VIDATTN_CACHE")
    base_dir = Path(base) if base else Path.home() / ".cache" / "vidattn"
    return base_dir / f"sample-{config_hash(cfg)}"


def ensure_sample(
    root: str | Path | None = None,
    cfg: SampleConfig = DEFAULT_CONFIG,
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
