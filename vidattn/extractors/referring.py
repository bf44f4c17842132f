"""The referring streams of a video: detection tokens per keyframe and sentence tokens.

RefAtomNet (Peng et al., ECCV 2024) reads three streams: visual (the I3D maps), the
referring sentence (frozen BERT tokens) and a location-semantic stream built from a frozen
DETR run on keyframes.  This extractor writes the last two into the store:

- ``detections``: (K, 1, N_o, 10) float32 per video, K keyframes of N_o tokens
  ``[cx, cy, w, h, x1, y1, x2, y2, class_id, score]`` (schema.DETECTION_FIELDS), boxes
  normalised to the full, uncropped frame.  From DETR (all N_o = 100 queries, in query
  order) or, with ``boxes="annotations"``, from the dataset's person boxes: one token per
  annotated person (class person, score 1), left to right, then "no object" padding
  (class schema.NO_OBJECT, score 0, zero box) up to N_o, so both sources give the same
  shape and the head masks the same way.  A row without annotated persons (where the
  dataset annotates others) gets an empty set: N_o "no object" tokens.
- ``text`` (``text_768``... by encoder width): (1, 1, L, E) float32, the last hidden states
  of the sentence's L wordpieces, [CLS] and [SEP] included.  A video without a sentence
  gets the empty sentence's tokens ([CLS] [SEP]) rather than failing its other streams.

Keyframes are the dataset's (``keyframe_sec`` of the row, e.g. AVA's 1 Hz keyframe the
segment is centred on; the segment's middle otherwise) or, with ``keyframe_every``, every
that many seconds of the segment.  They are decoded at full frame, short side
``DetrConfig.size``, independently of the I3D decoding (which centre-crops).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vidattn import rows
from vidattn.stores.schema import DETECTION_FIELDS, NO_OBJECT, PERSON, text_array

# Bump when what the extractor writes for the same input changes.
EXTRACTOR_VERSION = 1
BOX_SOURCES = ("detr", "annotations")


@dataclass(frozen=True)
class ReferringConfig:
    """boxes: "detr" | "annotations"; detr: a DetrConfig (boxes="detr"); text: a
    TextConfig, or None for no sentence stream (the class names are still embedded with
    ``TextConfig()`` defaults when None); keyframe_every: seconds between keyframes, None =
    the dataset's keyframes; num_queries: N_o of annotated boxes (DETR: its own)."""

    boxes: str = "detr"
    detr: Any = None
    text: Any = None
    keyframe_every: float | None = None
    num_queries: int = 100
    device: str = "cpu"
    with_text: bool = True

    def __post_init__(self) -> None:
        if self.boxes not in BOX_SOURCES:
            raise ValueError(f"boxes must be one of {BOX_SOURCES}, got {self.boxes!r}")
        if self.boxes == "detr" and self.detr is None:
            raise ValueError("--detector detr needs --detr PATH (a facebook/detr-resnet-50 "
                             "directory or a detr-r50 .pth)")
        if self.boxes == "annotations" and self.keyframe_every is not None:
            raise ValueError("--keyframe-every needs --detector detr: annotated person boxes "
                             "exist at the dataset's keyframes only")
        if self.keyframe_every is not None and not self.keyframe_every > 0:
            raise ValueError(f"--keyframe-every must be > 0 seconds, got {self.keyframe_every}")
        if not 1 <= self.num_queries <= 1000:
            raise ValueError(f"num_queries must be in 1..1000, got {self.num_queries}")


def on_device(cfg: ReferringConfig, device: str) -> ReferringConfig:
    """``cfg`` with the detector and text encoder on ``device`` too."""
    detr = replace(cfg.detr, device=device) if cfg.detr is not None else None
    text = replace(cfg.text, device=device) if cfg.text is not None else None
    return replace(cfg, device=device, detr=detr, text=text)


def coco_label_names() -> list[str]:
    """DETR's COCO label map (91 ids, "N/A" for unused ones), packaged with vidattn."""
    text = (Path(__file__).resolve().parent.parent / "data" / "coco_detr_labels.txt")
    return text.read_text().splitlines()


