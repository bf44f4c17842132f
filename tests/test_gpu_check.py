"""The GPU check script runs end to end (``--quick``: CPU, toy sizes), so it is ready the
minute a GPU is lent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nintro\n\n## 2026-01-01 00:00 UTC\n\nolder rows\n")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--quick", "--out",
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    text = out.read_text()
    assert text.index("## GPU check") < text.index("## 2026-01-01")  # newest first, kept
    section = text.split("## GPU check", 1)[1].split("\n## ", 1)[0]
    for row in ("CUDA tests", "end-to-end RGB extraction", "decoding only, 2 clips, in this "
                "process", "decoding only, 2 clips, 2 child", "tvl1-torch",
                "DETR-R50",
                "ActX train step", "RefAtomNet train step"):
        assert row in section, row
    assert "FAILED" not in section


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: nothing to refuse")
def test_gpu_check_refuses_without_cuda_unless_quick(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out",
                        str(tmp_path / "B.md")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "no CUDA device" in r.stderr
    assert not (tmp_path / "B.md").exists()
