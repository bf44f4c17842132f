"""The referring path through the CLI: extract (DETR or annotated boxes) -> train-head
refatomnet -> evaluate (RefAVA metrics) -> compare and explain, on a small referring sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from detr_checkpoints import write_checkpoints

from vidattn.cli import main
from vidattn.stores import open_store
from vidattn.stores.schema import NO_OBJECT, PERSON


def _extract(root: Path, store: Path, *args: str):
    r = CliRunner().invoke(main, ["extract", "--dataset", "sample", "--root", str(root),
                                  "--store", str(store), "--device", "cpu", "--part-size", "8",
                                  *args])
    assert r.exit_code == 0, r.output
    return open_store(str(store))


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory) -> Path:
    from vidattn.datasets.sample import SampleConfig, ensure_sample

    # 6 + 3 clips of 2-3 actors, 16 frames: about 20 instances, one sentence each
    cfg = SampleConfig(referring=True, n_train_clips=6, n_test_clips=3, n_frames=16)
    return ensure_sample(tmp_path_factory.mktemp("ref") / "sample", cfg)


@pytest.fixture(scope="module")
def ref_store(ref_root, tmp_path_factory) -> Path:
    """I3D maps, annotated-box detection tokens and sentence tokens."""
    store = tmp_path_factory.mktemp("stores") / "ref"
    _extract(ref_root, store, "--boxes", "annotations")
    return store


@pytest.fixture(scope="module")
def detr_ckpts(tmp_path_factory) -> dict:
    return write_checkpoints(tmp_path_factory.mktemp("detr"))


def test_annotations_fill_the_store(ref_store):
    store = open_store(str(ref_store))
    man = store.manifest().set_index("video_id")
    ids = store.video_ids("detections")
    assert sorted(ids) == sorted(man.index) == sorted(store.video_ids("text"))
    assert sorted(ids) == sorted(store.video_ids("rgb"))
    prov = store.provenance("detections")
    assert prov["extractor"] == "annotations" and prov["source"] == "annotations"
    assert store.provenance("text")["extractor"] == "all-MiniLM-L6-v2"
    for vid in ids:
        extra = json.loads(man.at[vid, "extra"])
        det = store.read(vid, "detections")
        assert det.shape == (1, 1, 100, 10)
        persons = det[0, 0, det[0, 0, :, 8] == PERSON]
        # every actor of the clip, left to right, then "no object" padding
        np.testing.assert_allclose(persons[:, 4:8], extra["persons"], atol=1e-6)
        assert (det[0, 0, len(persons):, 8] == NO_OBJECT).all()
        text = store.read(vid, "text")
        assert text.shape[:3] == (1, 1, text.shape[2]) and text.shape[3] == 384
        assert 4 <= text.shape[2] <= 32  # [CLS] the person ... [SEP]
    # one instance per actor, one map per clip: the actors of a clip share their I3D map
    a, b = [v for v in ids if v.startswith("train_00_p")][:2]
    np.testing.assert_array_equal(store.read(a, "rgb"), store.read(b, "rgb"))
    assert not np.array_equal(store.read(a, "text"), store.read(b, "text"))
    labels = store.label_text()
    assert len(labels) == NO_OBJECT + 1 and labels.name[PERSON] == "person"
    assert len(labels.embedding[0]) == 384


@pytest.mark.parametrize("layout", ["hub", "original"])
def test_detr_fills_the_store_from_either_checkpoint_layout(ref_root, detr_ckpts, layout,
                                                            tmp_path):
    store = _extract(ref_root, tmp_path / "s", "--detector", "detr", "--detr",
                     str(detr_ckpts[layout]), "--detr-size", "64", "--streams", "none",
                     "--limit", "4")
    assert store.video_ids("detections") and not store.video_ids("rgb")
    prov = store.provenance("detections")
    assert prov["extractor"] == "detr" and prov["preprocessing"]["keyframes"] == "dataset"
    assert prov["detector"]["layout"] == ("hf-timm" if layout == "hub" else "original")
    det = store.read(store.video_ids("detections")[0], "detections")
    assert det.shape == (1, 1, 100, 10)
    assert ((det[..., 4:8] >= 0) & (det[..., 4:8] <= 1)).all()
    assert ((det[..., 9] >= 0) & (det[..., 9] <= 1)).all()
    # the same weights in the other layout give the same tokens
    other = "original" if layout == "hub" else "hub"
    store2 = _extract(ref_root, tmp_path / "s2", "--detector", "detr", "--detr",
                      str(detr_ckpts[other]), "--detr-size", "64", "--streams", "none",
                      "--limit", "4")
    for vid in store.video_ids("detections"):
        np.testing.assert_allclose(store.read(vid, "detections"),
                                   store2.read(vid, "detections"), atol=1e-5)


def test_detr_every_k_seconds_gives_k_keyframes(ref_root, detr_ckpts, tmp_path):
    store = _extract(ref_root, tmp_path / "s", "--detector", "detr", "--detr",
                     str(detr_ckpts["saved"]), "--detr-size", "64", "--streams", "none",
                     "--keyframe-every", "0.2", "--limit", "2", "--no-text")
    det = store.read(store.video_ids("detections")[0], "detections")
    assert det.shape == (4, 1, 100, 10)  # 16 frames at 25 fps = 0.64 s: t = 0, .2, .4, .6
    assert store.provenance("detections")["preprocessing"]["keyframes"] == "every 0.2 s"
    assert not any(store.provenance(n) for n in ("text", "text_768"))


def test_switching_the_box_source_is_refused(ref_root, ref_store, detr_ckpts):
    r = CliRunner().invoke(main, ["extract", "--dataset", "sample", "--root", str(ref_root),
                                  "--store", str(ref_store), "--device", "cpu", "--detector",
                                  "detr", "--detr", str(detr_ckpts["hub"])])
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert "refusing to append detections" in line and "annotations" in line


def test_plain_sample_boxes_come_from_the_track(tiny_sample, tmp_path):
    store = _extract(tiny_sample, tmp_path / "s", "--boxes", "annotations", "--streams",
                     "none", "--limit", "2")
    vid = store.video_ids("detections")[0]
    det = store.read(vid, "detections")[0, 0]
    boxes = store.boxes()
    track = boxes[boxes.video_id == vid].set_index("frame")
    assert (det[:, 8] == PERSON).sum() == 1 and (det[1:, 8] == NO_OBJECT).all()
    mid = track.index[len(track) // 2]
    np.testing.assert_allclose(det[0, 4:8], track.loc[mid, ["x1", "y1", "x2", "y2"]],
                               atol=1e-6)
    assert not store.provenance("text")  # no sentences in the plain sample
    # the idle conjugate has no annotated box: an empty detection set, stored, all padding
    conj = store.read(f"{vid}_conj", "detections")
    assert conj.shape == (1, 1, 100, 10) and (conj[..., 8] == NO_OBJECT).all()


def test_bad_options_are_one_line_errors(ref_root, tmp_path):
    for args, text in ((["--detector", "detr"], "needs --detr PATH"),
                       (["--detector", "detr", "--detr", "x", "--boxes", "annotations"],
                        "not both"),
                       (["--boxes", "annotations", "--keyframe-every", "1"],
                        "needs --detector detr"),
                       (["--detector", "detr", "--detr", str(tmp_path)], "not a DETR")):
        r = CliRunner().invoke(main, ["extract", "--dataset", "sample", "--root",
                                      str(ref_root), "--store", str(tmp_path / "s"), *args])
        assert r.exit_code != 0 and text in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output


@pytest.fixture(scope="module")
def ref_runs(ref_store, tmp_path_factory) -> dict[str, Path]:
    """Every referring head trained for 2 epochs through the CLI."""
    from vidattn import tasks
    from vidattn.registry import HEADS

    root = tmp_path_factory.mktemp("refruns")
    runs = {}
    for name in (n for n in HEADS if tasks.for_head(n).NAME == "refer"):
        out = root / name
        r = CliRunner().invoke(main, ["train-head", name, "--store", str(ref_store), "--out",
                                      str(out), "--epochs", "2", "--crop-t", "2", "--device",
                                      "cpu", "-o", "dim=32", "-o", "n_tokens=8", "-o",
                                      "n_blocks=1"])
        assert r.exit_code == 0, (name, r.output)
        assert "mIoU" in r.output and "AUROC" in r.output
        runs[name] = out
    return runs


def test_train_evaluate_compare_explain(ref_runs, tmp_path):
    run = ref_runs["refatomnet"]
    config = json.loads((run / "config.json").read_text())
    assert config["referring"] and config["text_stream"] == "text"
    assert config["detections"] == "annotations"
    r = CliRunner().invoke(main, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "eval-test.json").read_text())
    for key in ("mIoU", "mAP", "AUROC"):
        assert 0.0 <= saved[key] <= 1.0 and f"| {key} |" in r.output
    assert saved["n"] == len([v for v in open_store(config["store"]).manifest().split
                              if v == "test"])
    out = tmp_path / "table"
    r = CliRunner().invoke(main, ["compare", *map(str, ref_runs.values()), "--out", str(out),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    import pandas as pd

    from vidattn.tasks.yardsticks import PROBES

    table = pd.read_csv(out.with_suffix(".csv"))
    n = len(ref_runs)
    assert table.method.tolist() == [*ref_runs, *(name for name, _ in PROBES)]
    assert {"mIoU", "mAP", "AUROC"} <= set(table.columns)
    assert table.mIoU[:n].between(0, 1).all() and table.mIoU[n:].isna().all()
    assert table.AUROC[n:].between(0, 1).all() and table.mAP[n:].between(0, 1).all()
    r = CliRunner().invoke(main, ["compare", str(run), "--out", str(out), "--no-yardsticks"])
    assert r.exit_code == 0 and "yardstick" not in r.output
    png = tmp_path / "explain.png"
    r = CliRunner().invoke(main, ["explain", str(run), "test_00_p0", "--out", str(png),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert png.is_file()
