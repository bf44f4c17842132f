"""``vidattn extract``: decode a dataset's videos, run a frozen extractor, fill the store.

Resumable by construction (see stores/zarr_store.py): the plan fixes parts up front, a
part is done once its index fragment exists, and an unfinished part is redone whole with
the same videos in the same order — so a run killed at any point and restarted ends with
exactly the arrays of an uninterrupted run.  A video that fails is recorded (status
"failed", one-line error) and the rest go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vidattn.pipeline.localize import segment_start
from vidattn.pipeline.mine import NEAREST_NEGATIVE
from vidattn.progress import bar as progress
from vidattn.registry import EXTRACTORS, resolve
from vidattn.stores import open_store
from vidattn.stores.schema import ARRAYS

# Preprocessing a dataset is best extracted with, unless the user says otherwise.  The
# sample's frames are 128 px: upsampling them to 256 would only quadruple I3D's compute.
DATASET_DECODE: dict[str, dict] = {
    "sample": {"short_side": 128, "crop": None},
}
DEFAULT_DECODE = {"fps": 25.0, "short_side": 256, "crop": 224}


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str = "sample"
    root: str | None = None  # dataset root; None = the dataset's default location
    store: str | None = None  # path or fsspec URL; None = stores/<dataset>
    extractor: str = "i3d"
    i3d_rgb: str | None = None  # None = packaged Kinetics-400 weights; "random"; or a path
    i3d_flow: str | None = None  # no packaged flow weights: None = seeded random, loudly
    streams: str = "rgb"  # "rgb", "flow" or "rgb,flow" (maps aligned in time)
    backbone: str = "inception"  # inception (I3D) | r50 (pytorchvideo I3D R50, RGB only)
    endpoints: str = ""  # extra endpoints stored too, e.g. "Mixed_4f" (see two_stream.py)
    flow_method: str | None = None  # tvl1 | tvl1-torch | dis; None: by device (see flow.py)
    device: str = "auto"
    fps: float | None = None  # None = dataset default, else DEFAULT_DECODE
    short_side: int | None = None
    crop: str | None = None  # "224" | "full" | None (dataset default)
    part_size: int = 16  # videos per part (= per shard, per writer)
    retry_failed: bool = False
    limit: int | None = None  # extract only the first N manifest rows (quick looks)
    options: dict = field(default_factory=dict)  # the dataset adapter's Options, key -> str
    mine: bool = True  # mine feature-based conjugates (HACS) once features are stored


@dataclass
class ExtractResult:
    store: str
    n_videos: int = 0
    n_extracted: int = 0
    n_skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # manifest rows whose file is absent
    seconds: float = 0.0


def decode_config(cfg: ExtractConfig, dataset: str):
    from vidattn.video import DecodeConfig

    values = {**DEFAULT_DECODE, **DATASET_DECODE.get(dataset, {})}
    if cfg.fps is not None:
        values["fps"] = cfg.fps
    if cfg.short_side is not None:
        values["short_side"] = cfg.short_side
    if cfg.crop is not None:
        values["crop"] = None if cfg.crop in ("full", "none") else int(cfg.crop)
    return DecodeConfig(**values)


def build_extractor(cfg: ExtractConfig, device: str):
    from vidattn.extractors.two_stream import I3DExtractorConfig

    streams = tuple(s.strip() for s in cfg.streams.split(",") if s.strip())
    endpoints = tuple(e.strip() for e in cfg.endpoints.split(",") if e.strip())
    build = resolve(EXTRACTORS, cfg.extractor, "extractor")
    return build(I3DExtractorConfig(rgb_weights=cfg.i3d_rgb, flow_weights=cfg.i3d_flow,
                                    streams=streams, backbone=cfg.backbone,
                                    endpoints=endpoints, flow_method=cfg.flow_method,
                                    device=device))


# Frames per decoded chunk: the unit of prefetching and of the flow computation (OpenCV's
# TV-L1 shares a chunk's pairs among processes).  128 frames of 224² are 19 MB.
CHUNK_FRAMES = 128


def extract_video(extractor, path: Path, decode, meta, arrays: tuple[str, ...]):
    """Decode one video as a stream (prefetched in a thread) and run the extractor on it.

    Returns (n_frames, fps, {array: map}).  Memory: a few chunks of frames plus one window
    of the network, whatever the video's length.
    """
    from vidattn.pipeline.prefetch import prefetch
    from vidattn.video import open_clip

    n = 0

    def counted(chunks):
        nonlocal n
        for chunk in chunks:
            n += len(chunk)
            yield chunk

    with open_clip(path, decode, segment_start(meta.start_sec),
                   segment_start(meta.end_sec)) as clip:
        chunks = prefetch(clip.chunks(CHUNK_FRAMES))
        try:
            out = extractor(counted(chunks), arrays)
        finally:
            chunks.close()  # stops the decoding thread before the clip is closed
        return n, clip.fps, out


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if text else type(e).__name__


def run(cfg: ExtractConfig) -> ExtractResult:
    from vidattn.datasets import load_dataset
    from vidattn.pipeline.runs import pick_device

    t0 = time.time()
    ds = load_dataset(cfg.dataset, cfg.root, cfg.options or None)
    url = cfg.store or f"stores/{ds.name}"
    device = pick_device(cfg.device)
    decode = decode_config(cfg, ds.name)
    extractor = build_extractor(cfg, device)
    prep = {"fps": decode.fps, "short_side": decode.short_side, "crop": decode.crop,
            "scale": "[-1, 1]"}
    store = open_store(url, mode="a")
    for stream in extractor.streams:  # refuse before writing anything
        store.claim_stream(stream, extractor.provenance(prep, stream))
    store.set_classes(list(ds.classes))
    manifest = ds.manifest if cfg.limit is None else ds.manifest.head(cfg.limit)
    manifest = store.merge_manifest(manifest)
    if len(ds.pairs) or not len(store.pairs()):  # keep pairs mined earlier from features
        store.write_table("pairs", ds.pairs)
    if ds.boxes is not None:
        store.write_table("boxes", ds.boxes)
    store.group.attrs["dataset"] = {"name": ds.name, "root": str(Path(ds.root).resolve()),
                                    "multilabel": bool(ds.multilabel)}
    # files the adapter could not find are listed in the manifest, never planned
    missing = manifest[manifest.status == "missing"]
    if len(missing) == len(manifest):
        raise FileNotFoundError(f"{ds.root}: none of the {len(manifest)} videos of the "
                                f"manifest exist")
    plan = store.extend_plan(manifest.loc[manifest.status != "missing", "video_id"].tolist(),
                             cfg.part_size)

    first = extractor.streams[0]
    # a part is done per stream: adding the flow stream to an RGB store redoes flow only
    done = {s: store.done_parts(s) for s in extractor.streams}
    if cfg.retry_failed:
        for s in extractor.streams:
            idx = store.index(s)
            done[s] -= set(idx.loc[idx.status == "failed", "part"].tolist())
    rows_by_id = manifest.set_index("video_id")
    todo = plan[~plan.part.isin(set.intersection(*done.values()))]
    result = ExtractResult(store=url, n_videos=len(plan), n_skipped=len(plan) - len(todo),
                           missing=missing.video_id.tolist())
    bar = progress(total=len(todo), desc=f"extract {','.join(extractor.streams)}", unit="video")
    for part, group in todo.groupby("part", sort=True):
        needed = tuple(s for s in extractor.streams if part not in done[s])
        rows, maps = [], {s: {} for s in needed}
        for vid in group.video_id:
            meta = rows_by_id.loc[vid]
            path = Path(meta.path) if Path(meta.path).is_absolute() else Path(ds.root) / meta.path
            row = {"video_id": vid, "status": "done", "error": None, "n_frames": 0,
                   "fps": decode.fps or 0.0}
            try:
                n_frames, fps, out = extract_video(extractor, path, decode, meta, needed)
                row.update(n_frames=n_frames, fps=fps)
                for stream, fmap in out.items():
                    ARRAYS[stream].check(fmap)  # NaN/Inf or a wrong shape fails this video only
                    maps[stream][vid] = fmap
                result.n_extracted += 1
            except Exception as e:  # one bad video must not stop the other thousands
                msg = one_line(e)
                row.update(status="failed", error=msg if str(path) in msg else f"{path}: {msg}")
                result.failures.append((vid, row["error"]))
                for stream in maps:
                    maps[stream].pop(vid, None)
            rows.append(row)
            bar.update(1)
            bar.set_postfix(part=int(part), failed=len(result.failures))
        for stream in needed:
            store.write_part(stream, int(part), rows, maps[stream])
    bar.close()
    idx = store.index(first)
    failed = idx[idx.status == "failed"]
    seen = {v for v, _ in result.failures}
    result.failures += [
        (r.video_id, r.error) for r in failed.itertuples() if r.video_id not in seen
    ]
    if cfg.mine and ds.name in NEAREST_NEGATIVE and not result.failures:
        from vidattn.pipeline.mine import MineConfig
        from vidattn.pipeline.mine import run as mine

        mine(MineConfig(url, stream=first))
    result.seconds = round(time.time() - t0, 2)
    return result

