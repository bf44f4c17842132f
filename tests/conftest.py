"""Shared fixtures: a tiny sample dataset and a store extracted from it with real weights."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# 4 classes x (2 train + 1 test) actions, each with its conjugate: 24 clips of 16 frames.
TINY = {"n_train_per_class": 2, "n_test_per_class": 1, "n_frames": 16}


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> Path:
    from vidattn.datasets.sample import SampleConfig, ensure_sample

    return ensure_sample(tmp_path_factory.mktemp("tiny") / "sample", SampleConfig(**TINY))


@pytest.fixture(scope="session")
def tiny_store(tiny_sample, tmp_path_factory) -> str:
    """The tiny sample extracted with the packaged Kinetics-400 I3D, 4 videos per part."""
    from vidattn.pipeline.extract import ExtractConfig, run

    store = str(tmp_path_factory.mktemp("stores") / "tiny")
    res = run(ExtractConfig(root=str(tiny_sample), store=store, part_size=4, device="cpu"))
    assert not res.failures, res.failures
    return store
