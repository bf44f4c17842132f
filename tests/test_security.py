"""Untrusted input: checkpoints, annotation pickles and manifest paths never run code or
reach outside what the user pointed vidattn at."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_video

from vidattn.datasets import DATASETS, DatasetError, DatasetTables, check_paths, load_dataset
from vidattn.datasets import refava as R
from vidattn.extractors.i3d import I3D, I3DConfig, random_init
from vidattn.extractors.i3d_r50 import I3DR50, load_r50
from vidattn.extractors.i3d_r50 import random_init as random_init_r50
from vidattn.extractors.i3d_weights import load_i3d
from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig
from vidattn.safeload import UntrustedCheckpointError


class _RunsACommand:
    """Pickles to a call of os.system: what a malicious file looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _single_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def i3d_module(tmp_path_factory) -> tuple[Path, dict]:
    """A whole I3D pickled with torch.save(model): legitimate, but not weights-only."""
    model = random_init(I3D(I3DConfig()), seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "i3d_full_model.pt"
    torch.save(model, path)
    return path, model.state_dict()


def test_a_command_in_an_i3d_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"Conv3d_1a_7x7.conv3d.weight": _RunsACommand(marker)}, path)
    for load in (lambda: load_i3d(str(path)), lambda: load_r50(str(path))):
        with pytest.raises(UntrustedCheckpointError) as e:
            load()
        text = _single_line(e)
        assert str(path) in text and "system" in text and "--trust-checkpoint" in text
    assert not marker.exists()


def test_a_whole_module_loads_only_when_trusted(i3d_module, capsys):
    path, state = i3d_module
    with pytest.raises(UntrustedCheckpointError, match="vidattn.extractors.i3d.I3D"):
        load_i3d(str(path))
    model = load_i3d(str(path), trust_checkpoint=True)
    got = model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert model.weights_source == f"pytorch-i3d:{path}" and len(model.weights_sha256) == 64
    assert "trust-checkpoint" in capsys.readouterr().err


def test_the_extractor_config_passes_trust_through(i3d_module):
    path, state = i3d_module
    with pytest.raises(UntrustedCheckpointError):
        I3DExtractor(I3DExtractorConfig(rgb_weights=str(path)))
    ex = I3DExtractor(I3DExtractorConfig(rgb_weights=str(path), trust_checkpoint=True))
    key = "Mixed_5c.b3b.conv3d.weight"
    assert torch.equal(ex.nets["rgb"].model.state_dict()[key], state[key])


def test_a_whole_r50_module_loads_only_when_trusted(tmp_path):
    model = random_init_r50(I3DR50(), seed=5)
    path = tmp_path / "r50_full_model.pyth"
    torch.save(model, path)
    with pytest.raises(UntrustedCheckpointError, match="I3DR50"):
        load_r50(str(path))
    got = load_r50(str(path), trust_checkpoint=True).state_dict()
    key = "blocks.6.proj.weight"
    assert torch.equal(got[key], model.state_dict()[key])


# ------------------------------------------------------------------ RefAVA pickles
def test_a_malicious_refava_pickle_is_refused(tmp_path):
    root = tmp_path / "refava"
    (root / "videos").mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    key = "vid___0902___0"
    values = {"keyframe": {key: [0.1, 0.2, 0.5, 0.9]}, "label": {key: [12]},
              "description": {key: _RunsACommand(marker)}}
    for kind, value in values.items():
        R.pickle_path(root, "train", kind).write_bytes(pickle.dumps(value))
    with pytest.raises(DatasetError) as e:
        load_dataset("refava", root, {"splits": "train"})
    text = _single_line(e)
    assert text.startswith(str(R.pickle_path(root, "train", "description")))
    assert "unsafe pickle, not loaded" in text and "system" in text
    assert not marker.exists()


# ------------------------------------------------------------------- manifest paths
@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    """ROOT/videos/a.mp4 and OUTSIDE/secret.mp4, side by side."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "videos").mkdir(parents=True)
    outside.mkdir()
    (root / "videos" / "a.mp4").write_bytes(b"")
    (outside / "secret.mp4").write_bytes(b"")
    return root, outside


def _rows(*paths: str) -> pd.DataFrame:
    return pd.DataFrame({"video_id": [f"v{i}" for i in range(len(paths))], "path": paths})


@pytest.mark.parametrize("rel", ["../../etc/passwd", "../outside/secret.mp4",
                                 "videos/../../outside/secret.mp4", "/etc/passwd", ".."])
def test_paths_leaving_the_root_are_refused(tree, rel):
    root, _ = tree
    with pytest.raises(DatasetError, match="outside the dataset root") as e:
        check_paths(_rows("videos/a.mp4", rel), root, source=root / "annotations.csv")
    text = _single_line(e)
    assert text.startswith(f"{root / 'annotations.csv'}: video 'v1'") and repr(rel) in text


def test_symlinks_pointing_out_are_refused(tree):
    root, outside = tree
    (root / "videos" / "link.mp4").symlink_to(outside / "secret.mp4")
    (root / "linked_dir").symlink_to(outside)
    for rel in ("videos/link.mp4", "linked_dir/secret.mp4", "linked_dir/absent.mp4"):
        with pytest.raises(DatasetError, match=f"{rel}.*resolves to {outside}"):
            check_paths(_rows(rel), root)


def test_paths_inside_the_root_pass(tree, tmp_path):
    root, _ = tree
    (root / "videos" / "inner.mp4").symlink_to(root / "videos" / "a.mp4")
    ok = _rows("videos/a.mp4", str(root / "videos" / "a.mp4"), "videos/./a.mp4",
               "videos/inner.mp4", "videos/missing.mp4", "videos/../videos/a.mp4")
    check_paths(ok, root)
    # the root itself may be a symlink (a dataset kept on another disk)
    (tmp_path / "root_link").symlink_to(root)
    check_paths(ok.iloc[[0, 2, 3]], tmp_path / "root_link")
    with pytest.raises(DatasetError, match="empty path"):
        check_paths(_rows(""), root)


def test_load_dataset_refuses_a_folder_symlink_out(tree):
    root, outside = tree
    write_video(root / "clip.mp4", 8)
    assert len(load_dataset("folder", root).manifest) == 2  # videos/a.mp4 and clip.mp4
    (root / "stolen.mp4").symlink_to(outside / "secret.mp4")
    with pytest.raises(DatasetError, match="'stolen.mp4' resolves to .*outside") as e:
        load_dataset("folder", root)
    assert _single_line(e).startswith(f"{root}: ")


def _escaping_loader(root=None, options=None) -> DatasetTables:
    """An adapter whose annotation file names ../secret.mp4 (what a crafted CSV gives)."""
    root = Path(root)
    manifest = pd.DataFrame({
        "video_id": ["x"], "path": ["../outside/secret.mp4"], "split": ["test"],
        "labels": [[0]], "role": ["action"], "group": ["x"], "start_sec": [None],
        "end_sec": [None], "dataset": ["escaping"]})
    pairs = pd.DataFrame({"video_id": [], "conjugate_id": [], "rule": [], "distance": []})
    return DatasetTables("escaping", root, ["a"], manifest, pairs, None,
                         source=root / "clips.csv")


def test_load_dataset_names_the_annotation_file(tree, monkeypatch):
    root, _ = tree
    monkeypatch.setitem(DATASETS, "escaping", f"{__name__}:_escaping_loader")
    with pytest.raises(DatasetError, match="'../outside/secret.mp4'") as e:
        load_dataset("escaping", root)
    assert _single_line(e).startswith(f"{root / 'clips.csv'}: video 'x'")
