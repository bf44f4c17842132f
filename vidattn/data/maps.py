"""Reading stored maps for training: whole, or one temporal crop at a time.

A video's (T, H, W, D) map is stored flat in (t, h, w) order (stores/schema.py), so the
temporal crop [t0, t0 + L) is the one contiguous row range
``offset + t0*H*W : offset + (t0 + L)*H*W`` of its part array: :class:`StoreMaps` reads
just those rows (only the chunks they touch are fetched and decoded).  :class:`MemoryMaps`
reads every map once, top to bottom, and slices them in memory.  Both return
channels-first float16 tensors (D, L, H, W), the layout heads take, and give identical
values: the training path never depends on which one is used.

Both pickle small (a store URL and the index rows), so DataLoader workers, processes on
other hosts, read through their own store object; a local path or any fsspec URL works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from vidattn.progress import bar as progress


@dataclass(frozen=True)
class Entry:
    """Where a video's map lives: part, first row, and its (T, H, W)."""

    part: int
    offset: int
    t: int
    h: int
    w: int


def entries(store, stream: str, ids) -> dict[str, Entry]:
    """Index rows of the done ``stream`` maps among ``ids``."""
    idx = store.index(stream)
    idx = idx[(idx.status == "done") & idx.video_id.isin(set(ids))]
    return {r.video_id: Entry(int(r.part), int(r.offset), int(r.t), int(r.h), int(r.w))
            for r in idx.itertuples(index=False)}


def channels_first(fmap: np.ndarray) -> torch.Tensor:
    """A stored (T, H, W, D) map -> contiguous (D, T, H, W) float16 tensor."""
    return torch.from_numpy(np.ascontiguousarray(fmap)).permute(3, 0, 1, 2).half().contiguous()


class StoreMaps:
    """Maps of one store array read from the part arrays on demand (never held)."""

    def __init__(self, url: str, stream: str, where: dict[str, Entry], channels: int):
        self.url, self.stream, self.where, self.channels = url, stream, where, channels
        # (pid, store, {part: array}): opened once per process, arrays once per part
        self._opened: tuple[int, object, dict] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_opened": None}

    def _array(self, part: int):
        pid = os.getpid()
        if self._opened is None or self._opened[0] != pid:
            from vidattn.stores import open_store

            self._opened = (pid, open_store(self.url), {})
        _, store, arrays = self._opened
        if part not in arrays:
            arrays[part] = store.group[f"features/{self.stream}/part-{part:05d}"]
        return arrays[part]

    def shape(self, vid: str) -> tuple[int, int, int]:
        e = self.where[vid]
        return e.t, e.h, e.w

    def __contains__(self, vid: str) -> bool:
        return vid in self.where

    def read(self, vid: str, t0: int = 0, length: int | None = None) -> torch.Tensor:
        """(D, L, H, W) in the stored dtype: steps [t0, t0 + L) of ``vid``.  A channels-first
        view of the rows read (copying it is the caller's one pass: the batch's collate)."""
        e = self.where[vid]
        length = e.t - t0 if length is None else length
        if not (0 <= t0 and t0 + length <= e.t and length > 0):
            raise IndexError(f"{self.url}: steps [{t0}, {t0 + length}) of {vid!r} ({self.stream}) "
                             f"lie outside its {e.t} steps")
        cells = e.h * e.w
        rows = self._array(e.part)[e.offset + t0 * cells : e.offset + (t0 + length) * cells]
        # the stored dtype is kept: float16 maps, float32 detection tokens (exact boxes)
        flat = torch.from_numpy(np.ascontiguousarray(rows)).view(length, e.h, e.w, -1)
        return flat.permute(3, 0, 1, 2)

    def read_many(self, ids, max_rows: int = 1 << 15):
        """Yield (vid, (D, T, H, W) stored-dtype map) for each of ``ids`` with a map, in
        (part, offset) order, reading neighbouring maps in one slice: each chunk is then
        fetched and decoded once, not once per video that touches it (a 7x7x8 map is 392
        rows; a chunk 1024).  A run holds at most ``max_rows`` rows (64 MiB at 1024
        float16 channels)."""
        todo = sorted(((self.where[v], v) for v in dict.fromkeys(ids) if v in self.where),
                      key=lambda ev: (ev[0].part, ev[0].offset))
        run: list[tuple[Entry, str]] = []
        for e, vid in [*todo, (None, None)]:
            if run and (e is None or e.part != run[0][0].part
                        or e.offset - _end(run[-1][0]) > self.chunk_rows
                        or _end(e) - run[0][0].offset > max_rows):
                start, end, part = run[0][0].offset, _end(run[-1][0]), run[0][0].part
                try:
                    rows = np.asarray(self._array(part)[start:end])
                except (RuntimeError, ValueError) as e:  # zstd / shard index: corrupt bytes
                    from vidattn.errors import one_line
                    from vidattn.stores.zarr_store import ChecksumError

                    names = ", ".join(repr(n) for _, n in run[:3]) + (", ..." * (len(run) > 3))
                    raise ChecksumError(
                        f"{self.url}: stored bytes of {names} ({self.stream}, part {part}) "
                        f"do not decode ({one_line(e, with_type=True)})") from e
                for r, name in run:
                    flat = rows[r.offset - start : _end(r) - start]
                    yield name, torch.from_numpy(flat).view(r.t, r.h, r.w, -1).permute(3, 0, 1, 2)
                run = []
            if e is not None:
                run.append((e, vid))

    @property
    def chunk_rows(self) -> int:
        from vidattn.stores.schema import ARRAYS

        spec = ARRAYS.get(self.stream)
        return spec.chunk_rows if spec is not None else 1024


