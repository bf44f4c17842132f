"""Annotated boxes as detection tokens, and the per-row plan the referring extractor gets."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from vidattn.data.refer import gt_box
from vidattn.extractors.referring import (
    ReferringConfig,
    ReferringExtractor,
    annotation_tokens,
    coco_label_names,
)
from vidattn.pipeline.referring import plan
from vidattn.rows import has_descriptions
from vidattn.stores.schema import DETECTION_FIELDS, NO_OBJECT, PERSON


def test_annotation_tokens_sort_left_to_right_and_pad_with_no_object():
    boxes = [[[0.6, 0.1, 0.9, 0.8], [0.1, 0.2, 0.3, 0.9]], []]
    tok = annotation_tokens(boxes, num_queries=5)
    assert tok.shape == (2, 5, len(DETECTION_FIELDS)) and tok.dtype == np.float32
    np.testing.assert_allclose(tok[0, 0], [0.2, 0.55, 0.2, 0.7, 0.1, 0.2, 0.3, 0.9, PERSON, 1])
    np.testing.assert_allclose(tok[0, 1, 4:8], [0.6, 0.1, 0.9, 0.8])
    # padding and an empty keyframe (no annotated person): "no object", score 0, no box
    assert (tok[0, 2:, 8] == NO_OBJECT).all() and (tok[1, :, 8] == NO_OBJECT).all()
    assert not tok[0, 2:, [0, 1, 2, 3, 4, 5, 6, 7, 9]].any() and not tok[1, :, 9].any()
    with pytest.raises(ValueError, match="exceed num_queries=1"):
        annotation_tokens(boxes, num_queries=1)


def test_coco_label_map_has_person_at_one_and_91_ids():
    names = coco_label_names()
    assert len(names) == 91 and names[PERSON] == "person" and names[0] == "N/A"


def test_config_refuses_inconsistent_options():
    with pytest.raises(ValueError, match="needs --detr PATH"):
        ReferringConfig(boxes="detr")
    with pytest.raises(ValueError, match="keyframe-every needs --detector detr"):
        ReferringConfig(boxes="annotations", keyframe_every=1.0)
    with pytest.raises(ValueError, match="boxes must be one of"):
        ReferringConfig(boxes="yolo")


def _manifest(rows):
    return pd.DataFrame({"video_id": [r[0] for r in rows], "group": [r[1] for r in rows],
                         "extra": [None if r[2] is None else json.dumps(r[2]) for r in rows]})


def test_plan_gathers_every_person_of_an_ava_keyframe():
    man = _manifest([
        ("m__0902__0", "m", {"timestamp": 902, "keyframe_sec": 2.0, "box": [0, 0, .2, .5]}),
        ("m__0902__1", "m", {"timestamp": 902, "keyframe_sec": 2.0, "box": [.5, 0, .7, .5],
                             "description": "the man on the right"}),
        ("m__0903__0", "m", {"timestamp": 903, "keyframe_sec": 3.0, "box": [0, 0, .3, .6]}),
        ("n__0902__0", "n", {"timestamp": 902, "keyframe_sec": 2.0, "box": [.1, .1, .2, .2]}),
    ])
    p = plan(man, None)
    assert p["m__0902__1"]["persons"] == [[[0, 0, .2, .5], [.5, 0, .7, .5]]]
    assert p["m__0902__0"]["persons"] == p["m__0902__1"]["persons"]  # same keyframe
    assert p["m__0903__0"]["persons"] == [[[0, 0, .3, .6]]]  # another second
    assert p["n__0902__0"]["persons"] == [[[.1, .1, .2, .2]]]  # another movie
    assert p["m__0902__1"]["keyframes"] == [2.0] and p["m__0903__0"]["track"] is None
    assert p["m__0902__1"]["description"] == "the man on the right"
    assert has_descriptions(man) and gt_box(_row(man.extra[1]), None) == [.5, 0, .7, .5]


def test_plan_falls_back_to_recorded_persons_then_to_the_rows_track():
    man = _manifest([("clip_p0", "clip", {"persons": [[.1, .1, .3, .9], [.6, .1, .8, .9]],
                                          "keyframe_sec": 0.8, "box": [.6, .1, .8, .9]}),
                     ("plain", "plain", None)])
    boxes = pd.DataFrame({"video_id": ["plain"] * 3, "frame": [0, 1, 2],
                          "x1": [.1, .2, .3], "y1": [.1] * 3, "x2": [.5] * 3, "y2": [.9] * 3})
    p = plan(man, boxes)
    assert p["clip_p0"]["persons"] == [[[.1, .1, .3, .9], [.6, .1, .8, .9]]]
    assert p["plain"]["persons"] is None and p["plain"]["keyframes"] is None
    assert sorted(p["plain"]["track"]) == [0, 1, 2]
    # ground truth: the recorded box, else the track's frame nearest the keyframe (the
    # segment's middle, 0.04 s at 25 fps = frame 1) -- the frame the extractor takes too
    track = p["plain"]["track"]
    row = _row(None, start_sec=0.0, end_sec=0.08, fps=25.0)
    assert gt_box(row, track) == pytest.approx([.2, .1, .5, .9])
    video = {"path": "plain.mp4", "start_sec": 0.0, "end_sec": 0.08, "fps": 25.0,
             "track": track, "keyframes": None}
    assert ReferringExtractor.persons(None, video) == [[gt_box(row, track)]]
    keyed = _row(json.dumps({"keyframe_sec": 0.07}), start_sec=0.0, end_sec=0.08, fps=25.0)
    video.update(keyframes=[0.07])  # a recorded keyframe wins over the middle: frame 2
    assert gt_box(keyed, track) == pytest.approx([.3, .1, .5, .9])
    assert ReferringExtractor.persons(None, video) == [[gt_box(keyed, track)]]
    assert gt_box(_row(None), None) is None and not has_descriptions(man)


def _row(extra, start_sec=None, end_sec=None, fps=None, n_frames=None):
    return SimpleNamespace(extra=extra, start_sec=start_sec, end_sec=end_sec, fps=fps,
                           n_frames=n_frames, path="plain.mp4")
