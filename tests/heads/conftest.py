"""Heads run on tiny maps: every test here runs on one intra-op thread (see one_thread)."""

import pytest


@pytest.fixture(autouse=True)
def _single_threaded(one_thread):
    """Applies the shared one_thread fixture to the whole directory."""
    yield