def _end(e: Entry) -> int:
    return e.offset + e.t * e.h * e.w


class MemoryMaps:
    """The same interface over maps read once into memory as (D, T, H, W) float16."""

    def __init__(self, maps: dict[str, torch.Tensor]):
        self.maps = maps

    @classmethod
    def load(cls, source: StoreMaps, ids, desc: str = "read") -> MemoryMaps:
        ids = [v for v in dict.fromkeys(ids) if v in source]
        # copied: a view would keep its whole run of neighbouring maps alive
        return cls({v: m.clone() for v, m in progress(source.read_many(ids), total=len(ids),
                                                      desc=desc, leave=False)})

    def shape(self, vid: str) -> tuple[int, int, int]:
        return tuple(self.maps[vid].shape[1:])

    def __contains__(self, vid: str) -> bool:
        return vid in self.maps

    def read(self, vid: str, t0: int = 0, length: int | None = None) -> torch.Tensor:
        m = self.maps[vid]
        return m if t0 == 0 and length in (None, m.shape[1]) else m[:, t0 : t0 + length]


def crop_start(t: int, length: int, rng: np.random.Generator | None) -> int:
    """Start of a random (rng) or centred (None) temporal window; 0 when the map is shorter
    (it is then looped).  Draws from ``rng`` only when there is a choice to make."""
    if t < length:
        return 0
    return int(rng.integers(0, t - length + 1)) if rng is not None else (t - length) // 2


def read_crop(maps, vid: str, start: int, length: int, hw: tuple[int, int]) -> torch.Tensor:
    """(D, length, h, w): steps [start, start + length) of ``vid``, looped when the map is
    shorter than ``length``; centre-cropped in space to ``hw`` so maps of different aspect
    ratios can share a batch."""
    t, h0, w0 = maps.shape(vid)
    if t >= length:
        m = maps.read(vid, start, length)
    else:
        m = maps.read(vid)[:, torch.arange(length) % t]
    h, w = hw
    y0, x0 = (h0 - h) // 2, (w0 - w) // 2
    return m[:, :, y0 : y0 + h, x0 : x0 + w]


def nbytes(maps: StoreMaps, ids) -> int:
    """Bytes the maps of ``ids`` take in memory as float16."""
    wanted = set(ids)
    return sum(2 * maps.channels * e.t * e.h * e.w
               for v, e in maps.where.items() if v in wanted)
