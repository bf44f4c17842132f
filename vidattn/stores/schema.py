"""The store schema, defined once.

A vidattn store is a Zarr (format 3) group plus parquet tables beside it::

    STORE/
      zarr.json                      group attributes: schema_version, provenance, classes,
                                     dataset, pending_invalidation (mid-invalidation only)
      features/<stream>/part-00000   float16 array, dims (voxel, channel), one writer per part;
                                     shards of at most shard_chunks chunks
      manifest.parquet               MANIFEST_SCHEMA: one row per video or segment
      pairs.parquet                  PAIRS_SCHEMA: action clip -> conjugate clip
      boxes.parquet                  BOXES_SCHEMA: per-frame ground-truth acting region (optional)
      label_text.parquet             LABEL_TEXT_SCHEMA: text embedding of each detector class name
      plan.parquet                   PLAN_SCHEMA: video -> part, fixed before any part is written
      index/<stream>/part-00000.parquet   INDEX_SCHEMA: written last; its presence marks a part done
      locks/                         per-part and store locks of running writers (see zarr_store)

The referring stream (RefAtomNet) uses the same mechanism for its tokens: ``detections``
holds a video's DETR (or annotated) boxes as a (K keyframes, 1, N_o, 10) map and ``text``
its referring sentence as a (1, 1, L tokens, E) map; class-name embeddings live once per
store in ``label_text.parquet`` rather than in every detection token (they are a function
of the class id: 100 queries x 384 floats per keyframe would repeat 91 distinct rows).

Feature maps are stored flattened: a video's (T, H, W, D) map occupies rows
``offset : offset + T*H*W`` of its part array, in (t, h, w) order.  Flattening lets
videos of any aspect ratio share one part array, and one writer per part means one per
shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vidattn.spill import row_blocks

# Bump when an array layout or a table's columns change; a store written with another
# version is refused on open rather than read wrongly.  Version 3 added the index columns
# decoder, frames_lost, file_size and file_mtime; a version-2 store reads them as unknown
# (DEFAULTS) and is upgraded in place when a run appends to it.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)


@dataclass(frozen=True)
class ArraySpec:
    """One feature array family: ``features/<name>/part-NNNNN``.

    dims are (voxel, channel); ``channels`` is D; rows are chunked ``chunk_rows`` at a time
    (a chunk of 1024 x 1024 float16 is 2 MiB, a good unit for reading one video), and a
    part's array is sharded ``shard_chunks`` chunks at a time (a whole part of short clips
    is one shard; a long video's map is written shard by shard, in bounded memory).
    ``frames_per_step``: input frames per map step t (the network's temporal stride to this
    endpoint: step t covers frames ``f t .. f t + f - 1``); ``cell``: input pixels per map
    cell (h, w).  Both 0 for token arrays, whose (T, H, W) are not space-time.
    """

    name: str
    channels: int
    frames_per_step: int = 0
    cell: int = 0
    dtype: str = "float16"
    dims: tuple[str, str] = ("voxel", "channel")
    chunk_rows: int = 1024
    shard_chunks: int = 16
    codec: str = "zstd"
    codec_level: int = 3
    description: str = ""

    def check(self, values: np.ndarray) -> None:
        """Refuse a write that does not match this spec (shape, dtype, finite values)."""
        if values.ndim != 4:
            raise ValueError(
                f"store: {self.name} expects a (T, H, W, {self.channels}) map, "
                f"got shape {tuple(values.shape)}"
            )
        if values.shape[-1] != self.channels:
            raise ValueError(
                f"store: {self.name} expects {self.channels} channels, got {values.shape[-1]}"
            )
        if min(values.shape[:3]) < 1:
            raise ValueError(f"store: {self.name} got an empty map {tuple(values.shape)}")
        if values.dtype.kind != "f":
            raise ValueError(f"store: {self.name} expects floating point, got {values.dtype}")
        limit = float(np.finfo(self.dtype).max)
        for block in row_blocks(values):  # bounded temporaries, also for a spilled map
            if not np.isfinite(block).all():
                raise ValueError(f"store: {self.name} map holds NaN or Inf; refusing to "
                                 "store it")
            if np.abs(block).max() > limit:
                raise ValueError(f"store: {self.name} map exceeds the range of {self.dtype}")


# One detection token: the box twice (DETR's cx, cy, w, h and corners x1, y1, x2, y2, all
# normalised to the full frame), the class id in the detector's label map, its score.
DETECTION_FIELDS = ("cx", "cy", "w", "h", "x1", "y1", "x2", "y2", "class_id", "score")
# Class id of "no object" padding rows (annotated boxes fill N_o queries with it): one past
# COCO's 91 ids, DETR's own no-object index.
NO_OBJECT = 91
# COCO (DETR) id of the person class: the location stream keeps these queries.
PERSON = 1


def text_array(width: int) -> str:
    """The store array for sentence tokens of an encoder with hidden size ``width``."""
    name = "text" if width == 384 else f"text_{width}"
    if name not in ARRAYS:
        known = sorted(ARRAYS[n].channels for n in ARRAYS if n.startswith("text"))
        raise ValueError(f"store: no text array for a {width}-wide encoder (known widths "
                         f"{known}); add one to vidattn/stores/schema.py ARRAYS")
    return name


# Every array the store may hold.  Extractors declare which of these they write.
# Names follow vidattn.extractors.two_stream.array_name: <stream>[_<backbone>][_<endpoint>].
ARRAYS: dict[str, ArraySpec] = {
    "rgb": ArraySpec("rgb", 1024, 8, 32,
                     description="I3D RGB stream, Mixed_5c (T = N/8, 1/32 size)"),
    "flow": ArraySpec("flow", 1024, 8, 32, description="I3D optical-flow stream, Mixed_5c"),
    "rgb_mixed_4f": ArraySpec("rgb_mixed_4f", 832, 4, 16,
                              description="I3D RGB, Mixed_4f (T = N/4, 1/16 size)"),
    "flow_mixed_4f": ArraySpec("flow_mixed_4f", 832, 4, 16, description="I3D flow, Mixed_4f"),
    "rgb_mixed_3c": ArraySpec("rgb_mixed_3c", 480, 2, 8,
                              description="I3D RGB, Mixed_3c (T = N/2, 1/8 size)"),
    "flow_mixed_3c": ArraySpec("flow_mixed_3c", 480, 2, 8, description="I3D flow, Mixed_3c"),
    # pytorchvideo's I3D R50 halves time once, in the pool after res2: T = N/2 from res3 on
    "rgb_r50": ArraySpec("rgb_r50", 2048, 2, 32,
                         description="pytorchvideo I3D R50, res5 (T = N/2, 1/32 size)"),
    "rgb_r50_res4": ArraySpec("rgb_r50_res4", 1024, 2, 16,
                              description="I3D R50, res4 (T = N/2, 1/16 size)"),
    "rgb_r50_res3": ArraySpec("rgb_r50_res3", 512, 2, 8,
                              description="I3D R50, res3 (T = N/2, 1/8 size)"),
    # pytorchvideo hub backbones (--backbone pytorchvideo:NAME, vidattn/extractors/hub.py):
    # the last stage, 1/32 size; SlowFast stores both pathways
    **{f"rgb_ptv_{name}": ArraySpec(f"rgb_ptv_{name}", width, step, 32,
                                    description=f"pytorchvideo {what} (T = N/{step})")
       for name, width, step, what in (
           ("i3d_r50", 2048, 2, "i3d_r50, res5"), ("slow_r50", 2048, 1, "slow_r50, res5"),
           ("x3d_xs", 192, 1, "x3d_xs, res5"), ("x3d_s", 192, 1, "x3d_s, res5"),
           ("x3d_m", 192, 1, "x3d_m, res5"), ("r2plus1d_r50", 2048, 4, "r2plus1d_r50, res5"),
           ("csn_r101", 2048, 8, "csn_r101, res5"),
           ("slowfast_r50", 2048, 4, "slowfast_r50, slow pathway res5"),
           ("slowfast_r50_fast", 256, 1, "slowfast_r50, fast pathway res5"))},
    # float32: box coordinates and class ids must survive exactly (float16 has 11 bits).
    "detections": ArraySpec(
        "detections", len(DETECTION_FIELDS), dtype="float32", chunk_rows=4096,
        description="detection tokens per keyframe, (K, 1, N_o, 10): "
                    + ", ".join(DETECTION_FIELDS) + "; provenance says detr or annotations"),
    **{name: ArraySpec(name, width, chunk_rows=256,
                       description=f"referring-sentence tokens, (1, 1, L, {width}): last "
                                   f"hidden states of a frozen BERT-family encoder")
       for name, width in (("text", 384), ("text_768", 768), ("text_1024", 1024))},
}

MANIFEST_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),  # unique within the store
        ("path", pa.string()),  # video file, relative to the dataset root or absolute
        ("split", pa.string()),  # train | val | test
        ("labels", pa.list_(pa.int32())),  # class indices; multi-hot datasets list several
        ("role", pa.string()),  # action | conjugate | background
        ("group", pa.string()),  # context id shared by an action clip and its conjugates
        ("start_sec", pa.float64()),  # segment bounds inside the file; null = whole file
        ("end_sec", pa.float64()),
        ("dataset", pa.string()),
        ("fps", pa.float64()),  # native rate where the annotation or a probe knows it
        ("n_frames", pa.int64()),  # native frame count of the segment, where known
        ("status", pa.string()),  # ok | missing (file not found: listed, never extracted)
        ("extra", pa.string()),  # dataset-specific fields as a JSON object, or null
    ]
)

PAIRS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),  # the action clip
        ("conjugate_id", pa.string()),  # a clip with the same context, without the action
        ("rule", pa.string()),  # how it was mined, e.g. "sample:same-background-idle"
        ("distance", pa.float32()),  # rule-specific distance (0 where not applicable)
    ]
)

BOXES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame", pa.int32()),  # frame index at the dataset's native fps
        ("x1", pa.float32()),  # normalised [0, 1] to the full (uncropped) frame
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
    ]
)

LABEL_TEXT_SCHEMA = pa.schema(
    [
        ("class_id", pa.int32()),  # id in the detector's label map (COCO for DETR)
        ("name", pa.string()),
        ("embedding", pa.list_(pa.float32())),  # the text encoder's pooled name embedding
    ]
)

PLAN_SCHEMA = pa.schema([("video_id", pa.string()), ("part", pa.int32())])

INDEX_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("stream", pa.string()),
        ("part", pa.int32()),
        ("offset", pa.int64()),  # first row in features/<stream>/part-NNNNN
        ("t", pa.int32()),
        ("h", pa.int32()),
        ("w", pa.int32()),
        ("status", pa.string()),  # done | failed
        ("error", pa.string()),  # one line, null when done
        ("checksum", pa.string()),  # sha256 of the stored float16 bytes
        ("n_frames", pa.int32()),  # frames fed to the extractor after resampling
        ("fps", pa.float32()),  # the resampled frame rate
        ("decoder", pa.string()),  # decord | pyav (null: not decoded from video, or unknown)
        # of n_frames, how many show the frame before a gap of damaged, undecodable data
        ("frames_lost", pa.int32()),
        ("file_size", pa.int64()),  # the video file as extracted: bytes and mtime (null:
        ("file_mtime", pa.float64()),  # unknown); a file changed since is extracted again
    ]
)

TABLES: dict[str, pa.Schema] = {
    "manifest": MANIFEST_SCHEMA,
    "pairs": PAIRS_SCHEMA,
    "boxes": BOXES_SCHEMA,
    "label_text": LABEL_TEXT_SCHEMA,
    "plan": PLAN_SCHEMA,
    "index": INDEX_SCHEMA,
}


# Columns a producer may leave out, with the value they then take.  Everything else is
# required: a table missing it is refused.
DEFAULTS: dict[str, dict] = {
    "manifest": {"fps": None, "n_frames": None, "status": "ok", "extra": None},
    "index": {"decoder": None, "frames_lost": 0, "file_size": None, "file_mtime": None},
}


def conform(table_name: str, data) -> pa.Table:
    """Build a pyarrow table for ``table_name`` from a DataFrame or dict of columns.

    Columns are reordered and cast to the schema; optional columns (DEFAULTS) are filled; a
    missing required column or an unknown column is an error naming it, so no table with a
    drifting layout ever reaches disk.
    """
    schema = TABLES[table_name]
    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, dict):
        table = pa.table(data)
    else:
        table = pa.Table.from_pandas(data, preserve_index=False)
    for name, value in DEFAULTS.get(table_name, {}).items():
        if name not in table.column_names:
            column = pa.array([value] * table.num_rows, type=schema.field(name).type)
            table = table.append_column(name, column)
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise ValueError(
            f"store: {table_name} table does not match its schema "
            f"(missing columns {missing}, unexpected columns {extra})"
        )
    return table.select(schema.names).cast(schema)


# What a manifest row says about its video: a run may add videos to a store, never restate
# one of these differently (its maps would mix two cuts of the video).
MANIFEST_IDENTITY = ("path", "split", "start_sec", "end_sec", "role", "group", "labels")


def manifest_conflict(old, new) -> tuple[str, str] | None:
    """The first ``(video_id, column)`` where DataFrame ``new`` restates a row of ``old``
    (both manifest tables) differently in a MANIFEST_IDENTITY column; None if none does."""
    both = old.merge(new, on="video_id", suffixes=("_old", ""))
    for col in MANIFEST_IDENTITY:
        a, b = both[f"{col}_old"], both[col]
        if col == "labels":  # lists: compare as tuples
            a, b = a.map(tuple), b.map(tuple)
        changed = ~((a == b) | (a.isna() & b.isna()))
        if changed.any():
            return str(both.loc[changed, "video_id"].iloc[0]), col
    return None
