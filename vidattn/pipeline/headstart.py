"""Decode a run's first part while torch loads and the model builds.

``vidattn extract`` spends its first seconds on one core: importing torch, building the
network, reading its weights, opening the store.  The decoding child of the first part
(a :class:`~vidattn.pipeline.subdecode.DecodeFeed`) can use the other core meanwhile, if
it is started before all that with a queue deep enough to hold what it decodes.

Which videos come first is only known once the store's plan has been extended, which
writes to the store and must wait for the stream's provenance, that is for the model.  So
:func:`start` guesses them from a read-only look at the store (its plan and the parts done)
and the dataset's manifest, exactly as :func:`vidattn.pipeline.extract.run` will plan
them in the common cases (a new store, or one resumed with the same manifest).
:func:`vidattn.pipeline.parts.extract_part` takes the feed only when its clips are the
part's, in the same order; otherwise it is closed and the part decodes as usual.  A wrong
guess costs the decoding done on a core that was idle; the frames are never mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidattn.rows import part_videos, segments

# What the first part's child may decode ahead while the model loads: about 4 s of
# decoding at 224², more than start-up takes.  The frames wait in the child's queue.
HEAD_START_BYTES = 256 << 20


@dataclass
class HeadStart:
    """A first part's DecodeFeed, running; ``stamps``: path -> (size, mtime) of its files,
    taken before it started (a part's stamps must predate its decoding)."""

    feed: Any
    stamps: dict[str, tuple]

    def fits(self, clips: list[tuple], decode, chunk_frames: int, stamps: dict,
             procs: int = 1) -> bool:
        """Whether the feed decodes exactly ``clips`` as the part would (with as many
        children), from files that have not changed since it started."""
        from vidattn.pipeline.decodepool import children_for

        feed = self.feed
        return (feed.items == clips and feed.cfg == decode and feed.chunk_frames == chunk_frames
                and feed.procs == children_for(procs, len(clips))
                and all(self.stamps.get(p) == s for p, s in stamps.items()))

    def close(self) -> None:
        self.feed.close()


def depth_for(decode, chunk_frames: int, budget: int = HEAD_START_BYTES) -> int:
    """Chunks of ``chunk_frames`` frames that fit in ``budget`` bytes (at least 2).

    Without a crop the frame's aspect is unknown before the file is opened: it is taken
    as 2:1, wider than nearly every video, so the budget is never exceeded by much.
    """
    side = decode.crop or decode.short_side
    frame = side * side * 3 * (1 if decode.crop else 2)
    return max(2, budget // (chunk_frames * frame))


def first_segments(store_url: str, manifest, root: Path, part_size: int,
                   streams: tuple[str, ...]) -> list[tuple[str, float | None, float | None]]:
    """The decoding segments ``(path, start_sec, end_sec)`` of the part the run will most
    likely extract first, one per distinct segment in plan order; [] when unknown."""
    from vidattn.stores import open_store

    rows = manifest[manifest.status != "missing"].drop_duplicates("video_id", keep="last")
    by_id = rows.set_index("video_id")
    planned: list[str] = []
    try:  # read only: the run itself creates and extends the store
        store = open_store(store_url)
    except Exception:  # noqa: BLE001 - no store yet (or none readable): a new plan
        store = None
    if store is not None:
        plan = store.plan()
        done = set.intersection(*(store.done_parts(s) for s in streams))
        todo = plan[~plan.part.isin(done)]
        if len(todo):
            first = todo[todo.part == todo.part.min()]
            planned = [str(v) for v in first.video_id]
        else:
            known = set(plan.video_id)
            planned = [v for v in rows.video_id if v not in known][:part_size]
    else:
        planned = [str(v) for v in rows.video_id[:part_size]]
    if not planned or not all(v in by_id.index for v in planned):
        return []
    return segments(part_videos(planned, by_id, root))[1]  # as the part will decode them


def start(store_url: str, manifest, root: Path, part_size: int, streams: tuple[str, ...],
          decode, timeout_s: float | None, chunk_frames: int,
          malloc: str = "system", priority: str = "low", procs: int = 1) -> HeadStart | None:
    """The guessed first part's decoding, started (see the module); None when there is
    nothing to guess.  ``procs`` children share the head start's budget."""
    from vidattn.pipeline.decodepool import children_for, feed_for
    from vidattn.pipeline.parts import file_stamp

    clips = first_segments(store_url, manifest, root, part_size, streams)
    if not clips:
        return None
    stamps = {p: file_stamp(Path(p)) for p, _, _ in clips}
    n = children_for(procs, len(clips))
    feed = feed_for(clips, decode, procs=n, chunk_frames=chunk_frames, timeout_s=timeout_s,
                    depth=max(2, depth_for(decode, chunk_frames) // n), malloc=malloc,
                    priority=priority)
    feed.prefetch()
    return HeadStart(feed, stamps)