def annotation_tokens(persons: list[list[list[float]]], num_queries: int) -> np.ndarray:
    """Detection tokens from annotated boxes.

    persons: per keyframe, a list of [x1, y1, x2, y2] normalised boxes.  Returns
    (K, num_queries, 10) float32: persons sorted left to right (by x1, then y1), class
    PERSON, score 1; the rest "no object".  More persons than queries is an error (it
    would silently drop people the sentence may name).
    """
    out = np.zeros((len(persons), num_queries, len(DETECTION_FIELDS)), np.float32)
    out[:, :, 8] = NO_OBJECT
    for k, boxes in enumerate(persons):
        if len(boxes) > num_queries:
            raise ValueError(f"{len(boxes)} annotated persons at one keyframe exceed "
                             f"num_queries={num_queries}")
        for q, (x1, y1, x2, y2) in enumerate(sorted(map(tuple, boxes), key=lambda b: b[:2])):
            out[k, q] = (
                (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, x1, y1, x2, y2, PERSON, 1.0
            )
    return out


def probe(path: Path) -> dict:
    from vidattn.video import probe as probe_file

    return probe_file(path)


def _middle_sec(path: Path, start: float | None, end: float | None) -> float:
    """The middle of a segment; a whole file (or open end) asks the file its duration."""
    return rows.keyframe_sec(None, start, end, lambda: probe(path)["duration"])


class ReferringExtractor:
    """Callable ``(video, arrays) -> {array: map}`` over one manifest row (a plain dict:
    path, start_sec, end_sec, and the planned ``keyframes``, ``persons``, ``track``,
    ``description``; see vidattn.pipeline.referring.plan)."""

    def __init__(self, cfg: ReferringConfig):
        from vidattn.extractors import text as text_mod

        self.cfg = cfg
        self.detector = None
        if cfg.boxes == "detr":
            from vidattn.extractors import detr as detr_mod

            self.detector = detr_mod.build(cfg.detr)
            self.label_names = list(self.detector.label_names)
        else:
            self.label_names = coco_label_names()
        self.text = text_mod.build(cfg.text if cfg.text is not None else text_mod.TextConfig(
            device=cfg.device))
        self.text_name = text_array(self.text.width)
        self.streams = ("detections",) + ((self.text_name,) if cfg.with_text else ())

    def provenance(self, preprocessing: dict, array: str) -> dict:
        """What made ``array``: the store refuses to mix sources (PROVENANCE_KEYS)."""
        del preprocessing  # the referring streams decode their own keyframes
        if array == "detections":
            keyframes = ("dataset" if self.cfg.keyframe_every is None
                         else f"every {self.cfg.keyframe_every:g} s")
            if self.detector is not None:
                prov = self.detector.provenance()
                return {"extractor": "detr", "extractor_version": EXTRACTOR_VERSION,
                        "weights_sha256": prov.get("weights_sha256"), "source": "detr",
                        "preprocessing": {"keyframes": keyframes, "size": prov.get("size"),
                                          "max_size": prov.get("max_size"),
                                          "num_queries": prov.get("num_queries")},
                        "detector": prov}
            return {"extractor": "annotations", "extractor_version": EXTRACTOR_VERSION,
                    "weights_sha256": None, "source": "annotations",
                    "preprocessing": {"keyframes": keyframes,
                                      "num_queries": self.cfg.num_queries}}
        prov = self.text.provenance()
        return {"extractor": prov.get("text_encoder"), "extractor_version": EXTRACTOR_VERSION,
                "weights_sha256": prov.get("weights_sha256"),
                "preprocessing": {"max_length": prov.get("max_length")}, "encoder": prov}

    def label_table(self) -> dict:
        """LABEL_TEXT_SCHEMA columns: every class name of the label map (and "no object"),
        embedded once by the text encoder."""
        names = [*self.label_names, "no object"]
        names += ["N/A"] * (NO_OBJECT + 1 - len(names))  # a map shorter than COCO's
        emb = self.text.names(names)
        return {"class_id": list(range(len(names))), "name": names,
                "embedding": [row.astype(np.float32) for row in emb]}

    def keyframe_images(self, video: dict) -> tuple[np.ndarray, list[float]]:
        """(K, H, W, 3) uint8 keyframes at full frame, and their times (s)."""
        from vidattn.video import DecodeConfig, load_clip

        path = Path(video["path"])
        size = self.cfg.detr.size if self.cfg.detr is not None else 800
        start, end = video.get("start_sec"), video.get("end_sec")
        if self.cfg.keyframe_every is not None:
            decode = DecodeConfig(fps=1.0 / self.cfg.keyframe_every, short_side=size,
                                  crop=None)
            frames = load_clip(path, decode, start, end).frames
            base = start or 0.0
            return frames, [base + i * self.cfg.keyframe_every for i in range(len(frames))]
        times = video.get("keyframes") or [_middle_sec(path, start, end)]
        # Half a second at 2 fps is exactly one frame: the one on screen at time t.
        decode = DecodeConfig(fps=2.0, short_side=size, crop=None)
        frames = [load_clip(path, decode, t, t + 0.5).frames[:1] for t in times]
        return np.concatenate(frames), list(times)

    def persons(self, video: dict) -> list[list[list[float]]]:
        """Annotated person boxes per keyframe (planned, or the row's own track)."""
        if video.get("persons") is not None:
            return video["persons"]
        track = video.get("track")
        if not track:  # nobody annotated here (the plain sample's idle conjugates): an
            return [[]]  # empty detection set, all "no object"; the head masks it all
        path = Path(video["path"])
        # the keyframe as keyframe_images takes it (the rule of vidattn.rows.keyframe_sec)
        keyframes = video.get("keyframes")
        t = keyframes[0] if keyframes else _middle_sec(path, video.get("start_sec"),
                                                       video.get("end_sec"))
        # the boxes table counts frames at the file's native rate
        fps = video.get("fps") or probe(path)["fps"]
        return [[rows.track_box(track, t, fps)]]

    def __call__(self, video: dict, arrays: tuple[str, ...]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "detections" in arrays:
            if self.detector is not None:
                frames, _ = self.keyframe_images(video)
                tokens = self.detector(frames)
            else:
                tokens = annotation_tokens(self.persons(video), self.cfg.num_queries)
            out["detections"] = tokens[:, None].astype(np.float32)  # (K, 1, N_o, 10)
        if self.text_name in arrays:
            (tokens,) = self.text.tokens([video.get("description") or ""])
            out[self.text_name] = tokens[None, None].astype(np.float32)  # (1, 1, L, E)
        return out


def build(cfg: ReferringConfig) -> ReferringExtractor:
    return ReferringExtractor(cfg)
